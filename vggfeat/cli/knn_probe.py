"""`vggfeat knn-probe`: kNN classification through a faiss index on the same benchmark splits and metric as
the linear probe - a cheap second view of how good the descriptors are."""
from __future__ import annotations

import json
from pathlib import Path

import click

from vggfeat.cli.probe_options import echo_split, load_splits, probe_options, probe_store


@click.command("knn-probe", context_settings={"max_content_width": 100})
@probe_options
@click.option("-k", "k", default=20, show_default=True, type=click.IntRange(min=1), help="Neighbours that vote.")
@click.option("--index", "kind", type=click.Choice(["flat", "ivf", "ivfpq", "hnsw"]), default="flat",
              show_default=True, help="faiss index over the training descriptors (flat is exact).")
@click.option("--temperature", default=0.07, show_default=True, type=click.FloatRange(min=1e-6, min_open=True),
              help="Votes are weighted by exp(similarity / T).")
def knn_probe(benchmark, root, out, features, models, weights, layer, scales, aggregate, n_splits, seed, device,
              batch_size, workers, quiet, k, kind, temperature) -> None:
    """Score BENCHMARK by k-nearest-neighbour votes among its training images' descriptors.

    Same benchmarks, splits, metrics and feature options as `vggfeat linear-probe` (see its --help).

    \b
    Examples:
      vggfeat knn-probe voc2007 --root /data --features voc07 -k 20
      vggfeat knn-probe caltech101 --root /data --weights d.safetensors --index hnsw
    """
    from vggfeat.data.benchmarks import DatasetError
    from vggfeat.features.store import StoreError
    from vggfeat.models.weights import WeightsError
    from vggfeat.probes.report import summary_lines, write_report
    from vggfeat.probes.run import run_knn_probe

    out_dir = Path(out or Path("vggfeat-out") / benchmark)
    try:
        splits = load_splits(benchmark, root, out_dir, n_splits, seed)
        store = probe_store(benchmark, splits, out_dir, features, models, weights, layer, scales, aggregate, seed,
                            device, batch_size, workers, quiet)
        click.echo(f"{benchmark}: {len(splits[0].classes)} classes, {len(splits)} split(s), "
                   f"{store.dim}-D features from {store.root}")
        result = run_knn_probe(splits, store, k=k, kind=kind, temperature=temperature, progress=echo_split)
        files = write_report(result, out_dir, "knn-probe")
    except (DatasetError, StoreError, WeightsError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot write to {out_dir}: {e.strerror or e}") from None
    click.echo("")
    for line in summary_lines(json.loads(files["json"].read_text())):
        click.echo(line)
    click.echo(f"\nreport: {files['markdown']}, {files['json']}, {files['plot']}")
