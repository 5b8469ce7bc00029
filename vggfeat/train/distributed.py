"""Training's data parallelism (Sect. 3.1) lives in vggfeat.utils.distributed, shared with extraction;
these names stay importable from here."""

from vggfeat.utils.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown

__all__ = ["DistInfo", "all_reduce_sum", "barrier", "init_distributed", "shutdown"]
