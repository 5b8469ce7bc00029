"""`vggfeat knn-probe`: kNN classification through a faiss index on the same benchmark splits and metric as
the linear probe - a cheap second view of how good the descriptors are."""

from __future__ import annotations

import click

from vggfeat import defaults
from vggfeat.cli.params import FiniteRange
from vggfeat.cli.probe_options import probe_options, run_probe
from vggfeat.probes.benchmark import KnnProbe


@click.command("knn-probe", context_settings={"max_content_width": 100})
@probe_options
@click.option(
    "-k", "k", default=defaults.KNN_K, show_default=True, type=click.IntRange(min=1), help="Neighbours that vote."
)
@click.option(
    "--index",
    "kind",
    type=click.Choice(["flat", "ivf", "ivfpq", "hnsw"]),
    default=defaults.KNN_INDEX,
    show_default=True,
    help="faiss index over the training descriptors (flat is exact).",
)
@click.option(
    "--temperature",
    default=defaults.KNN_TEMPERATURE,
    show_default=True,
    type=FiniteRange(min=1e-6, max=100.0),
    help="Votes are weighted by exp(similarity / T) (computed stably at any T; above 100 every neighbour's "
    "weight is within 2 % of the others').",
)
def knn_probe(k, kind, temperature, **opts) -> None:
    """Score BENCHMARK by k-nearest-neighbour votes among its training images' descriptors.

    Same benchmarks, splits, metrics and feature options as `vggfeat linear-probe` (see its --help). The
    report is OUT/knn-probe.{json,md,png}.

    \b
    Examples:
      vggfeat knn-probe voc2007 --root /data --features voc07 -k 20
      vggfeat knn-probe caltech101 --root /data --weights d.safetensors --index hnsw
    """
    run_probe(opts, KnnProbe(k=k, index=kind, temperature=temperature))
