"""Choosing a device: `auto` is CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from vggfeat.errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(InputError):
    """A --device that is not a device name, or a GPU asked for on a machine where torch sees none."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch.device; a DeviceError (a ValueError) names what is wrong."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise DeviceError(f"unknown device {name!r}; valid: {', '.join(DEVICE_CHOICES)}, cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device(name)
