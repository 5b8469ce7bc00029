"""`vggfeat index build|search`: faiss indices over a feature store, searched with new images described by
the same nets and protocol as the store (retrieval with the paper's descriptors)."""

from __future__ import annotations

from pathlib import Path

import click

from vggfeat.data.images import find_input_images
from vggfeat.features.protocol import Protocol
from vggfeat.features.runtime import Runtime
from vggfeat.features.store import load_store
from vggfeat.utils.locks import folder_lock


@click.group("index", context_settings={"max_content_width": 100})
def index() -> None:
    """Build a faiss index over a feature store, and search it with images.

    \b
    Examples:
      vggfeat extract photos/ -o feats --weights vgg16.safetensors
      vggfeat index build feats -o photos.index --type hnsw
      vggfeat index search photos.index query.jpg more/ -k 5
    """


@index.command("build")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Index folder: index.faiss and index.json (row paths, settings).",
)
@click.option(
    "--type",
    "kind",
    type=click.Choice(["flat", "ivf", "ivfpq", "hnsw"]),
    default="flat",
    show_default=True,
    help="flat: exact; ivf/ivfpq: inverted lists (pq compresses); hnsw: graph.",
)
@click.option("--gpu/--no-gpu", default=None, help="Build on the GPU (default: when faiss sees one).")
def build(store, out, kind, gpu) -> None:
    """Index the descriptors of STORE (made by `vggfeat extract`) by inner product (cosine on L2-normalised
    descriptors)."""
    import numpy as np

    from vggfeat.probes.knn import build_index, save_index

    fs = load_store(store)  # StoreError is a VggfeatError: LazyGroup shows it as one line
    if len(fs) == 0:
        raise click.ClickException(f"{store}: the store holds no rows (every image was skipped?); nothing to index")
    # one build per folder at a time; the old index stays searchable until the new one replaces it whole
    with folder_lock(out, "written", "wait for that `vggfeat index build` to finish, or choose another -o"):
        x = np.ascontiguousarray(fs.features, dtype=np.float32)
        idx = build_index(x, kind, use_gpu=gpu)
        meta = {
            "store": str(Path(store).resolve()),
            "paths": fs.absolute_paths,  # results open from wherever `index search` runs
            "kind": kind,
            "metric": "ip",
            "dim": fs.dim,
            "features": {
                k: fs.manifest.get(k)
                for k in ("models", "layer", "scales", "flip", "aggregate", "l2", "l2_parts", "snap", "fast_decode")
            },
        }
        save_index(idx, out, meta)
    click.echo(f"{kind} index of {len(fs)} x {fs.dim}-D descriptors -> {out}")


@index.command("search")
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False, exists=True))
@click.argument("images", nargs=-1, required=True)
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Results per image.")
@click.option("--device", default="auto", show_default=True, help="Where the query images are described.")
@click.option("--seed", default=0, show_default=True, help="Seed of a random net (stores made without weights).")
def search(index_dir, images, k, device, seed) -> None:
    """Describe IMAGES (files, folders, @lists) exactly as the indexed store was made, and print each one's
    K nearest indexed images with their similarity."""
    from vggfeat.features.extract import describe_images, no_usable_image
    from vggfeat.features.nets import build_feature_net, recorded_net
    from vggfeat.probes.knn import load_index
    from vggfeat.probes.knn import search as knn_search

    idx, meta = load_index(index_dir)
    f = meta["features"]
    # the store's protocol, rebuilt from index.json; queries are described in memory (no temporary store)
    protocol = Protocol.from_dict(f)
    try:
        paths = [str(p) for p in find_input_images(images)]
        # the weights now at each recorded path must be the ones the indexed rows were made with (sha256 checked)
        specs = [recorded_net(m, Path(index_dir) / "index.json") for m in f["models"]]
        nets = [build_feature_net(spec, protocol.layer, seed) for spec in specs]
    except FileNotFoundError as e:  # VggfeatError is shown by LazyGroup; other exceptions are bugs
        raise click.ClickException(str(e)) from None
    rows, q, skipped = describe_images(nets, paths, protocol, Runtime(device=device))
    if not len(rows):
        raise no_usable_image(images, paths, skipped)
    q_paths = [paths[i] for i in rows.tolist()]
    scores, ids = knn_search(idx, q, min(k, len(meta["paths"])))
    for path, row_s, row_i in zip(q_paths, scores, ids, strict=False):
        click.echo(path)
        for rank, (s, i) in enumerate(zip(row_s, row_i, strict=False), 1):
            if i >= 0:
                click.echo(f"  {rank:>3}  {s:.4f}  {meta['paths'][i]}")
    for i, reason in skipped:
        click.echo(f"skipped {paths[i]}: {reason}", err=True)
