"""Datasets, image decoding and the paper's image transforms."""
