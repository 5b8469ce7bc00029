"""Keeping freed tensor memory in the process, so that the next batch reuses it instead of faulting it in again.

glibc's malloc serves every block over 32 MB with a fresh mmap and returns it to the kernel on free. A VGG's
activation maps at Q=512 are 50-90 MB each, so each forward on the CPU maps, page-faults (the kernel zeroes every
4 KB page) and unmaps hundreds of megabytes: on the 2-core development machine that was 15% of a full-size VGG-16
forward (docs/benchmarks.md). With mmap off and trimming off, freed blocks stay in the heap and the next batch's
maps land on pages already resident. The price: the process keeps its peak working set (peak RSS +16% in that
measurement) until it exits. Nothing changes off glibc (macOS, musl), where this is a no-op.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# largest value mallopt takes (an int): free memory at the top of the heap is only trimmed past 2 GB
NEVER_TRIM = 2**31 - 1

_state = {"kept": False}


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (process-wide, from now on); True when in effect."""
    if _state["kept"]:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; large blocks then come from the heap (brk), which is never trimmed
    _state["kept"] = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
    log.debug("freed memory kept in the process: %s", _state["kept"])
    return _state["kept"]
