"""This process's rank under torchrun, read from the environment torchrun sets (RANK, WORLD_SIZE) without
importing torch, so the CLI can say things once: rank 0 prints an error line or a run's summary, the other
processes stay quiet (vggfeat.utils.distributed joins the process group itself)."""

from __future__ import annotations

import os


def launched_rank() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) when torchrun did not start it."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:  # not torchrun's: a value we cannot read is not a rank
        return 0, 1


def is_main_process() -> bool:
    """True for rank 0 and for a process torchrun did not start: the one that speaks for the run."""
    rank, world = launched_rank()
    return world <= 1 or rank == 0
