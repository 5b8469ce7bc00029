"""Transfer probes on stored descriptors (Sect. 4): batched linear SVMs, faiss kNN, the benchmarks' metrics.

The estimator loads on first use (it imports scikit-learn), so the benchmark modules can import
`vggfeat.probes.metrics` (numpy only) without it."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"LinearSVMProbe": "vggfeat.probes.svm", "fit_linear_svms": "vggfeat.probes.svm"}

__all__ = ["LinearSVMProbe", "fit_linear_svms", "metrics"]


def __getattr__(name: str) -> Any:
    if name == "metrics":
        return importlib.import_module("vggfeat.probes.metrics")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vggfeat.probes' has no attribute {name!r}")
