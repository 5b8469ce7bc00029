"""`vggfeat index build|search|info`: faiss indices over a feature store (or any emb/meta folder of vectors),
chosen under a memory budget and measured (vggfeat.index), searched with images described by the store's nets
and protocol (retrieval with the paper's descriptors) or with query vectors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from vggfeat.cli.params import batch_size_option, device_option, workers_option
from vggfeat.data.images import find_input_images
from vggfeat.features.npy_rows import load_npy
from vggfeat.features.protocol import Protocol
from vggfeat.features.runtime import Runtime, recorded_precision
from vggfeat.features.shard_plan import parse_part  # the one --part I/N reading, as extract's
from vggfeat.index.budget import default_budget, format_size, parse_size
from vggfeat.index.source import open_source
from vggfeat.utils.locks import folder_lock


@click.group("index", context_settings={"max_content_width": 100})
def index() -> None:
    """Build a faiss index over a feature store or emb/meta folder, and search it.

    \b
    Examples:
      vggfeat extract photos/ -o feats --weights vgg16.safetensors
      vggfeat index build feats -o photos.index --max-memory 4GB
      vggfeat index search photos.index query.jpg more/ -k 5
      vggfeat index build clip_out/ -o big.index --max-memory 64GB --part 0/8   (x8, then once without --part)
      vggfeat index search big.index --vectors q.npy --json
    """


@index.command("build")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Index folder: index.faiss, index.json (factory, tuned search, measured recall), the row paths.",
)
@click.option("--max-memory", default=None, help="Memory budget, e.g. 500MB, 4GB [default: half the free RAM].")
@click.option(
    "--max-query-ms",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Query time limit: the search parameters are tuned for the best recall within it.",
)
@click.option("--factory", default=None, help="A faiss.index_factory string [default: chosen from N, D, budget].")
@click.option("--recall-k", default=10, show_default=True, type=click.IntRange(min=1), help="K of recall@K.")
@click.option("--queries", default=1000, show_default=True, type=click.IntRange(min=1), help="Held-out queries.")
@click.option("--seed", default=0, show_default=True, help="Seed of the training sample and the queries.")
@click.option("--part", default=None, help="I/N: build only this share of an on-disk index's blocks.")
@device_option(more="faiss trains, adds and measures on the GPUs it sees (auto: all of them).")
@click.option("--block-rows", default=None, type=click.IntRange(min=1), hidden=True, help="Rows read at a time.")
@click.option(
    "--type",
    "kind",
    default=None,
    hidden=True,
    type=click.Choice(["flat", "ivf", "ivfpq", "hnsw"]),
    help="Gone: refused with the --factory that builds the same index.",
)
@click.option("--gpu/--no-gpu", default=None, hidden=True, help="Gone: refused with the --device to use instead.")
def build(
    store, out, max_memory, max_query_ms, factory, recall_k, queries, seed, part, device, block_rows, kind, gpu
) -> None:
    """Index the vectors of STORE (a `vggfeat extract` store, or an emb/*.npy + meta/*.parquet folder) by inner
    product (cosine on L2-normalised descriptors); report the recall@K and query time it reaches."""
    from vggfeat.index.build import build_index

    if gpu is not None:
        raise click.ClickException(f"--{'' if gpu else 'no-'}gpu is gone: use --device {'cuda' if gpu else 'cpu'}")
    src = open_source(store)  # StoreError / SourceError are VggfeatErrors: LazyGroup shows them as one line
    if kind is not None:
        from vggfeat.probes.knn import kind_factory

        equiv = kind_factory(kind, src.count, src.dim)
        raise click.ClickException(
            f"--type {kind} is gone: give --factory '{equiv}' for the same index, or leave both out to have one "
            "chosen from the rows and --max-memory, with its recall measured"
        )
    budget = parse_size(max_memory) if max_memory else default_budget()
    parts = parse_part(part) if part else None
    run = dict(budget=budget, factory=factory, max_query_ms=max_query_ms, recall_k=recall_k, n_queries=queries)
    run.update(seed=seed, device=device, part=parts, block_rows=block_rows, echo=click.echo)
    if parts:  # parts run at once: only the final merge (save_index) takes the folder's lock
        build_index(src, out, **run)
        return
    # one build per folder at a time; the old index stays searchable until the new one replaces it whole
    with folder_lock(out, "written", "wait for that `vggfeat index build` to finish, or choose another -o"):
        meta = build_index(src, out, **run)
    click.echo(summary(meta, out))


def summary(meta, out) -> str:
    m, b = meta["measured"], meta["build"]
    k = m["recall_k"]
    lines = [
        f"{meta['factory']} index of {meta['ntotal']} x {meta['dim']} -> {out}"
        + (" (inverted lists on disk, memory-mapped)" if meta.get("ondisk") else ""),
        f"  why: {meta['reason']}",
        f"  recall@{k} {m[f'recall@{k}']:.4f} against exact search on {m['queries']} held-out queries, "
        f"{m['ms_per_query']:.3f} ms per query with {meta['search_params'] or 'exact search'} "
        f"(limit {m['max_query_ms']:g} ms)",
        f"  built in {b['seconds']:.1f} s, peak RSS {format_size(b['peak_rss'])}, "
        f"budget {format_size(b['max_memory'])}",
    ]
    if m.get("note"):
        lines.append(f"  note: {m['note']}")
    return "\n".join(lines)


@index.command("info")
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False, exists=True))
def info(index_dir) -> None:
    """What INDEX is and what it measured: factory, why, search parameters, recall@K, query time, build."""
    from vggfeat.index.folder import load_index

    _, meta = load_index(index_dir)
    if "measured" not in meta:
        click.echo(
            f"{meta.get('kind')} index of {meta.get('ntotal')} x {meta.get('dim')} (built before recall was measured)"
        )
        return
    click.echo(summary(meta, index_dir))


@index.command("search")
@click.argument("index_dir", metavar="INDEX", type=click.Path(file_okay=False, exists=True))
@click.argument("images", nargs=-1)
@click.option("--vectors", type=click.Path(dir_okay=False, exists=True), help="Query vectors: an (M, D) .npy file.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Results per query.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
@device_option(more="Query images are described there, and faiss searches on its GPUs (auto: all it sees).")
@batch_size_option()
@workers_option()
@click.option(
    "--seed",
    default=None,
    type=int,
    help="Seed of the store's random net (made without weights) [default: the one index.json records, else 0].",
)
def search(index_dir, images, vectors, k, as_json, device, batch_size, workers, seed) -> None:
    """Print each query's K nearest indexed rows with their similarity. Queries: IMAGES (files, folders, @lists)
    described exactly as the indexed store was made, or the rows of --vectors."""
    from vggfeat.index.folder import load_index
    from vggfeat.index.gpu import faiss_gpus, to_gpus
    from vggfeat.probes.knn import search as knn_search

    if bool(images) == bool(vectors):
        raise click.UsageError("give query IMAGES or --vectors Q.npy (one of the two)")
    idx, meta = load_index(index_dir)
    skipped, paths = [], []
    if vectors:
        # a FIFO is refused, and a header declaring more rows than the file holds allocates nothing
        q = load_npy(vectors, click.ClickException, f"give one (M, {idx.d}) array saved with np.save as .npy")
        if q.ndim != 2 or q.shape[1] != idx.d or not len(q) or q.dtype.kind not in "fiu":
            raise click.ClickException(f"{vectors}: {q.dtype} of shape {q.shape}, need (M, {idx.d}) query vectors")
        labels = [f"{vectors}[{i}]" for i in range(len(q))]
    else:
        runtime = Runtime(device=device, batch_size=batch_size, workers=workers)
        q, labels, skipped, paths = describe_queries(index_dir, meta, images, runtime, seed)
    if not meta.get("ondisk"):  # memory-mapped lists stay on the CPU
        idx = to_gpus(idx, faiss_gpus(device))
    scores, ids = knn_search(idx, q, min(k, len(meta["paths"])), where=str(index_dir))
    # every result row's path in one pass over the row-path files (a list for an index written before them)
    hits = sorted({int(i) for i in ids.ravel() if i >= 0})
    rows = meta["paths"]
    row_path = dict(zip(hits, rows.lookup(hits) if hasattr(rows, "lookup") else [rows[i] for i in hits], strict=True))
    results: list[dict[str, Any]] = [
        {
            "query": label,
            "results": [
                {"rank": r, "score": float(s), "path": row_path[int(i)], "row": int(i)}
                for r, (s, i) in enumerate(zip(row_s, row_i, strict=False), 1)
                if i >= 0
            ],
        }
        for label, row_s, row_i in zip(labels, scores, ids, strict=False)
    ]
    if as_json:
        click.echo(json.dumps({"index": str(index_dir), "k": k, "queries": results}, indent=1))
    else:
        for res in results:
            click.echo(res["query"])
            for hit in res["results"]:
                click.echo(f"  {hit['rank']:>3}  {hit['score']:.4f}  {hit['path']}")
    for i, reason in skipped:
        click.echo(f"skipped {paths[i]}: {reason}", err=True)


def describe_queries(index_dir, meta, images, runtime: Runtime, seed):
    """(vectors, labels, skipped, paths) of query images, described with the nets, protocol and compute
    precision recorded in index.json (the store's); an index of other vectors cannot describe images."""
    from vggfeat.features.extract import describe_images, no_usable_image
    from vggfeat.features.nets import build_feature_net, recorded_net

    f = meta.get("features") or {}
    if not f.get("models"):
        raise click.ClickException(
            f"this index was built from {meta.get('source', 'vectors')}, not a vggfeat store: it has no nets to "
            "describe images with; search it with --vectors Q.npy"
        )
    # the store's protocol, rebuilt from index.json; queries are described in memory (no temporary store)
    protocol = Protocol.from_dict(f)
    recorded_in = Path(index_dir) / "index.json"
    seed = recorded_seed(f, seed, recorded_in)
    if f.get("gpu_decode"):
        runtime = gpu_decoding(runtime, recorded_in)
    try:
        paths = [str(p) for p in find_input_images(images)]
        # the weights now at each recorded path must be the ones the indexed rows were made with (sha256 checked)
        specs = [recorded_net(m, recorded_in) for m in f["models"]]
        nets = [build_feature_net(spec, protocol.layer, seed) for spec in specs]
    except FileNotFoundError as e:  # VggfeatError is shown by LazyGroup; other exceptions are bugs
        raise click.ClickException(str(e)) from None
    runtime = replace(runtime, precision=recorded_precision(f))  # bf16 rows: bf16 queries, on any device
    rows, q, skipped = describe_images(nets, paths, protocol, runtime)
    if not len(rows):
        raise no_usable_image(images, paths, skipped)
    return q, [paths[i] for i in rows.tolist()], skipped, paths


def recorded_seed(features: dict, seed: int | None, recorded_in: Path) -> int:
    """The seed of the store's random nets: the one recorded (another --seed would describe the queries with
    another net than the rows), else --seed or 0 (an index built before the seed was recorded)."""
    if "seed" not in features:
        return 0 if seed is None else seed
    if seed is not None and seed != features["seed"]:
        raise click.ClickException(
            f"{recorded_in}: its store was made with --seed {features['seed']} (a random net); --seed {seed} would "
            "describe the queries with another net than the indexed rows: drop --seed"
        )
    return int(features["seed"])


def gpu_decoding(runtime: Runtime, recorded_in: Path) -> Runtime:
    """`runtime` decoding JPEGs on the GPU, as the store's were: PIL's pixels differ, and so would the queries."""
    if runtime.torch_device().type != "cuda":
        raise click.ClickException(
            f"{recorded_in}: its store was extracted with --gpu-decode (JPEGs decoded on a GPU, not PIL's pixels); "
            "describe the query images on a CUDA GPU (--device cuda), or search with --vectors"
        )
    return replace(runtime, gpu_decode=True)
