"""Nearest neighbours over stored descriptors with faiss: indexes, retrieval and a kNN classifier.

A cheap companion to the linear SVMs of Sect. 4 (the paper's probe): inner product on L2-normalised
descriptors is cosine similarity. `knn_scores` is the weighted kNN vote of DINO's evaluation: each of the k
nearest training images votes for its classes with weight exp(cos / T), and the score of a class is its
share of the weighted vote, so scores compare across test images (VOC AP) and argmax is the prediction.
"""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from ..features.protocol import l2_normalize
from ..index.folder import FaissIndexError

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


def _as_matrix(X: np.ndarray, name: str) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {X.shape}")
    return X


def default_nlist(n: int) -> int:
    """IVF lists: ~4 sqrt(N), but at least 39 training points per list (faiss's k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_pq_m(d: int) -> int:
    """PQ sub-quantizers: the largest divisor of D not above min(64, D/8) (8+ dims per sub-vector)."""
    target = max(1, min(64, d // 8))
    return max(m for m in range(1, target + 1) if d % m == 0)


def _gpu_wanted(use_gpu: bool | None) -> bool:
    gpus = faiss.get_num_gpus()
    if use_gpu and gpus == 0:
        raise FaissIndexError("use_gpu=True asked for, but faiss sees no GPU; build on the CPU (use_gpu=None or False)")
    return bool(gpus) and use_gpu is not False


def kind_factory(kind: str, n: int, d: int, m: int | None = None) -> str:
    """The faiss.index_factory string of a named kind for n x d rows: flat (exact), ivf / ivfpq (inverted lists,
    `default_nlist(n)` of them; pq codes of `m` sub-quantizers of up to 8 bits, fewer when N < 39 * 256), hnsw
    (a graph of `m` links per node, default 32)."""
    if kind not in INDEX_KINDS:
        raise FaissIndexError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    nlist = default_nlist(n)
    if kind == "ivfpq":
        m = m or default_pq_m(d)
        if d % m:
            raise FaissIndexError(f"ivfpq: m={m} must divide the dimension {d}")
        nbits = max(1, min(8, int(math.log2(max(n // 39, 2)))))  # 39 points per PQ centroid
        return f"IVF{nlist},PQ{m}x{nbits}"
    return {"flat": "Flat", "ivf": f"IVF{nlist},Flat", "hnsw": f"HNSW{m or 32}"}[kind]


def build_index(
    X: np.ndarray,
    kind: str = "flat",
    *,
    metric: str = "ip",
    m: int | None = None,
    use_gpu: bool | None = None,
) -> faiss.Index:
    """An in-memory index of the rows of X (N, D) built from `kind_factory(kind, ...)`, trained on X itself; ivf
    kinds probe max(4, sqrt(nlist)) lists, hnsw searches with efSearch 128. On the GPU(s) when faiss has one and
    use_gpu is not False (hnsw stays on the CPU). `vggfeat index build` chooses and tunes its own (vggfeat.index)."""
    X = _as_matrix(X, "X")
    n, d = X.shape
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose 'ip' or 'l2'")
    index = faiss.index_factory(d, kind_factory(kind, n, d, m), _METRICS[metric])
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, max(4, int(math.sqrt(ivf.nlist))))
    elif kind == "hnsw":
        hnsw = faiss.downcast_index(index)
        assert isinstance(hnsw, faiss.IndexHNSW)  # kind_factory's hnsw is an IndexHNSWFlat
        hnsw.hnsw.efSearch = 128
    if kind != "hnsw" and _gpu_wanted(use_gpu):
        try:
            index = faiss.index_cpu_to_all_gpus(index)
        except RuntimeError as e:  # e.g. a PQ size the GPU code lacks: the CPU index still works
            if use_gpu:
                raise
            log.warning("faiss could not move the %s index to the GPU (%s); staying on the CPU", kind, e)
    if not index.is_trained:
        index.train(X)
    index.add(X)
    return index


def search(index: faiss.Index, Q: np.ndarray, k: int, where: str = "the index") -> tuple[np.ndarray, np.ndarray]:
    """(scores (M, k), ids (M, k)), best first; k is capped at the index size.

    Scores are inner products ('ip', larger is nearer) or squared distances ('l2', smaller is nearer).
    An IVF search that probes fewer than k rows pads with id -1. An id outside the index's rows (damaged lists
    of an index folder written before they were checksummed) raises FaissIndexError naming `where`.
    """
    Q = _as_matrix(Q, "Q")
    if Q.shape[1] != index.d:
        raise FaissIndexError(f"queries have dimension {Q.shape[1]} but the index has {index.d}")
    k = max(1, min(int(k), int(index.ntotal)))
    scores, ids = index.search(Q, k)
    bad = ids[(ids < -1) | (ids >= index.ntotal)]
    if bad.size:
        raise FaissIndexError(
            f"{where}: a search returned row {bad[0]}, outside the index's {index.ntotal} rows (its files are "
            "damaged); rebuild it"
        )
    return scores, ids


def knn_scores(
    train_X: np.ndarray,
    train_labels: np.ndarray,
    test_X: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    kind: str = "flat",
    multilabel: bool | None = None,
    num_classes: int | None = None,
) -> np.ndarray:
    """(M, K) class scores of the test rows by a weighted vote of their k nearest training rows.

    Rows are L2-normalised here, so similarity s is cosine. Neighbour j of test row i has weight
    w_ij = exp(s_ij / T), computed as exp((s_ij - max_j s_ij) / T) so that no T overflows;
    score[i, c] = sum_j w_ij [j is in class c] / sum_j w_ij. Multi-label
    (train_labels (N, K) in {1, -1, 0}, VOC): 'in class c' means label 1, so a 'difficult' 0 neighbour
    counts as not positive; the scores rank test images per class for AP. Multi-class (train_labels (N,)
    class ids): argmax of a row is the prediction. `multilabel` defaults to train_labels being 2-D.
    """
    labels = np.asarray(train_labels)
    multilabel = labels.ndim == 2 if multilabel is None else multilabel
    train_X, test_X = l2_normalize(_as_matrix(train_X, "train_X")), l2_normalize(_as_matrix(test_X, "test_X"))
    if len(labels) != len(train_X):
        raise ValueError(f"{len(train_X)} training rows but {len(labels)} labels")
    if not (math.isfinite(temperature) and temperature > 0):  # NaN would pass a plain `<= 0` test
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if not multilabel and len(np.unique(labels)) < 2:
        # one class: every vote is for it and the 'accuracy' is 100 %; refused like the linear probe's SVMs
        raise FaissIndexError(f"need at least 2 classes for a kNN probe, got {len(np.unique(labels))}")
    sims, ids = search(build_index(train_X, kind, metric="ip"), test_X, k)  # (M, k) each
    valid = ids >= 0  # -1: IVF padding
    # exp(s / T) overflows float64 once s / T > 709 (cos 0.93 at T = 0.0013); the vote is a ratio of weights, so
    # each row's best similarity is subtracted first: the same shares, every weight in (0, 1]
    best = np.max(np.where(valid, sims, -np.inf), axis=1, keepdims=True)
    shifted = (sims.astype(np.float64) - np.where(np.isfinite(best), best, 0.0)) / temperature
    weights = np.where(valid, np.exp(np.minimum(shifted, 0.0)), 0.0)
    ids = np.maximum(ids, 0)
    if multilabel:
        if labels.ndim != 2:
            raise ValueError(f"multilabel needs (N, K) labels, got shape {labels.shape}")
        positive = (labels == 1).astype(np.float64)  # (N, K)
        votes = np.einsum("mk,mkc->mc", weights, positive[ids])  # (M, k) x (M, k, K) -> (M, K)
    else:
        labels = labels.astype(np.int64).reshape(-1)
        K = num_classes or int(labels.max()) + 1
        votes = np.zeros((len(test_X), K))
        np.add.at(votes, (np.arange(len(test_X))[:, None], labels[ids]), weights)
    return (votes / np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)).astype(np.float32)
