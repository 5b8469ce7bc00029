"""Options shared by `vggfeat linear-probe` and `vggfeat knn-probe`: the benchmark, where its data lives, and
where its descriptors come from (a feature store, or nets extracted on the fly and cached). The work is
vggfeat.probes.benchmark.probe_benchmark; this module turns the options into its arguments and prints."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from vggfeat import defaults
from vggfeat.benchmarks.registry import BENCHMARKS
from vggfeat.cli.extract import LAYER_HELP
from vggfeat.cli.params import SCALES, batch_size_option, device_option, fusion_option, workers_option
from vggfeat.cli.weights import net_pairs, say_default
from vggfeat.features.runtime import Runtime
from vggfeat.probes.benchmark import Probe, ProbeOutcome, probe_benchmark
from vggfeat.probes.report import summary_lines
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
            help=f"Output folder: report, split lists, cached features. Default: {defaults.OUT_ROOT}/BENCHMARK. "
            "A report of another probe there (other settings, data or features) is not replaced without "
            "--overwrite.",
        ),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Replace OUT's report of another probe of the same kind (its settings, data or features differ).",
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
        click.option("--layer", default=None, help=f"{LAYER_HELP} Default: {defaults.LAYER}."),
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
            default=defaults.SPLITS,
            show_default=True,
            type=click.IntRange(min=1),
            help="Random splits (Caltech, folder); their lists are written to OUT/splits and reused.",
        ),
        click.option(
            "--seed", default=defaults.SEED, show_default=True, help="Seed of splits, held-out sets and random nets."
        ),
        device_option(),
        batch_size_option(help="Images per forward pass when extracting (their flipped copies ride along)."),
        workers_option(help="Loader processes decoding and rescaling images when extracting."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), fn)


def run_probe(opts: dict, probe: Probe) -> ProbeOutcome:
    """What both probe commands do with the options of `probe_options` (OPTS): call probe_benchmark, print
    its progress, the summary and where the report is. The dataset is checked first, before torch, sklearn
    or faiss is imported: a wrong --root answers at once."""
    benchmark = opts["benchmark"]
    out_dir = Path(opts["out"]) if opts["out"] else defaults.out_dir(benchmark)
    if opts["features"] and benchmark == "voc2012-action":
        raise click.UsageError(
            "voc2012-action describes the images and the person boxes itself: give --model/--weights, not --features"
        )
    if opts["features"]:
        if opts["models"]:
            click.secho("note: --features given, so --model is not used", fg="yellow", err=True)
        nets = [("auto", w) for w in opts["weights"]]  # only checked against the store's nets
    else:  # the default weights are named once the dataset is found (naming them imports torch)
        nets = net_pairs(opts["models"], opts["weights"], opts["seed"], announce=False)
    defaulted = [w for _, w in nets] if not opts["features"] and not opts["weights"] else []
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        outcome = probe_benchmark(
            benchmark,
            opts["root"],
            probe=probe,
            features=opts["features"],
            nets=nets,
            layer=opts["layer"],
            scales=opts["scales"],
            aggregate=opts["aggregate"],
            fusion_l2=opts["fusion_l2"],
            runtime=Runtime(device=opts["device"], batch_size=opts["batch_size"], workers=opts["workers"]),
            out=out_dir,
            seed=opts["seed"],
            n_splits=opts["n_splits"],
            box=opts.get("box", True),
            overwrite=opts["overwrite"],
            progress=not opts["quiet"],
            echo=click.echo,
            on_loaded=lambda _: say_default(defaulted) if defaulted else None,
        )
    except FileNotFoundError as e:  # VggfeatError is shown by LazyGroup; other exceptions are bugs
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write to {out_dir}: {e.strerror or e}") from None
    click.echo("")
    if probe.stem == "low-shot":
        from vggfeat.probes.lowshot import low_shot_lines

        lines = low_shot_lines(outcome.report)
    else:
        lines = summary_lines(outcome.report)
    for line in lines:
        click.echo(line)
    files = outcome.files
    click.echo(f"\nreport: {files['markdown']}, {files['json']}, {files['plot']}")
    return outcome


def option_given(name: str) -> bool:
    """Whether the running command's option `name` was given (command line or environment), not left at its
    default; False outside a click command."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
