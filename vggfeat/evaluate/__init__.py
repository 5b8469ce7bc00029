"""Classification error on a validation set by the paper's testing protocols (Sect. 3.2, Tables 3-7)."""

from .labels import EvaluateError, read_class_file, resolve_classes
from .protocols import PROTOCOLS, dense_posterior, evaluate_nets, multicrop_posterior, topk_errors

__all__ = [
    "PROTOCOLS",
    "EvaluateError",
    "dense_posterior",
    "evaluate_nets",
    "multicrop_posterior",
    "read_class_file",
    "resolve_classes",
    "topk_errors",
]
