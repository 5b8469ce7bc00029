"""Transfer probes on stored descriptors (Sect. 4): batched linear SVMs, faiss kNN, low-shot SVMs.

`benchmark.probe_benchmark` is the one way a benchmark is probed (every command and the Python API): the
benchmark's splits, its Appendix B settings, the descriptors (features.py: a store, or nets extracted and
cached, fused per net), a probe over the splits (run.py, lowshot.py), the report (report.py). The estimator
loads on first use (it imports scikit-learn). The benchmarks' metrics are `vggfeat.metrics` (numpy only),
below both probes and benchmarks."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"LinearSVMProbe": "vggfeat.probes.svm", "fit_linear_svms": "vggfeat.probes.svm"}

__all__ = ["LinearSVMProbe", "fit_linear_svms"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vggfeat.probes' has no attribute {name!r}")
