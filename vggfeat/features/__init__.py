"""The paper's image descriptors (Appendix B) and the on-disk feature store."""
