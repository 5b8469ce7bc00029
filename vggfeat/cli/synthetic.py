"""`vggfeat synthetic`: a small generated class-per-folder dataset (train/, val/), such as the one the smoke
recipe trains on; the same files for the same settings, so a rerun reuses them."""

from __future__ import annotations

import click

from vggfeat.data.synthetic import KINDS, ensure_synthetic


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--kind",
    type=click.Choice(list(KINDS)),
    default="shapes",
    show_default=True,
    help="shapes: drawn shapes and textures (30 classes at most); pictograms: single VOC pictograms (20).",
)
@click.option("--classes", type=click.IntRange(min=1), default=10, show_default=True, help="Number of classes.")
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Training images per class (val/ gets a quarter as many).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every drawing.")
def synthetic(out: str, kind: str, classes: int, per_class: int, seed: int) -> None:
    """Write a generated dataset to OUT: train/<class>/*.jpg and val/<class>/*.jpg, laid out like ImageNet.

    The defaults are the smoke recipe's data:

    \b
      vggfeat synthetic data/synthetic-smoke
      vggfeat train smoke --out runs/smoke
    """
    if classes > KINDS[kind].max_classes:
        raise click.BadParameter(
            f"{kind} has {KINDS[kind].max_classes} classes at most, got {classes}", param_hint="--classes"
        )
    try:
        ensure_synthetic(out, kind=kind, classes=classes, per_class=per_class, seed=seed)
    except FileExistsError as e:  # a dataset of the user's own is never written over
        raise click.ClickException(str(e)) from None
    click.echo(f"{out}: {classes} classes of {KINDS[kind].what}, {per_class} training images each")
