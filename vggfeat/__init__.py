"""vggfeat: the very deep ConvNets of Simonyan & Zisserman (ICLR 2015) - training, dense multi-scale
descriptors and linear probes. Heavy modules load on first use, so `vggfeat --help` stays instant."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from vggfeat.errors import VggfeatError  # noqa: E402  (light: the base of every user-facing error)

# public name -> module that defines it
_LAZY = {
    "create_model": "vggfeat.models",
    "list_models": "vggfeat.models",
    "load_weights": "vggfeat.models",
    "load_model": "vggfeat.models",
    "save_weights": "vggfeat.models",
    "init_from_net_a": "vggfeat.models",
    "Preprocessing": "vggfeat.models",
    "extract_features": "vggfeat.features.extract",
    "extract_to_store": "vggfeat.features.extract",
    "load_store": "vggfeat.features.store",
    "probe_benchmark": "vggfeat.probes.benchmark",
    "LinearProbe": "vggfeat.probes.benchmark",
    "KnnProbe": "vggfeat.probes.benchmark",
    "LowShotProbe": "vggfeat.probes.benchmark",
}

__all__ = ["__version__", "VggfeatError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vggfeat' has no attribute {name!r}")
