"""`vggfeat index build` as a library call: choose (or take) a factory string, train on a seeded sample, add every
row in blocks read from the source (never all in RAM) while the exact top-K of held-out queries accumulates,
merge on disk when the index exceeds the budget, tune the search to the query-time limit, and save.

Peak memory is the budget plus one block: the training sample is freed before the rows are added, and an
index larger than the budget only ever holds one block's lists in RAM.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from vggfeat.errors import InputError
from vggfeat.index.folder import describe_index, save_index

from . import gpu, ondisk
from .budget import block_rows as budget_block_rows
from .budget import format_size
from .choose import Plan, choose_index, plan_for_factory
from .source import VectorSource
from .tune import ExactTopK, tune

log = logging.getLogger(__name__)

# k-means iterations of the coarse quantizer (faiss's default is 25): its centroids barely move after 10, and
# training is most of a build's time
COARSE_ITERATIONS = 10


def sample_rows(n: int, n_queries: int, n_train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, training rows), seeded; the training rows avoid the queries when the rows allow it."""
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, min(n_queries, n), replace=False))
    if n_train <= n - len(queries):
        j = np.sort(rng.choice(n - len(queries), n_train, replace=False))
        # the j-th row that is not a query: skip the queries at or before it
        train = j + np.searchsorted(queries - np.arange(len(queries)), j, side="right")
    else:
        train = np.sort(rng.choice(n, min(n_train, n), replace=False))
    return queries, train


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _train(source: VectorSource, plan: Plan, rows: np.ndarray, gpus: list[int]) -> faiss.Index:
    index = faiss.index_factory(source.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = COARSE_ITERATIONS
        inner = faiss.downcast_index(ivf)
        if hasattr(inner, "do_polysemous_training"):
            # index_factory turns on polysemous training for 8-bit PQ: minutes of simulated annealing that only
            # serve a Hamming pre-filter (`ht`), which these searches do not use
            inner.do_polysemous_training = False
    if not index.is_trained:
        x = source.read_rows(rows)
        t = time.perf_counter()
        gpu.train(index, x, gpus)
        log.info("trained %s on %d rows in %.1f s", plan.factory, len(x), time.perf_counter() - t)
        del x  # the sample's memory goes back before the rows are added
    return index


def _in_memory(
    source: VectorSource, index: faiss.Index, truth: ExactTopK, block_rows: int, gpus: list[int], echo: Callable
) -> faiss.Index:
    target = gpu.to_gpus(index, gpus)
    for rows, start in source.iter_vector_blocks(block_rows):
        target.add(rows)  # rows arrive in order, so ids are row numbers
        truth.add(rows, start)
        echo(f"  added rows {start}-{start + len(rows) - 1} of {source.count}")
    return gpu.to_cpu(target)


def _blocks(
    source: VectorSource,
    trained: faiss.Index,
    folder: Path,
    blocks: list[int],
    block_rows: int,
    truth: ExactTopK,
    echo: Callable,
) -> None:
    for b in blocks:
        if ondisk.block_done(folder, b):
            continue  # written by an earlier run or another part
        start = b * block_rows
        # one block can span two source files: its pieces are joined before it is added
        rows = np.concatenate([r for r, _ in source.iter_vector_blocks(block_rows, start, start + block_rows)])
        index = faiss.clone_index(trained)
        index.add_with_ids(rows, np.arange(start, start + len(rows), dtype=np.int64))
        ondisk.write_block(folder, b, index, *truth.block_result(rows, start))
        del index, rows
        echo(f"  block {b}: rows {start}-{min(start + block_rows, source.count) - 1} -> {folder.name}/")


def build_index(
    source: VectorSource,
    out: str | Path,
    *,
    budget: int,
    factory: str | None = None,
    max_query_ms: float = 10.0,
    recall_k: int = 10,
    n_queries: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    part: tuple[int, int] | None = None,
    block_rows: int | None = None,
    echo: Callable[[str], None] = log.info,
) -> dict[str, Any] | None:
    """Build the index of `source` into folder `out` (see the module docstring); its index.json's content, or
    None for a `part` (I, N), which only writes its share of the blocks for a later merge."""
    t0 = time.perf_counter()
    n, d = source.count, source.dim
    if n == 0:
        raise InputError(f"{source.root}: holds no rows (every image was skipped?); nothing to index")
    block_rows = block_rows or budget_block_rows(budget, d)
    plan = plan_for_factory(factory, n, d, budget, block_rows) if factory else choose_index(n, d, budget, block_rows)
    gpus = gpu.faiss_gpus(device)
    device_kind = "gpu" if gpus else "cpu"
    size = format_size(source.nbytes)
    echo(f"{source.root}: {n} x {d} vectors ({size}), budget {format_size(budget)}, blocks of {block_rows} rows")
    echo(f"{plan.factory}: {plan.reason}")
    k = min(recall_k, n)
    q_rows, t_rows = sample_rows(n, n_queries, plan.train_rows, seed)
    n_train = int(len(t_rows)) if plan.train_rows else 0
    truth = ExactTopK(source.read_rows(q_rows), k)
    if part is not None and not plan.ondisk:
        raise InputError(
            f"--part splits an index built on disk; {plan.factory} ({format_size(plan.index_bytes)}) fits the "
            f"{format_size(budget)} budget and is built in one run: drop --part, or give a smaller --max-memory"
        )
    ivfdata = None
    if not plan.ondisk:
        index = _in_memory(source, _train(source, plan, t_rows, gpus), truth, block_rows, gpus, echo)
    else:
        folder = ondisk.blocks_dir(out)
        n_blocks = math.ceil(n / block_rows)
        # everything trained.index and the blocks depend on: the training sample (its size is set by the budget),
        # where its k-means ran (a GPU's centroids are not the CPU's), the queries of the kept exact top-K
        settings = {"factory": plan.factory, "metric": "ip", "rows": n, "dim": d, "block_rows": block_rows}
        settings.update(seed=seed, train_rows=n_train, train_device=device_kind, queries=len(q_rows), k=k)
        source_id = {"source": str(source.root.resolve()), "source_identity": source.identity()}
        ondisk.check_plan(folder, {**settings, **source_id})
        with ondisk.waiting_lock(folder / ondisk.TRAINED_FILE):  # one part trains, the others wait and read it
            if not (folder / ondisk.TRAINED_FILE).is_file():
                ondisk.write_index(_train(source, plan, t_rows, gpus), folder / ondisk.TRAINED_FILE)
        trained = ondisk.read_trained(folder)
        mine = [b for b in range(n_blocks) if part is None or b % part[1] == part[0]]
        _blocks(source, trained, folder, mine, block_rows, truth, echo)
        if part is not None:
            left = sum(not ondisk.block_done(folder, b) for b in range(n_blocks))
            echo(f"part {part[0]}/{part[1]}: {len(mine)} of {n_blocks} blocks in {folder}; {left} still to build")
            return None
        for b in range(n_blocks):
            truth.add_result(*ondisk.read_truth(folder, b, (len(q_rows), k)))
        ivfdata = folder / ondisk.IVFDATA_FILE
        index = ondisk.merge(trained, folder, n_blocks, ivfdata)
        echo(f"  merged {n_blocks} blocks into on-disk inverted lists ({format_size(ivfdata.stat().st_size)})")
    tuning = tune(index, truth.queries, truth.ids(), max_query_ms)
    meta: dict[str, Any] = {
        "source": str(source.root.resolve()),
        "source_kind": source.kind,
        "features": source.features,
        "metric": "ip",
        "factory": plan.factory,
        "reason": plan.reason,
        "ondisk": plan.ondisk,
        "search_params": tuning.params,
        "measured": {
            f"recall@{k}": round(tuning.recall, 4),
            "recall_k": k,
            "ms_per_query": round(tuning.ms_per_query, 4),
            "max_query_ms": max_query_ms,
            "queries": len(q_rows),
            "seed": seed,
            "trials": tuning.trials,
            "note": tuning.note,
        },
        "build": {
            "max_memory": budget,
            "block_rows": block_rows,
            "train_rows": n_train,
            "seconds": round(time.perf_counter() - t0, 2),
            "peak_rss": peak_rss(),
            "device": device_kind,
        },
    }
    save_index(index, out, meta, paths=source.iter_paths(), ivfdata=ivfdata)
    if ivfdata is not None:
        ondisk.remove(ondisk.blocks_dir(out))
    return {**meta, **describe_index(index)}
