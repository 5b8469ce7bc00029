"""Classification error on a validation set by the paper's testing protocols (Sect. 3.2, Tables 3-7)."""
from .protocols import PROTOCOLS, dense_posterior, evaluate_nets, multicrop_posterior, topk_errors

__all__ = ["PROTOCOLS", "dense_posterior", "evaluate_nets", "multicrop_posterior", "topk_errors"]
