"""What the fields of an index folder's index.json must be, checked when the folder is loaded: a field that a
command reads and finds missing or of another kind is one line naming the file, not a KeyError or TypeError deep
inside `index info` or `index search`. Folders written by older versions lack whole sections (`measured`,
`features`): a section is checked when present, and then every field it must have is there."""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from typing import Any

from vggfeat.errors import InputError
from vggfeat.features.protocol import Protocol

TEXT, FLAG, WHOLE, NUMBER = "a string", "true or false", "an integer", "a number"
OBJECT, LIST = "an object", "a list"
PRECISION = "float32 or bfloat16"  # what the store's rows were computed in (Runtime.effective_precision)
KINDS: dict[str, Callable[[Any], bool]] = {
    TEXT: lambda v: isinstance(v, str),
    FLAG: lambda v: isinstance(v, bool),
    WHOLE: lambda v: type(v) is int,
    NUMBER: lambda v: type(v) in (int, float) and math.isfinite(v),
    OBJECT: lambda v: isinstance(v, dict),
    LIST: lambda v: isinstance(v, list),
    PRECISION: lambda v: v in ("float32", "bfloat16"),
}

# each section: {field: (kind, required, may be null)}
TOP = {
    "kind": (TEXT, False, False),
    "metric": (TEXT, False, False),
    "dim": (WHOLE, False, False),
    "ntotal": (WHOLE, False, False),
    "source": (TEXT, False, False),
    "factory": (TEXT, False, False),
    "reason": (TEXT, False, False),
    "search_params": (TEXT, False, True),
    "ondisk": (FLAG, False, False),
    "index_sha256": (TEXT, False, False),
    "ivfdata_bytes": (WHOLE, False, False),
    "ivfdata_sha256": (TEXT, False, False),
    "measured": (OBJECT, False, False),
    "build": (OBJECT, False, True),
    "features": (OBJECT, False, True),
}
# what `index info` prints (cli.index.summary): all of it once recall was measured, plus recall@<recall_k>
REPORTED = {
    "factory": (TEXT, True, False),
    "reason": (TEXT, True, False),
    "search_params": (TEXT, True, True),
    "build": (OBJECT, True, False),
}
MEASURED = {
    "recall_k": (WHOLE, True, False),
    "queries": (WHOLE, True, False),
    "ms_per_query": (NUMBER, True, False),
    "max_query_ms": (NUMBER, True, False),
    "note": (TEXT, False, True),
}
BUILD = {"seconds": (NUMBER, True, False), "peak_rss": (WHOLE, True, False), "max_memory": (WHOLE, True, False)}
# a store's protocol and nets, which describe query images as its rows were; any field may be null (not recorded)
FEATURES = {
    "models": (LIST, False, True),
    "layer": (TEXT, False, True),
    "scales": (LIST, False, True),
    "flip": (FLAG, False, True),
    "aggregate": (TEXT, False, True),
    "l2": (FLAG, False, True),
    "l2_parts": (FLAG, False, True),
    "snap": (WHOLE, False, True),
    "fast_decode": (FLAG, False, True),
    "seed": (WHOLE, False, True),
    "gpu_decode": (FLAG, False, True),
    "precision": (PRECISION, False, True),
}
MODEL = {"model": (TEXT, True, False), "weights": (TEXT, False, True), "weights_sha256": (TEXT, False, True)}


def _fields(obj: dict[str, Any], spec: dict[str, tuple[str, bool, bool]], where: str) -> None:
    """InputError ("'where' lacks X", "'where.X' is V, not KIND") for the first field of `obj`, the section
    `where` ("" at the top), that is not what `spec` says."""
    for name, (kind, required, nullable) in spec.items():
        if name not in obj:
            if required:
                raise InputError(f"'{where}' lacks {name}" if where else f"has no {name!r}")
            continue
        value = obj[name]
        if not (value is None and nullable) and not KINDS[kind](value):
            raise InputError(f"'{where + '.' if where else ''}{name}' is {reprlib.repr(value)}, not {kind}")


def check_meta(meta: dict[str, Any]) -> None:
    """InputError naming the first field of index.json (`meta`, parsed) that a command could not use."""
    _fields(meta, TOP, "")
    if "measured" in meta:
        _fields(meta, REPORTED, "")
        measured = meta["measured"]
        _fields(measured, MEASURED, "measured")
        _fields(measured, {f"recall@{measured['recall_k']}": (NUMBER, True, False)}, "measured")
        _fields(meta["build"], BUILD, "build")
    features = meta.get("features") or {}
    _fields(features, FEATURES, "features")
    for i, model in enumerate(features.get("models") or []):
        if not isinstance(model, dict):
            raise InputError(f"'features.models[{i}]' is {reprlib.repr(model)}, not {OBJECT}")
        _fields(model, MODEL, f"features.models[{i}]")
    for q in features.get("scales") or []:
        if not KINDS[WHOLE](q):
            raise InputError(f"'features.scales' holds {reprlib.repr(q)}, not {WHOLE}")
    Protocol.from_dict(features)  # its own checks: positive distinct scales, a known aggregate, snap >= 1
