"""Which faiss index to build from N, D and a memory budget, with the reason, in autofaiss's spirit: exact
(Flat) or a graph (HNSW) when the vectors fit, inverted lists (IVF-Flat) for fewer than 10^6 rows, else
IVF + PQ with the largest code that fits; past the budget the lists go to disk. Every index is a
`faiss.index_factory` string, so `--factory` can name any other."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss

from vggfeat.errors import InputError

from .budget import block_rows, format_size

FLAT_MAX_ROWS = 20_000  # below this an exact scan takes well under a millisecond per query
HNSW_MAX_ROWS = 1_000_000  # a graph of more rows takes hours to build on a few cores
IVF_FLAT_MAX_ROWS = 1_000_000  # above, scanning uncompressed lists is too slow for the query-time limit
MIN_PER_CENTROID, MAX_PER_CENTROID = 30, 256  # k-means training points per centroid (faiss warns below 39)
ID_BYTES = 8  # IVF lists store an int64 id beside each code


@dataclass(frozen=True)
class Plan:
    factory: str
    reason: str
    train_rows: int  # rows of the training sample (0: nothing to train)
    index_bytes: int  # the index's estimated size in memory (or on disk, when ondisk)
    ondisk: bool  # the inverted lists exceed the budget: blocks merged into on-disk lists


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(x, 1)))))


def default_nlist(n: int, budget: int, d: int, block: int | None = None) -> int:
    """~4 sqrt(N) lists below 10^6 rows, 2^16 to 2^20 above; never more than the training sample (capped by the
    budget) gives 30 points each."""
    if n < 1_000_000:
        k = _pow2_floor(4 * math.sqrt(n) * 1.5)  # the power of two nearest 4 sqrt(N) from above or below
    else:
        k = 1 << 16 if n < 10**8 else 1 << 18 if n < 3 * 10**8 else 1 << 20
    return max(1, min(k, _pow2_floor(sample_cap(n, budget, d, block) / MIN_PER_CENTROID)))


def sample_cap(n: int, budget: int, d: int, block: int | None = None) -> int:
    """Training rows that fit the budget plus a block of `block` rows: nothing else is held while training, and
    faiss makes one copy of the sample (its residuals), so the sample takes half of that room."""
    block = block or block_rows(budget, d)
    return min(n, (budget // (4 * d) + block) // 2)


def train_rows(n: int, d: int, budget: int, nlist: int, nbits: int = 0, block: int | None = None) -> int:
    """30-256 points per centroid of the largest codebook (IVF lists or PQ's 2^nbits), capped by the budget plus a
    block; never fewer than 30 per centroid (k-means needs them: the build then exceeds the budget by that much)."""
    centroids = max(nlist, (1 << nbits) if nbits else 0)
    if centroids <= 1:
        return 0
    want = min(MAX_PER_CENTROID * centroids, max(MIN_PER_CENTROID * centroids, sample_cap(n, budget, d, block)))
    return min(n, want)


def estimate_bytes(index: faiss.Index, n: int) -> int:
    """The size of `index` (untrained, as index_factory made it) once it holds n rows."""
    d = index.d
    inner = index
    extra = 0
    while isinstance(pre := faiss.downcast_index(inner), faiss.IndexPreTransform):
        extra += 4 * d * pre.index.d  # the transform's matrix
        inner = pre.index
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        q = faiss.downcast_index(ivf.quantizer)
        qbytes = ivf.nlist * ivf.d * 4 * (2 if isinstance(q, faiss.IndexHNSW) else 1)
        book = 256 * ivf.d * 4  # PQ/SQ codebooks: at most 256 centroids of every sub-vector
        return extra + qbytes + book + ivf.nlist * 48 + n * (ivf.code_size + ID_BYTES)
    hnsw = faiss.downcast_index(inner)
    if isinstance(hnsw, faiss.IndexHNSW):
        # level 0 has 2M links, upper levels ~10% more (faiss's bundled stub lacks HNSW.nb_neighbors)
        links = 2 * hnsw.hnsw.nb_neighbors(0) * 4 * 1.1  # type: ignore[attr-defined]
        return int(extra + n * (faiss.downcast_index(hnsw.storage).sa_code_size() + links + 12))
    return extra + n * inner.sa_code_size()


def _ivf_pq_code(d: int, per_vector: float, rows: int) -> tuple[int, int] | None:
    """(m, nbits) of the largest PQ code within `per_vector` bytes: m divides D, 4-8 bits per sub-vector (the
    codebook's 2^nbits centroids need 30 training rows each); 8 bits preferred at equal size."""
    best = None
    for m in range(1, d + 1):
        if d % m:
            continue
        for nbits in range(8, 3, -1):
            if math.ceil(m * nbits / 8) > per_vector or MIN_PER_CENTROID << nbits > rows:
                continue
            key = (m * nbits, nbits)
            if best is None or key > best[0]:
                best = (key, (m, nbits))
            break
    return best[1] if best else None


def choose_index(n: int, d: int, budget: int, block: int | None = None) -> Plan:
    """The index for n x d float vectors within `budget` bytes (see the module docstring)."""
    if n < 1:
        raise InputError("no vectors to index")
    fits = f"fits the {format_size(budget)} budget"
    flat = n * d * 4
    if flat <= budget and n <= FLAT_MAX_ROWS:
        why = f"{n} x {d} float32 vectors ({format_size(flat)}) {fits} and {n} <= {FLAT_MAX_ROWS} rows: exact search"
        return Plan("Flat", why, 0, flat, False)
    hnsw = estimate_bytes(faiss.index_factory(d, "HNSW32"), n)
    if hnsw <= budget and n <= HNSW_MAX_ROWS:
        why = f"the vectors with a 32-link graph ({format_size(hnsw)}) {fits}: HNSW, tuned efSearch"
        return Plan("HNSW32", why, 0, hnsw, False)
    nlist = default_nlist(n, budget, d, block)
    q = "_HNSW32" if nlist >= 1 << 14 else ""  # a graph finds the nearest of many centroids fast
    rows = train_rows(n, d, budget, nlist, block=block)
    if n < IVF_FLAT_MAX_ROWS:
        fac = f"IVF{nlist}{q},Flat"
        size = estimate_bytes(faiss.index_factory(d, fac), n)
        if size <= budget:
            why = f"{n} < 10^6 rows and {nlist} inverted lists of whole vectors ({format_size(size)}) {fits}"
            return Plan(fac, why + f"; trained on {rows} rows", rows, size, False)
    fixed = estimate_bytes(faiss.index_factory(d, f"IVF{nlist}{q},PQ1x8"), 0)
    per_vector = (budget - fixed) / n - ID_BYTES
    code = _ivf_pq_code(d, per_vector, max(sample_cap(n, budget, d, block), MIN_PER_CENTROID << 8))
    if code is not None:
        m, nbits = code
        fac = f"IVF{nlist}{q},PQ{m}x{nbits}"
        rows = train_rows(n, d, budget, nlist, nbits, block)
        size = estimate_bytes(faiss.index_factory(d, fac), n)
        why = (
            f"whole vectors exceed the {format_size(budget)} budget; the largest PQ code that fits is {m} x {nbits} "
            f"bits ({math.ceil(m * nbits / 8)} bytes per vector, {format_size(size)} with {nlist} lists)"
        )
        return Plan(fac, why + f"; trained on {rows} rows", rows, size, False)
    # not even a 1-byte code per row fits: keep a useful code and put its inverted lists on disk
    m = max(x for x in range(1, min(64, max(1, d // 2)) + 1) if d % x == 0)
    fac = f"IVF{nlist}{q},PQ{m}x8"
    rows = train_rows(n, d, budget, nlist, 8, block)
    size = estimate_bytes(faiss.index_factory(d, fac), n)
    why = (
        f"no code of {n} rows fits the {format_size(budget)} budget: PQ{m} codes ({format_size(size)}) in inverted "
        f"lists merged on disk and memory-mapped; trained on {rows} rows"
    )
    return Plan(fac, why, rows, size, True)


def plan_for_factory(factory: str, n: int, d: int, budget: int, block: int | None = None) -> Plan:
    """A Plan for a factory string the user gave; its lists go to disk when the index exceeds the budget."""
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = re.split(r"(?:Error|failed): ", str(e).strip().splitlines()[-1])[-1][:200]
        raise InputError(
            f"--factory {factory!r}: faiss cannot build it for {d}-D vectors ({first}); give a faiss.index_factory "
            "string such as 'IVF1024,PQ32' or 'HNSW32', or leave --factory out to choose one"
        ) from None
    size = estimate_bytes(index, n)
    ivf = faiss.try_extract_index_ivf(index)
    nlist = ivf.nlist if ivf is not None else 1
    nbits = 0
    inner = faiss.downcast_index(ivf) if ivf is not None else None
    if inner is not None and hasattr(inner, "pq"):
        nbits = int(inner.pq.nbits)
    rows = train_rows(n, d, budget, nlist, nbits, block) if not index.is_trained else 0
    if not index.is_trained and rows == 0:
        rows = min(n, max(sample_cap(n, budget, d, block), 1000))  # e.g. a PCA or an SQ: any sample trains it
    ondisk = size > budget and ivf is not None
    why = f"given by --factory ({format_size(size)} estimated"
    why += "; its inverted lists exceed the budget: merged on disk)" if ondisk else ")"
    return Plan(factory, why, rows, size, ondisk)
