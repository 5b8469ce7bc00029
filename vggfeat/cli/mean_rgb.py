"""`vggfeat mean-rgb`: the training set's mean RGB (Sect. 2.1) and pixel-covariance eigen-decomposition
(the colour shift of Sect. 3.1), cached as ROOT/mean_rgb.json for recipes with mean_rgb: null."""

from __future__ import annotations

import click

from vggfeat.cli.params import batch_size_option, device_option, workers_option
from vggfeat.data.stats import CACHE_NAME, cached_stats


@click.command("mean-rgb")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--max-images", type=int, default=0, help="Use the first N training images only (0: all).")
@click.option(
    "--refresh", is_flag=True, help="Recompute even if ROOT/mean_rgb.json holds the statistics of the same images."
)
@device_option(more="The pixel sums are accumulated there, in float64.")
@batch_size_option(help="Images whose pixels are summed together.")
@workers_option()
def mean_rgb(root: str, max_images: int, refresh: bool, device: str, batch_size: int, workers: int) -> None:
    """Mean RGB and colour eigen-decomposition of ROOT/train (0-255 units), cached beside the data."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")  # skipped images named

    s = cached_stats(
        root, refresh=refresh, max_images=max_images, device=device, batch_size=batch_size, workers=workers
    )
    skipped = s.get("skipped", [])
    note = f", {len(skipped)} unreadable skipped" if skipped else ""
    click.echo(f"mean RGB: {', '.join(f'{v:.3f}' for v in s['mean'])}  ({s['images']} images{note})")
    click.echo(f"eigval:   {', '.join(f'{v:.4f}' for v in s['eigval'])}")
    for row in s["eigvec"]:
        click.echo(f"eigvec:   {', '.join(f'{v:+.4f}' for v in row)}")
    if s["reused"]:
        click.echo(f"reused {root}/{CACHE_NAME} (same images, sizes, mtimes and settings; --refresh recomputes)")
    else:
        click.echo(f"computed; cached in {root}/{CACHE_NAME}")
