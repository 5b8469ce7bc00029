"""Reproducing the paper's transfer tables (Table 11, Table 12) in one command: `vggfeat reproduce`."""

from vggfeat.reproduce.tables import Nets, ReproduceOptions, reproduce_table

__all__ = ["Nets", "ReproduceOptions", "reproduce_table"]
