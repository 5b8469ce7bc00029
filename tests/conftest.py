"""Shared fixtures: tiny nets (a width multiplier and a small fc) so the default run needs no GPU."""

from __future__ import annotations

import pytest
import torch

import vggfeat

# 1/16 of the paper's widths: 4, 8, 16, 32, 32 channels; fc6 spans 2x2 of pool5, so 64 px inputs work.
TINY = dict(width_mult=1 / 16, fc_dim=32, fc6_kernel=2, num_classes=10)


@pytest.fixture
def tiny_model():
    def make(name: str = "vgg_d", seed: int = 0, **overrides):
        return vggfeat.create_model(name, seed=seed, **{**TINY, **overrides})

    return make


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
