"""Initialisation (Sect. 3.1): random normal init, Glorot init, and deeper nets initialised from net A.

The paper samples weights from a zero-mean normal with "10^-2 variance"; following the AlexNet/Caffe
convention it builds on, vggfeat reads that as std 0.01 (std 0.1 explodes the activations of a deep net).
Biases start at zero. Glorot init (which the authors later found to work without pre-training) is offered.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from vggfeat.errors import WeightsError

INIT_METHODS = ("normal", "glorot")
# Sect. 3.1: the first four conv layers and the three FC layers of a deeper net come from net A.
INIT_FROM_A_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")


def init_weights(
    model: nn.Module, method: str = "normal", std: float = 0.01, generator: torch.Generator | None = None
) -> nn.Module:
    """Initialise every conv (the FC layers are convs too) in place; biases to zero."""
    if method not in INIT_METHODS:
        raise ValueError(f"unknown init method {method!r}; valid: {', '.join(INIT_METHODS)}")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if module.weight.is_meta:
                continue
            if method == "normal":
                nn.init.normal_(module.weight, 0.0, std, generator=generator)
            else:  # Glorot & Bengio 2010, uniform variant
                nn.init.xavier_uniform_(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def init_from_net_a(
    model: nn.Module, net_a: nn.Module | Mapping[str, torch.Tensor], layers: tuple[str, ...] = INIT_FROM_A_LAYERS
) -> list[str]:
    """Copy the paper's seven layers from a trained net A into `model`; return the keys copied.

    The other layers keep their fresh initialisation. Shapes must agree (same width and fc size).
    """
    source = net_a.state_dict() if isinstance(net_a, nn.Module) else dict(net_a)
    target = model.state_dict()
    copied: list[str] = []
    problems: list[str] = []
    for layer in layers:
        for param in ("weight", "bias"):
            key = f"{layer}.{param}"
            if key not in source or key not in target:
                problems.append(f"{key}: missing in {'net A' if key not in source else 'the target net'}")
            elif source[key].shape != target[key].shape:
                problems.append(f"{key}: net A has {tuple(source[key].shape)}, target has {tuple(target[key].shape)}")
            else:
                copied.append(key)
    if problems:
        raise WeightsError("cannot initialise from net A: " + "; ".join(problems))
    with torch.no_grad():
        for key in copied:
            target[key].copy_(source[key])
    return copied
