"""Click parameter types and options shared by the commands: test scales Q (Appendix B, Sect. 3.2), SVM cost
grids, bounded finite numbers, and --device, --batch-size and --workers (one definition, so every command's help,
choices and defaults are the same).

A bad value is a usage error (exit 2) naming the value and an example, raised while click parses, before
any work. Light: no torch import, so `--help` stays instant.
"""

from __future__ import annotations

import math
import re

import click

from vggfeat import defaults
from vggfeat.features.protocol import FUSION_L2, FUSION_L2_HELP

# Five 2x2 max-pools: below 32 px a VGG has no pool5 cell left, so no scale under it is usable (Sect. 2.1)
MIN_SCALE = 32


def _split(value: str) -> list[str]:
    return [v for v in value.replace(" ", "").split(",") if v]


class ScalesParam(click.ParamType):
    """Comma-separated distinct integers Q >= `minimum`, e.g. 256,384,512 -> (256, 384, 512)."""

    name = "Q,Q,..."

    def __init__(self, minimum: int = MIN_SCALE) -> None:
        self.minimum = minimum

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            scales = tuple(int(v) for v in _split(str(value)))
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated integers, e.g. 256,384,512", param, ctx)
        if not scales:
            self.fail(f"{value!r}: expected at least one scale, e.g. 256,384,512", param, ctx)
        small = [q for q in scales if q < self.minimum]
        if small:
            self.fail(
                f"{value!r}: Q = {', '.join(map(str, small))} is below the minimum {self.minimum} "
                "(a VGG halves the image five times); e.g. 256,384,512",
                param,
                ctx,
            )
        if len(set(scales)) != len(scales):
            self.fail(f"{value!r}: scales must be distinct", param, ctx)
        return scales


class CostGridParam(click.ParamType):
    """Comma-separated positive numbers, e.g. 0.01,0.1,1,10 -> (0.01, 0.1, 1.0, 10.0)."""

    name = "C,C,..."

    def convert(self, value, param, ctx) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            cs = tuple(float(v) for v in _split(str(value)))
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated positive numbers, e.g. 0.01,0.1,1,10", param, ctx)
        if not cs or min(cs) <= 0 or not all(c < float("inf") for c in cs):
            self.fail(f"{value!r}: expected comma-separated positive numbers, e.g. 0.01,0.1,1,10", param, ctx)
        return cs


class FiniteRange(click.FloatRange):
    """click.FloatRange that also refuses nan and inf: a NaN compares false with both bounds, so a plain range
    lets `--temperature nan` through to NaN scores."""

    def convert(self, value, param, ctx) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give a value {self._describe_range()}", param, ctx)
        return number


class DeviceParam(click.ParamType):
    """auto, cpu, cuda or cuda:N, checked as written (whether there is such a GPU is known once torch loads)."""

    name = "DEVICE"

    def convert(self, value, param, ctx) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(value)):
            self.fail(f"{value!r}: choose auto, cpu, cuda or cuda:N", param, ctx)
        return str(value)


SCALES = ScalesParam()
COST_GRID = CostGridParam()
DEVICE = DeviceParam()
DEVICE_HELP = "Where to compute: auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N."


def device_option(default: str | None = defaults.DEVICE, more: str = ""):
    """--device, the same on every command that computes; `more` adds what is particular to one command."""
    return click.option(
        "--device",
        type=DEVICE,
        default=default,
        show_default=default is not None,
        help=f"{DEVICE_HELP} {more}".strip(),
    )


def batch_size_option(
    default: int | None = defaults.BATCH_SIZE, help: str = "Images per forward pass (their flipped copies ride along)."
):
    """--batch-size wherever images are read."""
    return click.option(
        "--batch-size", type=click.IntRange(min=1), default=default, show_default=default is not None, help=help
    )


# what utils.cpus.share_cpus does with --workers, said once for every command that reads images
WORKERS_CAP = (
    "Capped by the CPUs this process may use: computing on the CPU, none below 8 CPUs (images decode between "
    "batches: a worker beside the compute threads slows them more than it saves) and one per 8 CPUs above."
)


def workers_option(
    default: int | None = defaults.WORKERS, help: str = "Loader processes decoding and rescaling images."
):
    """--workers wherever images are read; the CPUs this process may use cap it (utils.cpus)."""
    return click.option(
        "--workers",
        type=click.IntRange(min=0),
        default=default,
        show_default=default is not None,
        help=f"{help} {WORKERS_CAP}",
    )


FUSION_HELP = (
    "How several nets' descriptors are stacked (Appendix B's D & E late fusion; the paper does not say): "
    f"per-net = {FUSION_L2_HELP['per-net']} (each net weighs the same), whole = {FUSION_L2_HELP['whole']}. "
    f"Recorded in the report. Default: {defaults.FUSION_L2}."
)


def fusion_option(fn):
    """--fusion-l2, the same on linear-probe, knn-probe and reproduce."""
    return click.option(
        "--fusion-l2",
        "fusion_l2",
        type=click.Choice(FUSION_L2),
        default=None,
        help=FUSION_HELP,
    )(fn)


def svm_options(fn):
    """--Cs and --holdout, the same on linear-probe and reproduce (Appendix B gives no C: it is chosen per class
    on held-out training images, then the SVM is refit on all of them)."""
    fn = click.option(
        "--holdout",
        default=defaults.HOLDOUT,
        show_default=True,
        type=FiniteRange(0.05, 0.5),
        help="Fraction of the training images held out to choose C (the paper's 20%).",
    )(fn)
    return click.option(
        "--Cs",
        "cs",
        type=COST_GRID,
        default=defaults.grid_text(defaults.COSTS),
        show_default=True,
        help="SVM cost grid; each class's C is chosen on held-out training images, then refit on all.",
    )(fn)
