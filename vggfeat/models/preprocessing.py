"""What a set of weights expects of its input pixels: channel order, value range, mean and std.

Sect. 2.1: the paper's only preprocessing is subtracting the training set's mean RGB. Released weights
differ: the Caffe models take BGR 0-255 minus a mean pixel, torchvision's take RGB
in [0, 1] normalised by mean and std. A weight file carries its convention; extraction applies it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocessing:
    channel_order: str = "RGB"  # order of the channels the first conv expects: "RGB" or "BGR"
    value_range: float = 255.0  # pixels are scaled to [0, value_range] before the mean is subtracted
    mean: tuple[float, float, float] = (123.68, 116.779, 103.939)  # in channel_order, value_range units
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # divisor after mean subtraction, same units

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if not self.value_range > 0:
            raise ValueError(f"value_range must be positive, got {self.value_range!r}")
        for field in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, field))
            if len(values) != 3:
                raise ValueError(f"{field} needs 3 values (one per channel), got {values!r}")
            object.__setattr__(self, field, values)
        if not all(math.isfinite(v) for v in (*self.mean, *self.std, self.value_range)):
            raise ValueError(f"mean, std and value_range must be finite numbers, got {self.to_dict()!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std!r}")
        object.__setattr__(self, "value_range", float(self.value_range))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map RGB pixels in [0, 1], shape (B, 3, H, W), to the net's input convention."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if self.channel_order == "BGR":
            x = x.flip(1)
        # y = (x * range - mean) / std, folded into one multiply-add per channel
        scale = torch.tensor([self.value_range / s for s in self.std], dtype=x.dtype, device=x.device)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)], dtype=x.dtype, device=x.device)
        return torch.addcmul(shift.view(1, 3, 1, 1), x, scale.view(1, 3, 1, 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        unknown = set(data) - {"channel_order", "value_range", "mean", "std"}
        if unknown:
            raise ValueError(
                f"unknown preprocessing fields {sorted(unknown)}; valid: channel_order, value_range, mean, std"
            )
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


# Sect. 2.1: subtract the mean RGB of the ImageNet training set, pixels in 0-255.
PAPER = Preprocessing("RGB", 255.0, (123.68, 116.779, 103.939), (1.0, 1.0, 1.0))
# The authors' released Caffe models of nets D and E.
CAFFE = Preprocessing("BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
# torchvision's and timm's ImageNet weights.
TORCHVISION = Preprocessing("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TIMM = TORCHVISION

PRESETS: dict[str, Preprocessing] = {"paper": PAPER, "caffe": CAFFE, "torchvision": TORCHVISION, "timm": TIMM}


def resolve_preprocessing(value: Preprocessing | str | Mapping[str, Any]) -> Preprocessing:
    """A Preprocessing from itself, a preset name or a dict of its fields."""
    if isinstance(value, Preprocessing):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(f"unknown preprocessing preset {value!r}; valid: {', '.join(PRESETS)}")
        return PRESETS[value]
    return Preprocessing.from_dict(value)
