"""Options shared by `vggfeat linear-probe` and `vggfeat knn-probe`: the benchmark, where its data lives, and
where its descriptors come from (a feature store, or nets extracted on the fly and cached)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from vggfeat.benchmarks.base import benchmark_images
from vggfeat.benchmarks.registry import BENCHMARKS, get_benchmark, load_benchmark
from vggfeat.cli.extract import LAYER_HELP
from vggfeat.cli.params import SCALES, fusion_option
from vggfeat.cli.weights import net_pairs
from vggfeat.features.protocol import Protocol
from vggfeat.features.runtime import Runtime
from vggfeat.features.store import StoreError, load_store
from vggfeat.probes.action import action_features
from vggfeat.probes.features import ExtractionSettings, fusion_line, probe_features, split_features, store_fusion
from vggfeat.probes.report import report_files, summary_lines, write_report
from vggfeat.probes.run import store_summary
from vggfeat.utils.device import resolve_device
from vggfeat.utils.files import sha256_file
from vggfeat.weight_sources import WEIGHTS_HELP

BENCHMARK_CHOICES = tuple(BENCHMARKS)


def _paper_settings() -> str:
    """'voc2007, voc2012: mean over 256,...,768; ...': each benchmark's default scales and aggregate, grouped."""
    groups: dict[str, list[str]] = {}
    for b in BENCHMARKS.values():
        name = b.name if b.paper_rows else f"{b.name} (not in the paper)"
        groups.setdefault(f"{b.aggregate} over {','.join(map(str, b.scales))}", []).append(name)
    return "; ".join(f"{', '.join(names)}: {setting}" for setting, names in groups.items())


PAPER_SETTINGS = _paper_settings()


def probe_options(fn):
    options = [
        click.argument("benchmark", type=click.Choice(BENCHMARK_CHOICES)),
        click.option(
            "--root",
            type=click.Path(file_okay=False),
            help="The benchmark's folder (VOCdevkit or its parent; the folder holding 101_ObjectCategories "
            "or 256_ObjectCategories; the class-per-folder root). Default: $VGGFEAT_DATA.",
        ),
        click.option(
            "-o",
            "--out",
            type=click.Path(file_okay=False),
            default=None,
            help="Output folder: report, split lists, cached features. Default: vggfeat-out/BENCHMARK.",
        ),
        click.option(
            "--features",
            "features",
            type=click.Path(file_okay=False),
            help="A feature store from `vggfeat extract` holding every image of the benchmark. --layer, "
            "--scales, --aggregate and --weights given with it must match how it was made (checked).",
        ),
        click.option(
            "--model",
            "models",
            multiple=True,
            help="Extract on the fly with this net (vgg_d, timm:NAME, ...); repeat with --weights to "
            "stack nets (the paper's D & E). Ignored with --features.",
        ),
        click.option("--weights", multiple=True, help=WEIGHTS_HELP + " One per --model."),
        click.option("--layer", default="fc7", show_default=True, help=LAYER_HELP),
        click.option(
            "--scales",
            type=SCALES,
            default=None,
            help="Scales Q for on-the-fly extraction, e.g. 256,384,512 (fewer scales, faster). Default: each "
            f"benchmark's, the paper's setting (Appendix B): {PAPER_SETTINGS}.",
        ),
        click.option(
            "--aggregate",
            type=click.Choice(["mean", "stack"]),
            default=None,
            help="Over scales. Default: the benchmark's, as for --scales.",
        ),
        fusion_option,
        click.option(
            "--splits",
            "n_splits",
            default=3,
            show_default=True,
            type=click.IntRange(min=1),
            help="Random splits (Caltech, folder); their lists are written to OUT/splits and reused.",
        ),
        click.option("--seed", default=0, show_default=True, help="Seed of splits, held-out sets and random nets."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option(
            "--batch-size",
            default=16,
            show_default=True,
            type=click.IntRange(min=1),
            help="Images per forward pass when extracting.",
        ),
        click.option(
            "--workers",
            default=2,
            show_default=True,
            type=click.IntRange(min=0),
            help="Image loader processes when extracting.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), fn)


def load_splits(benchmark: str, root: str | None, out: Path, n_splits: int, seed: int):
    return load_benchmark(benchmark, root, seed=seed, splits=n_splits, splits_dir=out / "splits")


def probe_store(benchmark: str, splits, out: Path, opts: dict):
    """The feature store to probe: --features, or an on-the-fly extraction cached under OUT/features, with
    the benchmark's paper settings (Appendix B) unless --scales/--aggregate say otherwise."""

    if opts["features"] and benchmark == "voc2012-action":
        raise click.UsageError(
            "voc2012-action describes the images and the person boxes itself: give --model/--weights, not --features"
        )
    if opts["features"]:
        store = load_store(opts["features"])
        check_store_matches(store, opts["layer"], opts["scales"], opts["aggregate"], opts["weights"])
        check_fusion_matches(store, opts["fusion_l2"])
        if opts["models"]:
            click.secho("note: --features given, so --model is not used", fg="yellow", err=True)
        return store
    pairs = tuple(net_pairs(opts["models"], opts["weights"], opts["seed"]))
    defaults = get_benchmark(benchmark)
    protocol = Protocol(
        layer=opts["layer"],
        scales=opts["scales"] or defaults.scales,
        aggregate=opts["aggregate"] or defaults.aggregate,
    )
    runtime = Runtime(device=opts["device"], batch_size=opts["batch_size"], workers=opts["workers"])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    settings = ExtractionSettings(pairs, protocol, seed=opts["seed"])
    fusion, progress = opts["fusion_l2"], not opts["quiet"]
    if benchmark == "voc2012-action":  # each image and each person box described once, stacked per person
        train, val, box = splits[0].train_action, splits[0].test_action, opts.get("box", True)
        return action_features(train, val, out, settings, runtime, box=box, fusion_l2=fusion, progress=progress)
    return probe_features(benchmark_images(splits), out, settings, runtime, fusion_l2=fusion, progress=progress)


def option_given(name: str) -> bool:
    """Whether the running command's option `name` was given (command line or environment), not left at its
    default; False outside a click command."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


def check_fusion_matches(store, fusion_l2: str) -> None:
    """--fusion-l2 given beside --features of several nets must be how the store fused them (a store from
    `vggfeat extract` is fused when extracted: per-net with its l2_parts, else whole)."""
    given = option_given("fusion_l2")
    stored = store_fusion(store.manifest)
    if given and stored is not None and stored != fusion_l2:
        raise StoreError(
            f"{store.root}: --fusion-l2 {fusion_l2} but the store's nets were fused {stored} when extracted; "
            "drop --fusion-l2, or probe with --model/--weights to fuse the nets here"
        )


def check_store_matches(store, layer: str, scales, aggregate: str | None, weights) -> None:
    """Extraction flags given beside --features must describe the store, or the report would claim settings
    that were never used: each one given on the command line is compared with its manifest."""

    given = option_given("layer")
    m = store.manifest
    wrong = []
    if (given or layer != "fc7") and layer != m.get("layer"):
        wrong.append(f"--layer {layer} but the store holds {m.get('layer')}")
    if scales:
        asked = list(SCALES.convert(scales, None, None))
        if asked != list(m.get("scales") or []):
            wrong.append(f"--scales {','.join(map(str, asked))} but the store holds {m.get('scales')}")
    if aggregate and aggregate != m.get("aggregate"):
        wrong.append(f"--aggregate {aggregate} but the store holds {m.get('aggregate')}")
    stored = [n.get("weights_sha256") for n in m.get("models") or []]
    for w in weights or ():
        if Path(w).is_file() and sha256_file(w) not in stored:
            wrong.append(f"--weights {w} is not among the store's nets")
    if wrong:
        raise StoreError(
            f"{store.root}: {'; '.join(wrong)} - extraction flags describe how --features was made; "
            "drop them, or extract a store with them (`vggfeat extract ... -o STORE`)"
        )


def run_probe(opts: dict, *, stem: str, probe) -> None:
    """What both probe commands do with the options of `probe_options` (OPTS): load the splits and the store,
    call `probe(splits, store)` (a ProbeResult), write the report OUT/STEM.{json,md,png} and print its summary.
    The dataset is checked first, before torch, sklearn or faiss is imported: a wrong --root answers at once."""
    benchmark = opts["benchmark"]
    out_dir = Path(opts["out"] or Path("vggfeat-out") / benchmark)
    try:
        splits = load_splits(benchmark, opts["root"], out_dir, opts["n_splits"], opts["seed"])
        store = probe_store(benchmark, splits, out_dir, opts)
        click.echo(
            f"{benchmark}: {len(splits[0].classes)} classes, {len(splits)} split(s), "
            f"{store.dim}-D features from {store.root}"
        )
        if line := fusion_line(store.manifest):
            click.echo(line)

        report = write_report(probe(splits, store), out_dir, stem)
    except FileNotFoundError as e:  # VggfeatError is shown by LazyGroup; other exceptions are bugs
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write to {out_dir}: {e.strerror or e}") from None
    click.echo("")
    for line in summary_lines(report):
        click.echo(line)
    files = report_files(out_dir, stem)
    click.echo(f"\nreport: {files['markdown']}, {files['json']}, {files['plot']}")


def echo_split(split, result) -> None:
    click.echo(
        f"  split {split.split}: {len(split.train_paths)} train / {len(split.test_paths)} test images -> "
        f"{100 * result.headline:.2f} % ({result.seconds:.1f} s)"
    )


def run_low_shot_probe(
    opts: dict, *, ks: tuple[int, ...], samples: int, Cs: tuple[float, ...] | None, scoring: str
) -> None:
    """`linear-probe voc2007 --low-shot`: the same VOC-2007 descriptors (cached as for the full probe), then
    vggfeat.probes.lowshot on them; writes OUT/low-shot.{json,md,png} and prints mean +- std of mAP per k.
    The ks are checked against the label lists before anything is extracted or written."""
    benchmark = opts["benchmark"]
    if benchmark != "voc2007":
        raise click.UsageError(
            f"--low-shot is a VOC-2007 protocol (k positives per class): use it with voc2007, not {benchmark}"
        )
    out_dir = Path(opts["out"] or Path("vggfeat-out") / benchmark)
    try:
        (split,) = load_splits(benchmark, opts["root"], out_dir, 1, opts["seed"])
        import numpy as np

        from vggfeat.probes.lowshot import check_low_shot_ks, get_scoring, low_shot_lines, run_low_shot, write_low_shot

        y_train = np.array(split.train_labels)
        check_low_shot_ks(y_train, ks, get_scoring(scoring).negatives_for(y_train.shape[1]), split.classes)
        store = probe_store(benchmark, [split], out_dir, opts)
        click.echo(
            f"{benchmark} low-shot ({scoring} scoring): k in {', '.join(map(str, ks))}, {samples} samples, "
            f"{store.dim}-D features"
        )
        if line := fusion_line(store.manifest):
            click.echo(line)
        x_train, x_test = split_features(store, split.train_paths, split.test_paths)
        result = run_low_shot(
            x_train,
            y_train,
            x_test,
            np.array(split.test_labels),
            ks=ks,
            samples=samples,
            Cs=Cs,
            scoring=scoring,
            seed=opts["seed"],
            classes=split.classes,
            device=resolve_device(opts["device"]),
            features=store_summary(store),
            progress=None if opts["quiet"] else lambda k, i: click.echo(f"  k = {k}: {samples} samples solved"),
        )
        files = write_low_shot(result, out_dir, "low-shot")
    except FileNotFoundError as e:  # VggfeatError is shown by LazyGroup; other exceptions are bugs
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write to {out_dir}: {e.strerror or e}") from None
    click.echo("")
    for line in low_shot_lines(result.to_dict()):
        click.echo(line)
    click.echo(f"\nreport: {files['markdown']}, {files['json']}, {files['plot']}")
