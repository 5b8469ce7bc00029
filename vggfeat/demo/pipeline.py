"""The demo's steps, each through the same library code as the real commands (`vggfeat train`,
`vggfeat extract`, `vggfeat linear-probe`, `vggfeat knn-probe`): train net A on a generated source dataset,
train net D initialised from A (Sect. 3.1), describe a generated VOC2007-layout target dataset of unseen
classes with multi-scale, flip-averaged fc7 descriptors (Appendix B), probe them, and compare with a random net.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vggfeat.benchmarks.registry import load_benchmark
from vggfeat.config import to_dict
from vggfeat.data.synthetic import KINDS, ensure_synthetic
from vggfeat.data.synthetic_voc import VOC_CLASSES, make_voc2007
from vggfeat.demo.config import DEMO_BATCH_SIZE, DEMO_WORKERS, SourceConfig, TargetConfig, load_demo_config
from vggfeat.demo.report import write_demo_report
from vggfeat.errors import VggfeatError
from vggfeat.features.runtime import Runtime
from vggfeat.models import WeightsError, create_model, load_model, read_weights, save_weights
from vggfeat.models.mapped import weights_sha256
from vggfeat.probes.benchmark import KnnProbe, LinearProbe, probe_benchmark
from vggfeat.train.checkpoint import latest_checkpoint
from vggfeat.train.loop import check_run_folder, train
from vggfeat.train.recipe import Recipe, load_recipe, recipe_to_dict
from vggfeat.utils.device import resolve_device
from vggfeat.utils.files import atomic_write_json, load_json_file

log = logging.getLogger(__name__)
STEPS = 5


class DemoError(VggfeatError, RuntimeError):
    pass


def check_writable(out: Path) -> None:
    """Fail early, with the folder's name, when OUT cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".vggfeat-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise DemoError(f"cannot write to {out}: {e.strerror or e}; choose another folder with --out") from None


def _make_source(source: SourceConfig, seed: int, root: Path) -> dict[str, Any]:
    """The generated source dataset at `root` (reused when it is there with the same settings), written before
    any training; returns its settings, which a finished run must have been trained on to be reused."""
    settings = {**to_dict(source), "seed": source.seed + seed}
    try:
        ensure_synthetic(
            root, kind=source.kind, classes=source.classes, per_class=source.per_class, seed=settings["seed"]
        )
    except FileExistsError as e:  # a dataset of the user's own where the demo would write its source
        raise DemoError(f"{e} with --out") from None
    return settings


def _make_target(target: TargetConfig, seed: int, root: Path) -> None:
    """The generated VOC2007-layout target at `root`, reused when its DONE marker records the same settings; one of
    other settings (`demo --quick`'s 100 scenes where `demo` wants 300) is removed and generated again."""
    settings = json.loads(json.dumps({**to_dict(target), "seed": target.seed + seed}))
    voc = root / "VOCdevkit" / "VOC2007"
    done = voc / "DONE"
    if done.is_file():  # the demo's own target (an older one's DONE holds no settings: made again too)
        if _read_json(done) == settings:
            return
        log.warning("%s was generated with other settings; generating it again", root)
        shutil.rmtree(voc)
    make_voc2007(root, target.n_trainval, target.n_test, seed=settings["seed"], size=target.size)
    atomic_write_json(done, settings)


def _train(recipe: Recipe, run: Path, data_root: Path, source: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Train on the dataset at `data_root`, or reuse a finished run of the same key (run_key); an interrupted run
    of the same key resumes from its checkpoint, and a run of another key in `run` is trained over afresh."""
    done, started = run / "demo-summary.json", run / "demo-key.json"
    key = run_key(recipe, source)
    if done.is_file() and _weights_load(run / "model.safetensors"):
        summary = _read_json(done) or {}  # a damaged summary: train (resume) again, which rewrites it
        if {k: summary.get(k) for k in key} == key:
            return summary
    resume = _read_json(started) == key and latest_checkpoint(run) is not None
    if not resume:  # the demo owns its run folder: a stale or broken run there is cleared, then this one keyed
        run.mkdir(parents=True, exist_ok=True)
        check_run_folder(run, recipe.optim.epochs, resume=False, overwrite=True)
        atomic_write_json(started, key)
    summary = train(recipe, run, data_root=data_root, resume=resume, overwrite=True, progress=progress)
    atomic_write_json(done, {**summary, **key})
    return summary


def run_key(recipe: Recipe, source: dict[str, Any]) -> dict[str, Any]:
    """What a demo run's weights are made from, as JSON reads it back: the recipe, the generated source's settings
    and the sha256 of the model.init_from weights (net D's: the path of net A's, which a rerun may retrain)."""
    init = recipe.model.init_from
    key = {"recipe": recipe_to_dict(recipe), "source": source, "init_sha256": weights_sha256(init) if init else None}
    return json.loads(json.dumps(key))


def _read_json(path: Path) -> Any:
    """The JSON in `path`, or None when it is missing or damaged."""
    try:
        return load_json_file(path)
    except (OSError, ValueError):
        return None


def _weights_load(path: Path) -> bool:
    """Whether a finished run's weights are there and whole; a truncated or damaged file is retrained (from
    the run's last checkpoint when it has one) instead of failing later in extraction."""

    if not path.is_file():
        return False
    try:
        read_weights(path)
    except WeightsError as e:
        log.warning("%s; training it again", e)
        return False
    return True


def random_name(i: int) -> str:
    """Net name (and run/probe folder stem) of random baseline i: random, random2, random3, ..."""
    return "random" if i == 0 else f"random{i + 1}"


def random_twin(trained: Path, recipe: Recipe, seed: int, out: Path) -> Path:
    """A net of the trained net's architecture and preprocessing, Glorot-initialised from `seed`: the baseline
    that shows what training adds."""

    trained_net = load_model(trained)
    net = create_model(recipe.model.name, **trained_net.options, init="glorot", seed=seed)
    net.preprocessing = trained_net.preprocessing
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, out)
    return out


def shared_classes(source: SourceConfig) -> tuple[str, ...]:
    """The target classes the source has too: pictogram class c is VOC class c; shapes are no VOC class."""
    return tuple(VOC_CLASSES[: source.classes]) if source.kind == "pictograms" else ()


def target_classes(source: SourceConfig) -> str:
    """How the target's 20 classes relate to the source's, in words."""
    shared = shared_classes(source)
    if shared:
        return f"20 classes ({len(shared)} of them the source's, here 1-3 to a scene, some tiny and 'difficult')"
    return "20 classes the source never saw"


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = DEMO_BATCH_SIZE,
    workers: int = DEMO_WORKERS,
    progress: bool = True,
    echo: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Run every step into OUT and write OUT/report; returns the report's contents. `seed` > 0 redraws
    everything random (source and target data, initialisation, data order, the random baseline) and keeps
    its own folders (OUT/source-seedS, runs/NAME-seedS, ..., report-seedS) beside seed 0's. `device` (auto,
    cpu, cuda, cuda:N) trains, describes and probes; the demo's recipes and reported numbers are the CPU's.
    `batch_size` and `workers` are how the target images are described (the numbers depend on them only by
    float rounding)."""

    cfg, cfg_path = load_demo_config(quick)
    dev = resolve_device(device)  # an unusable device is refused before anything is written
    out = Path(out)
    check_writable(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        tag = f"-seed{seed}" if seed else ""
        overrides = [f"runtime.device={dev}", *([f"seed={seed}"] if seed else [])]
        recipe_a = load_recipe(cfg_path.parent / cfg.net_a, overrides)
        run_a = out / "runs" / f"{recipe_a.name}{tag}"
        source_what = f"{cfg.source.classes} classes of generated {KINDS[cfg.source.kind].what}"
        echo(
            f"[1/{STEPS}] net A ({recipe_a.model.name}, width x{recipe_a.model.width_mult:g}) from scratch on "
            f"{source_what} -> {run_a}"
        )
        t = time.perf_counter()
        source = out / f"source{tag}"
        made = _make_source(cfg.source, seed, source)
        summary_a = _train(recipe_a, run_a, source, made, progress)
        timings["train_a"] = time.perf_counter() - t

        weights_a = run_a / "model.safetensors"
        recipe_d = load_recipe(cfg_path.parent / cfg.net_d, [f"model.init_from={weights_a}", *overrides])
        run_d = out / "runs" / f"{recipe_d.name}{tag}"
        echo(f"[2/{STEPS}] net D ({recipe_d.model.name}) initialised from net A (Sect. 3.1), then trained -> {run_d}")
        t = time.perf_counter()
        summary_d = _train(recipe_d, run_d, source, made, progress)
        timings["train_d"] = time.perf_counter() - t

        tc = cfg.target
        target = out / f"target{tag}"
        echo(
            f"[3/{STEPS}] target task: {tc.n_trainval} + {tc.n_test} VOC2007-layout scenes of "
            f"{target_classes(cfg.source)} -> {target}"
        )
        t = time.perf_counter()
        _make_target(tc, seed, target)
        splits = load_benchmark("voc2007", target)
        timings["target"] = time.perf_counter() - t

        nets = {"trained": run_d / "model.safetensors"}
        for i in range(cfg.random_nets):  # the baseline; "random" is the first, as with one net
            name = random_name(i)
            nets[name] = random_twin(
                run_d / "model.safetensors",
                recipe_d,
                cfg.random_seed + seed + 1000 * i,
                out / "runs" / f"{name}{tag}" / "model.safetensors",
            )
        fc = cfg.features
        runtime = Runtime(device=str(dev), batch_size=batch_size, workers=workers)
        probes: dict[str, dict[str, tuple[dict, Path]]] = {}
        for net, weights in nets.items():
            if net in ("trained", "random"):
                what = "trained net D" if net == "trained" else "random net D"
                if net == "random" and cfg.random_nets > 1:
                    what = f"{cfg.random_nets} random nets D (their mean is the baseline)"
                echo(
                    f"[{4 if net == 'trained' else 5}/{STEPS}] {what}: {fc.layer} descriptors at "
                    f"Q={','.join(map(str, fc.scales))} ({fc.aggregate} over scales, flip-averaged), linear SVMs "
                    "and kNN on voc2007"
                )
            t = time.perf_counter()
            folder = out / "probe" / f"{net}{tag}"
            # the extra random nets' plots add nothing the demo shows, and 0.4 s each
            plots = cfg.probe_plots and net in ("trained", "random")
            probes[net] = {}
            for name, probe in (("linear", LinearProbe(Cs=tuple(cfg.probe.Cs))), ("knn", KnnProbe(k=cfg.probe.k))):
                outcome = probe_benchmark(  # as `vggfeat linear-probe` / `knn-probe` probe
                    "voc2007",
                    target,
                    probe=probe,
                    nets=[("auto", str(weights))],
                    layer=fc.layer,
                    scales=fc.scales,
                    aggregate=fc.aggregate,
                    runtime=runtime,
                    out=folder,
                    overwrite=True,  # the demo's own folder, rewritten by every run
                    splits=splits,
                    with_plot=plots,
                    progress=progress,
                    echo=log.debug,
                )
                probes[net][name] = (outcome.report, outcome.files["json"])
            timings[f"probe_{net}"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        return write_demo_report(
            out / f"report{tag}",
            cfg=cfg,
            quick=quick,
            seed=seed,
            runs={"net_a": run_a, "net_d": run_d},
            summaries={"net_a": summary_a, "net_d": summary_d},
            probes=probes,
            timings=timings,
            source=source_what,
            target=target_classes(cfg.source),
            shared_classes=shared_classes(cfg.source),
        )
    finally:
        torch.set_num_threads(threads)
