"""Transfer probes on stored descriptors (Sect. 4): batched linear SVMs, faiss kNN, the benchmarks' metrics."""

from vggfeat.probes import metrics
from vggfeat.probes.svm import LinearSVMProbe, fit_linear_svms

__all__ = ["LinearSVMProbe", "fit_linear_svms", "metrics"]
