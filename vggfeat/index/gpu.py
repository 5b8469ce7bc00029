"""faiss on GPUs when it sees them: k-means of the coarse quantizer, adding rows and searching, sharded over every
GPU (IndexShards). The CPU is the tested default; every GPU step falls back to it where faiss lacks the index."""

from __future__ import annotations

import logging

import faiss
import numpy as np

from vggfeat.errors import InputError

log = logging.getLogger(__name__)


def faiss_gpus(device: str) -> list[int]:
    """The GPU ids faiss should use for `device` (auto, cpu, cuda, cuda:N); auto means every GPU faiss sees."""
    seen = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "cpu":
        return []
    if device == "auto":
        return list(range(seen))
    if device == "cuda" or device.startswith("cuda:"):
        if not seen:
            raise InputError(f"--device {device}: faiss sees no GPU (a CPU-only faiss wheel?); use --device cpu")
        if device == "cuda":
            return list(range(seen))
        gpu = int(device.split(":", 1)[1])
        if not 0 <= gpu < seen:
            raise InputError(f"--device {device}: faiss sees GPUs 0..{seen - 1}; choose one of those")
        return [gpu]
    raise InputError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N")


def to_gpus(index: faiss.Index, gpus: list[int]) -> faiss.Index:
    """`index` on the given GPUs, rows sharded over several (IndexShards); the CPU index where faiss cannot."""
    if not gpus:
        return index
    try:
        if len(gpus) == 1:
            return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpus[0], index)
        co = faiss.GpuMultipleClonerOptions()
        co.shard = True  # each GPU holds a share of the rows: memory adds up across GPUs
        return faiss.index_cpu_to_gpus_list(index, co=co, gpus=gpus)
    except (RuntimeError, AttributeError) as e:  # e.g. HNSW, or a PQ size the GPU code lacks
        log.warning("faiss cannot run this index on the GPU (%s); staying on the CPU", str(e).splitlines()[0][:120])
        return index


def to_cpu(index: faiss.Index) -> faiss.Index:
    gpu_types = tuple(getattr(faiss, t) for t in ("GpuIndex", "IndexReplicas", "IndexShards") if hasattr(faiss, t))
    return faiss.index_gpu_to_cpu(index) if gpu_types and isinstance(index, gpu_types) else index


def train(index: faiss.Index, x: np.ndarray, gpus: list[int]) -> None:
    """Train `index` (on the CPU) on sample x, running the coarse k-means on the GPUs when there are any."""
    ivf = faiss.try_extract_index_ivf(index)
    if gpus and ivf is not None:
        try:
            flat = faiss.IndexFlatL2(ivf.d)
            ivf.clustering_index = (
                to_gpus(flat, gpus)
                if len(gpus) > 1
                else faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpus[0], flat)
            )
        except RuntimeError as e:
            log.warning("k-means stays on the CPU (%s)", str(e).splitlines()[0][:120])
    index.train(x)
