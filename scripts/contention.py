"""Busy processes beside a benchmark: another user's jobs on the same cores (`--contend K` of the bench
scripts). Each side of a comparison runs in a fresh process of its own while they spin."""

from __future__ import annotations

import subprocess
import sys


class Contenders:
    """K busy processes for the duration of a `with` block (started and stopped by their own pids)."""

    def __init__(self, k: int) -> None:
        self.k, self.procs = k, []

    def __enter__(self) -> Contenders:
        code = "while True: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.k)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
