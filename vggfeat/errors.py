"""The one base of every error a user can cause (bad input, missing file, wrong settings).

The CLI turns exactly these into one red line and exit code 1; anything else is a bug and keeps its
traceback. Each domain error also derives from the builtin it replaced (ValueError, ...) so Python callers
that caught those keep working.
"""

from __future__ import annotations


class VggfeatError(Exception):
    """An error caused by the user's input or environment; its message says what is wrong and what to do."""


class InputError(VggfeatError, ValueError):
    """A bad argument or setting (unknown choice, empty input, mismatched shapes) that the user can fix."""


class DatasetError(VggfeatError, ValueError):
    """A dataset tree, image folder or list file that cannot be used; the message names the file and line at fault
    (raised by vggfeat.data.folder and the benchmark readers, which re-export it from vggfeat.benchmarks.base)."""


class LayerError(InputError):
    """A --layer that the net does not have; the message lists the names it does have."""


class WeightsError(VggfeatError, ValueError):
    """A weight file or name that cannot be read or does not fit the net (raised by vggfeat.models)."""
