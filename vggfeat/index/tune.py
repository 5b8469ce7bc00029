"""Recall measured, not assumed: exact top-K of held-out queries accumulated block by block while the rows are
added, then nprobe (IVF) or efSearch (HNSW) raised until the query-time limit, keeping the best recall."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)


class ExactTopK:
    """The exact top-K inner products of `queries` over the rows fed to `add` (blocks with their first row)."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.heap = faiss.ResultHeap(len(queries), k, keep_max=True)

    def block_result(self, rows: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the queries' top-K within one block, ids counted from row 0 of the source.

        Products are taken a slice of rows at a time, so the score matrix stays as small as a block of rows
        (faiss's own flat search holds 16 MB of scores whatever the block)."""
        heap = faiss.ResultHeap(len(self.queries), self.k, keep_max=True)
        step = max(256, rows.size // max(1, len(self.queries)))  # (queries x step) scores <= the block's size
        for lo in range(0, len(rows), step):
            s = self.queries @ rows[lo : lo + step].T  # (Q, step)
            kk = min(self.k, s.shape[1])
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            heap.add_result(np.take_along_axis(s, top, 1), top + (start + lo))
        heap.finalize()
        return heap.D, heap.I

    def add_result(self, scores: np.ndarray, ids: np.ndarray) -> None:
        if scores.shape[1] < self.k:  # a block shorter than K: pad with nothing-found
            pad = self.k - scores.shape[1]
            scores = np.hstack([scores, np.full((len(scores), pad), -np.inf, np.float32)])
            ids = np.hstack([ids, np.full((len(ids), pad), -1, np.int64)])
        self.heap.add_result(np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(ids, np.int64))

    def add(self, rows: np.ndarray, start: int) -> None:
        self.add_result(*self.block_result(rows, start))

    def ids(self) -> np.ndarray:
        self.heap.finalize()
        return self.heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-K found in its approximate top-K (K-recall@K)."""
    k = truth.shape[1]
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found[:, :k], truth, strict=True)]
    return float(np.mean(hits) / k)


@dataclass
class Tuning:
    params: str  # a faiss.ParameterSpace string, e.g. "nprobe=16"; "" when nothing is tuned
    recall: float
    ms_per_query: float
    trials: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def _candidates(index: faiss.Index, k: int) -> list[str]:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        graph = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
        out, p = [], 1
        while True:
            p = min(p, ivf.nlist)
            out.append(f"nprobe={p}" + (f",quantizer_efSearch={max(2 * p, 16)}" if graph else ""))
            if p == ivf.nlist:
                return out
            p *= 2
    inner = index
    while isinstance(pre := faiss.downcast_index(inner), faiss.IndexPreTransform):
        inner = pre.index
    if isinstance(faiss.downcast_index(inner), faiss.IndexHNSW):
        return [f"efSearch={e}" for e in (16, 32, 64, 128, 256, 512, 1024, 2048) if e >= k]
    return [""]


def measure(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, params: str = "") -> tuple[float, float]:
    """(recall@K, ms per query) of `index` searched with `params` (a batch of all queries, as served)."""
    if params:
        # faiss's bundled stub declares this str overload without @overload, so only the int one counts
        faiss.ParameterSpace().set_index_parameters(index, params)  # type: ignore[arg-type]
    t = time.perf_counter()
    _, found = index.search(queries, truth.shape[1])
    ms = (time.perf_counter() - t) * 1000 / len(queries)
    return recall_at_k(found, truth), ms


def tune(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, max_query_ms: float) -> Tuning:
    """The search parameters of best recall within `max_query_ms` (the cheapest among equals), set on `index`."""
    trials: list[dict[str, Any]] = []
    for params in _candidates(index, truth.shape[1]):
        recall, ms = measure(index, queries, truth, params)
        trials.append({"params": params, "recall": round(recall, 4), "ms_per_query": round(ms, 4)})
        log.info("%s: recall %.4f, %.3f ms per query", params or "exact", recall, ms)
        if ms > max_query_ms or recall >= 1.0:
            break  # recall and time both grow with the parameter: larger ones only cost more
    within = [t for t in trials if t["ms_per_query"] <= max_query_ms]
    note = ""
    if not within:
        within = trials[:1]
        note = f"even the cheapest search took {trials[0]['ms_per_query']:.2f} ms per query (> {max_query_ms:g})"
    best = max(t["recall"] for t in within)
    pick = next(t for t in within if t["recall"] >= best)
    recall, ms = measure(index, queries, truth, pick["params"])  # leaves the chosen parameters set
    return Tuning(pick["params"], recall, ms, trials, note)
