"""Memory sizes for `--max-memory`: '500MB', '4GB', '64MiB', a plain number of bytes; and the default budget
(what fits comfortably in this machine's RAM). Units are powers of 1024, as autofaiss reads them."""

from __future__ import annotations

import os
import re

from vggfeat.errors import InputError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of a size like '4GB', '500MB', '64MiB', '1.5G' or '1000000'."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"--max-memory {text!r}: not a size; write it like 500MB, 4GB or 64MiB (powers of 1024)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def default_budget() -> int:
    """Half of the memory available now: room for the OS, the page cache and the searches that follow."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def block_rows(budget: int, d: int) -> int:
    """Rows read and added at a time: the budget's worth, at least 16 MiB's, between 1024 and 2^16 rows."""
    return max(1024, min(1 << 16, max(budget, 16 << 20) // (4 * d)))
