"""Transfer probes on stored descriptors (Sect. 4): batched linear SVMs, faiss kNN, cost selection, reports.

The estimator loads on first use (it imports scikit-learn), so importing a light module of this package does
not pay for it. The benchmarks' metrics are `vggfeat.metrics` (numpy only), below both probes and benchmarks."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"LinearSVMProbe": "vggfeat.probes.svm", "fit_linear_svms": "vggfeat.probes.svm"}

__all__ = ["LinearSVMProbe", "fit_linear_svms"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vggfeat.probes' has no attribute {name!r}")
