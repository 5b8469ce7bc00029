"""A net's inference copy: what extraction and evaluation run, so that the caller's net is never changed.

The copy has its own module and parameter objects, in eval mode and without gradients; its tensors share the
caller's memory until the copy is moved to another device, dtype or memory layout, which then changes the copy
only. Runtime transforms (the CPU kernels of models.fastconv) are applied to such a copy, never to a model.
"""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def inference_copy(model: M) -> M:
    """`model` copied for inference (eval mode, no gradients), its parameters and buffers new tensor objects over
    the same memory: nothing is allocated until the copy is converted, and then only for the copy."""
    # deepcopy takes tensors found in its memo as they are: every parameter and buffer gets its new object once,
    # so tied weights stay tied in the copy, and everything else (submodules, hooks, settings) is copied
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = b.detach()
    return copy.deepcopy(model, memo).eval()
