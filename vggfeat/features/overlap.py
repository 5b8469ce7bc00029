"""Writes off the compute path: a finished chunk goes to disk on a background thread while the next one
computes (numpy releases the GIL while it writes), in order, at most `depth` behind."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class BackgroundWriter:
    """`submit(fn, *args)` runs fn on one writer thread, in submission order. A failed write is raised in the
    caller at its next submit or on leaving the `with` block; leaving waits for every write submitted before
    (an interrupted run keeps the chunks it finished)."""

    def __init__(self, depth: int = 2) -> None:
        self.jobs: queue.Queue = queue.Queue(maxsize=depth)  # bounded: memory stays flat if the disk is slow
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="vggfeat-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        self.thread.start()
        return self

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is None:  # after a failure later writes are dropped: the run is stopping
                try:
                    job[0](*job[1])
                except BaseException as e:  # noqa: BLE001 (handed to the caller's thread)
                    self.error = e

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        self.jobs.put((fn, args))

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.jobs.put(None)
        self.thread.join()
        if exc_type is None:
            self._raise()
