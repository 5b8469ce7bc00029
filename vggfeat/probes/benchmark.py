"""Probing a benchmark, the one way every command and the Python API do it (Sect. 4, Appendix B):
the benchmark's splits -> its paper settings (scales, aggregation) unless overridden -> the descriptors (a
feature store, or nets extracted on the fly and cached under OUT/features) -> a probe (linear SVMs, kNN,
low-shot SVMs) -> a report in OUT named after the probe, which records what it was computed from.

`linear-probe`, `knn-probe`, `reproduce` and `demo` only parse their options and call `probe_benchmark`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vggfeat import defaults
from vggfeat.benchmarks.base import ProbeSplit, benchmark_images, resolve_root
from vggfeat.benchmarks.registry import get_benchmark, load_benchmark
from vggfeat.benchmarks.voc_action import ActionProbeSplit
from vggfeat.errors import InputError
from vggfeat.features.protocol import FUSION_L2, Protocol
from vggfeat.features.runtime import Runtime
from vggfeat.features.store import FeatureStore, StoreError, load_store
from vggfeat.probes.action import action_features
from vggfeat.probes.features import (
    ExtractionSettings,
    fusion_line,
    net_settings,
    probe_features,
    split_features,
    store_fusion,
)
from vggfeat.probes.report import write_report
from vggfeat.probes.run import run_knn_probe, run_linear_probe, store_summary
from vggfeat.utils.files import NotRegularFileError, load_json_file, sha256_file

if TYPE_CHECKING:
    import torch

    from vggfeat.probes.lowshot import LowShotResult
    from vggfeat.probes.run import ProbeResult, SplitResult

    OnSplit = Callable[[ProbeSplit, SplitResult], None]

log = logging.getLogger(__name__)

Net = tuple[str, str | None]  # (model name or "auto", weight file / name, or None for a random net)


@dataclass(frozen=True)
class LinearProbe:
    """One-vs-rest linear SVMs, C chosen per class on held-out training images, then refit (Appendix B)."""

    Cs: tuple[float, ...] = defaults.COSTS
    holdout: float = defaults.HOLDOUT
    classifier: str = "svm"  # svm: batched tensor solver; sklearn: the LinearSVC reference
    stem: ClassVar[str] = "linear-probe"

    def run(
        self, splits: Sequence[ProbeSplit], store: FeatureStore, *, seed: int, device: torch.device, on_split: OnSplit
    ) -> ProbeResult:
        return run_linear_probe(
            splits,
            store,
            Cs=self.Cs,
            classifier=self.classifier,
            holdout=self.holdout,
            seed=seed,
            device=device,
            progress=on_split,
        )


@dataclass(frozen=True)
class KnnProbe:
    """kNN votes through a faiss index over each split's training descriptors."""

    k: int = defaults.KNN_K
    index: str = defaults.KNN_INDEX
    temperature: float = defaults.KNN_TEMPERATURE
    stem: ClassVar[str] = "knn-probe"

    def run(
        self, splits: Sequence[ProbeSplit], store: FeatureStore, *, seed: int, device: torch.device, on_split: OnSplit
    ) -> ProbeResult:
        return run_knn_probe(splits, store, k=self.k, kind=self.index, temperature=self.temperature, progress=on_split)


@dataclass(frozen=True)
class LowShotProbe:
    """Low-shot VOC-2007 (beyond the paper): k positives per class, scored as `scoring` says (probes.lowshot)."""

    ks: tuple[int, ...] = defaults.LOW_SHOT_KS
    samples: int = defaults.LOW_SHOT_SAMPLES
    Cs: tuple[float, ...] | None = None  # None: the scoring's own grid
    scoring: str = "suites"
    stem: ClassVar[str] = "low-shot"


Probe = LinearProbe | KnnProbe | LowShotProbe


@dataclass
class ProbeOutcome:
    """What `probe_benchmark` computed and where it wrote it."""

    result: ProbeResult | LowShotResult
    report: dict[str, Any]  # the report as written to files["json"]
    files: dict[str, Path]  # json, markdown, plot
    store: FeatureStore  # the descriptors probed
    splits: list[ProbeSplit] = field(default_factory=list)


def probe_benchmark(
    benchmark: str,
    root: str | Path | None = None,
    *,
    probe: Probe = LinearProbe(),
    features: str | Path | FeatureStore | None = None,
    nets: Sequence[Net] = (),
    layer: str | None = None,
    scales: Sequence[int] | None = None,
    aggregate: str | None = None,
    fusion_l2: str | None = None,
    runtime: Runtime | None = None,
    out: str | Path | None = None,
    seed: int = defaults.SEED,
    n_splits: int = defaults.SPLITS,
    box: bool = True,
    overwrite: bool = False,
    stem: str | None = None,
    splits: Sequence[ProbeSplit] | None = None,
    with_plot: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = log.info,
    on_loaded: Callable[[list[ProbeSplit]], object] | None = None,
) -> ProbeOutcome:
    """Probe `benchmark` (its data under `root`, else $VGGFEAT_DATA) and write the report OUT/STEM.{json,md,png}.

    Descriptors come from `features` (a store from `vggfeat extract`; any of layer/scales/aggregate/fusion_l2
    given must describe it, and each weight file of `nets` must be among its nets) or are extracted from
    `nets` ((model, weights) pairs; several are the paper's late fusion, each net L2-normalised before
    stacking unless fusion_l2="whole") with the benchmark's Appendix B scales and aggregation unless given, and
    cached in OUT/features. An OUT holding a report of another probe (other settings, data or features) under
    the same STEM is refused unless `overwrite`. `splits` passes splits already loaded (reproduce loads a
    benchmark once for its rows); `echo` receives the progress lines a command prints; `on_loaded` is called
    with the splits once the data is read, before any net is loaded (a command names its default weights there).
    """
    get_benchmark(benchmark)  # an unknown name stops here, listing the valid ones
    out = Path(out) if out is not None else defaults.out_dir(benchmark)
    stem = stem or probe.stem
    fusion = fusion_l2 or defaults.FUSION_L2
    if fusion not in FUSION_L2:
        raise InputError(f"unknown fusion_l2 {fusion!r}; choose one of {', '.join(FUSION_L2)}")
    if features is not None and benchmark == "voc2012-action":
        raise InputError(
            "voc2012-action describes the images and the person boxes itself: give nets (--model/--weights), "
            "not a feature store (--features)"
        )
    if features is None and not nets:
        raise InputError(f"{benchmark}: give a feature store (--features) or nets to extract (--model/--weights)")
    low_shot = isinstance(probe, LowShotProbe)
    if isinstance(probe, LowShotProbe) and benchmark != "voc2007":
        raise InputError(
            f"low-shot is a VOC-2007 protocol (k positives per class): use it with voc2007, not {benchmark}"
        )

    given_splits = splits
    if splits is None:
        splits = load_benchmark(
            benchmark, root, seed=seed, splits=1 if low_shot else n_splits, splits_dir=out / "splits"
        )
    splits = list(splits)
    if on_loaded is not None:
        on_loaded(splits)
    if isinstance(probe, LowShotProbe):
        _check_low_shot(probe, splits[0])  # a k some class cannot meet stops before anything is extracted

    if features is not None:
        store = features if isinstance(features, FeatureStore) else load_store(features)
        _check_store_matches(store, layer, scales, aggregate, nets)
        _check_fusion_matches(store, fusion_l2)
    else:
        settings = extraction_settings(benchmark, nets, layer=layer, scales=scales, aggregate=aggregate, seed=seed)

    @functools.cache
    def identity() -> dict[str, Any]:
        """What the report is computed from; weights enter by content (computed once, and only when needed)."""
        if features is not None:
            source = {"store": store_summary(store)}
        else:  # bf16 descriptors (explicit, or auto on CUDA) are other features than float32 ones
            source = features_key(settings, fusion, runtime=runtime)
        return {
            "benchmark": benchmark,
            "data": str(resolve_root(root).resolve()) if root is not None or given_splits is None else None,
            "probe": {"kind": stem, **_probe_settings(probe)},
            "features": source,
            "seed": seed,
            "splits": len(splits),
            "box": box if benchmark == "voc2012-action" else None,
        }

    files = _report_files(out, stem)
    if not overwrite and files["json"].exists():
        _refuse_another_report(files["json"], identity(), stem)

    if features is None:
        runtime = runtime or Runtime(workers=defaults.WORKERS)
        if benchmark == "voc2012-action":  # each image and each person box described once, stacked per person
            first = splits[0]
            assert isinstance(first, ActionProbeSplit)  # the voc2012-action benchmark's splits
            assert first.train_action is not None and first.test_action is not None
            store = action_features(
                first.train_action, first.test_action, out, settings, runtime, box=box, fusion_l2=fusion,
                progress=progress,
            )  # fmt: skip
        else:
            images = benchmark_images(splits)
            store = probe_features(images, out, settings, runtime, fusion_l2=fusion, progress=progress)
    device = (runtime or Runtime()).torch_device()

    n_classes = len(splits[0].classes)
    echo(f"{benchmark}: {n_classes} classes, {len(splits)} split(s), {store.dim}-D features from {store.root}")
    if line := fusion_line(store.manifest):
        echo(line)
    if isinstance(probe, LowShotProbe):
        low, report, files = _run_low_shot(probe, splits[0], store, seed, device, out, stem, identity(), echo)
        return ProbeOutcome(low, report, files, store, splits)
    result = probe.run(splits, store, seed=seed, device=device, on_split=_split_echo(echo))
    report = write_report(result, out, stem, with_plot=with_plot, identity=identity())
    return ProbeOutcome(result, report, files, store, splits)


def extraction_settings(
    benchmark: str,
    nets: Sequence[Net],
    *,
    layer: str | None = None,
    scales: Sequence[int] | None = None,
    aggregate: str | None = None,
    seed: int = defaults.SEED,
) -> ExtractionSettings:
    """The descriptors of `nets` for `benchmark`: its paper settings (Appendix B), each overridden where given."""
    spec = get_benchmark(benchmark)
    protocol = Protocol(
        layer=layer or defaults.LAYER,
        scales=tuple(scales) if scales else tuple(spec.scales),
        aggregate=aggregate or spec.aggregate,
    )
    return ExtractionSettings(tuple(nets), protocol, seed=seed)


def features_key(
    settings: ExtractionSettings, fusion_l2: str = defaults.FUSION_L2, *, runtime: Runtime | None
) -> dict[str, Any]:
    """What the descriptors of `settings` computed by `runtime` (None: the default one) are, by content: each
    net's cached store's key (weights hashed, bf16 compute recorded), and the fusion where there are several."""
    key: dict[str, Any] = {"nets": [s.key(runtime) for s in net_settings(settings, fusion_l2)]}
    if len(settings.models) > 1:
        key["fusion_l2"] = fusion_l2
    return key


def _probe_settings(probe: Probe) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(probe).items()}


def _report_files(out: Path, stem: str) -> dict[str, Path]:
    return {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}


def _refuse_another_report(path: Path, identity: dict[str, Any], stem: str) -> None:
    """A report at `path` of another probe (other identity, or none recorded) is not replaced silently."""
    try:
        saved = load_json_file(path)
    except NotRegularFileError as e:  # a FIFO would block a plain read: named, never read
        raise InputError(f"{e}; pass --overwrite to replace it (overwrite=True), or choose another -o") from None
    except (OSError, ValueError):
        saved = None  # damaged: a report that does not record what it was computed from
    old = saved.get("identity") if isinstance(saved, dict) else None
    if old == _jsonable(identity):
        return  # the same probe again: its report is rewritten with what this run computes
    if isinstance(old, dict):
        what = ", ".join(k for k in identity if old.get(k) != _jsonable(identity)[k]) or "settings"
        why = f"another {stem} (its {what} differ)"
    else:
        why = f"a {stem} report that does not record what it was computed from"
    raise InputError(f"{path} holds {why}; pass --overwrite to replace it (overwrite=True), or choose another -o")


def _read_json(path: Path) -> Any:
    """The report just written, as it reads back, or None where it does not (replaced meanwhile)."""
    try:
        return load_json_file(path)
    except (OSError, ValueError):
        return None


def _jsonable(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), so a saved identity compares equal."""
    import json

    return json.loads(json.dumps(obj, default=str))


def _check_low_shot(probe: LowShotProbe, split: ProbeSplit) -> None:
    from vggfeat.probes.lowshot import check_low_shot_ks, get_scoring

    y_train = np.array(split.train_labels)
    check_low_shot_ks(y_train, probe.ks, get_scoring(probe.scoring).negatives_for(y_train.shape[1]), split.classes)


def _run_low_shot(
    probe: LowShotProbe,
    split: ProbeSplit,
    store: FeatureStore,
    seed: int,
    device: torch.device,
    out: Path,
    stem: str,
    identity: dict[str, Any],
    echo: Callable[[str], None],
) -> tuple[LowShotResult, dict[str, Any], dict[str, Path]]:
    from vggfeat.probes.lowshot import run_low_shot, write_low_shot

    ks = ", ".join(map(str, probe.ks))
    what = f"k in {ks}, {probe.samples} samples, {store.dim}-D features"
    echo(f"{split.benchmark} low-shot ({probe.scoring} scoring): {what}")
    x_train, x_test = split_features(store, split.train_paths, split.test_paths)
    result = run_low_shot(
        x_train,
        np.array(split.train_labels),
        x_test,
        np.array(split.test_labels),
        ks=probe.ks,
        samples=probe.samples,
        Cs=probe.Cs,
        scoring=probe.scoring,
        seed=seed,
        classes=split.classes,
        device=device,
        features=store_summary(store),
        progress=lambda k, _: echo(f"  k = {k}: {probe.samples} samples solved"),
    )
    files = write_low_shot(result, out, stem, identity=identity)
    return result, _read_json(files["json"]), files


def _split_echo(echo: Callable[[str], None]) -> OnSplit:
    def on_split(split: ProbeSplit, result: SplitResult) -> None:
        echo(
            f"  split {split.split}: {len(split.train_paths)} train / {len(split.test_paths)} test images -> "
            f"{100 * result.headline:.2f} % ({result.seconds:.1f} s)"
        )

    return on_split


def _check_fusion_matches(store: FeatureStore, fusion_l2: str | None) -> None:
    """A fusion asked for beside a store of several nets must be how the store fused them (a store from
    `vggfeat extract` is fused when extracted: per-net with its l2_parts, else whole)."""
    stored = store_fusion(store.manifest)
    if fusion_l2 is not None and stored is not None and stored != fusion_l2:
        raise StoreError(
            f"{store.root}: --fusion-l2 {fusion_l2} but the store's nets were fused {stored} when extracted; "
            "drop --fusion-l2, or probe with --model/--weights to fuse the nets here"
        )


def _check_store_matches(
    store: FeatureStore,
    layer: str | None,
    scales: Sequence[int] | None,
    aggregate: str | None,
    nets: Sequence[Net],
) -> None:
    """Extraction settings given beside a store must describe it, or the report would claim settings that were
    never used: each one given is compared with the store's manifest."""
    m = store.manifest
    wrong = []
    if layer is not None and layer != m.get("layer"):
        wrong.append(f"--layer {layer} but the store holds {m.get('layer')}")
    if scales and list(scales) != list(m.get("scales") or []):
        wrong.append(f"--scales {','.join(map(str, scales))} but the store holds {m.get('scales')}")
    if aggregate and aggregate != m.get("aggregate"):
        wrong.append(f"--aggregate {aggregate} but the store holds {m.get('aggregate')}")
    stored = [n.get("weights_sha256") for n in m.get("models") or []]
    for _, weights in nets:
        if weights and Path(weights).is_file() and sha256_file(weights) not in stored:
            wrong.append(f"--weights {weights} is not among the store's nets")
    if wrong:
        raise StoreError(
            f"{store.root}: {'; '.join(wrong)} - extraction flags describe how --features was made; "
            "drop them, or extract a store with them (`vggfeat extract ... -o STORE`)"
        )
