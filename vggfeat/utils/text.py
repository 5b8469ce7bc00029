"""Values read from files a user or a dataset gives: a class index parsed only from plain digits, and any value
shortened for the one-line error that names it."""

from __future__ import annotations

import reprlib
from typing import Any

MAX_INDEX_DIGITS = 18  # far beyond any class count or row index; int() refuses text of thousands of digits
MAX_SHOWN = 100  # characters of a value shown in an error message


def decimal_int(text: str) -> int | None:
    """The non-negative integer `text` writes in ASCII digits ("7", "012"), else None. str.isdigit() alone also
    passes "²" and other digits that int() refuses, and a run of thousands of digits that int() will not convert."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_INDEX_DIGITS:
        return int(text)
    return None


class _Short(reprlib.Repr):
    """reprlib's repr, which shows a few items of each collection, a few levels deep, and the ends of long strings:
    its work is bounded whatever the value's size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 60
        self.maxlevel = 3

    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int of thousands of digits raises ValueError (Python's int-to-text limit)
        return super().repr_int(x, level) if x.bit_length() <= 256 else f"<an integer of {x.bit_length()} bits>"


_SHORT = _Short()


def shorten(value: Any) -> str:
    """repr(value) in at most MAX_SHOWN characters ('abc...xyz', [1, 2, 3, ...]), without building the whole repr
    first: a value read from a file goes into an error message at the size of a line, however large it is."""
    text = _SHORT.repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
