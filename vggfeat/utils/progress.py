"""The progress bars of the long loops (extraction, training, evaluation), made in one place.

On a terminal a tqdm bar redraws itself in place. Anywhere else (a log file, CI, `2>log`) each redraw would be
a carriage return plus a line per batch, so there the bar is a plain line when it starts, every
`LOG_INTERVAL_S` seconds, and when it ends. `--quiet` on the commands turns the bars off entirely.
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # seconds between two progress lines when stderr is not a terminal
LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress_bar(
    total: int | None, *, desc: str, unit: str = "it", initial: int = 0, leave: bool = True, file: IO[str] | None = None
) -> tqdm:
    """A tqdm bar on `file` (default: stderr): redrawn in place on a terminal, sparse whole lines elsewhere."""
    from tqdm import tqdm  # looked up at each call, so tests can stand in for it

    stream = file if file is not None else sys.stderr
    common: dict[str, Any] = dict(total=total, initial=initial, desc=desc, unit=unit)
    if _is_terminal(stream):
        return tqdm(**common, file=stream, leave=leave, dynamic_ncols=True, smoothing=0.1)
    # miniters=1 leaves the pace to the clock alone; the final line stays (leave) as the loop's record in the log
    return tqdm(
        **common,
        file=_Lines(stream),
        leave=True,
        mininterval=LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S,
        miniters=1,
        bar_format=LINE_FORMAT,
    )


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Lines:
    """A stream for tqdm that turns each in-place redraw ('\\r' + status + padding) into one whole line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        for part in text.replace("\n", "\r").split("\r"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str | None:
        return getattr(self.stream, "encoding", None)
