"""The descriptor protocol of Appendix B as data and pure functions.

Per net and scale Q: rescale isotropically so the smallest side is Q, apply the net densely, average-pool
the layer's map, average with the flipped image. Then aggregate over scales (mean for VOC, stack for
Caltech), stack the nets (D & E late fusion) and L2-normalise each final descriptor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from vggfeat.data.transforms import isotropic_size
from vggfeat.errors import InputError

AGGREGATES = ("mean", "stack")
# Late fusion of nets (D & E): L2-normalise each net's descriptor before stacking ("per-net"), or only the
# stacked whole ("whole"). The paper does not say; per-net lets each net weigh the same, whatever its scale.
FUSION_L2 = ("per-net", "whole")
FUSION_L2_HELP = {
    "per-net": "per-net L2 before stacking, then L2 of the whole",
    "whole": "L2 of the stacked descriptor only",
}


@dataclass(frozen=True)
class Protocol:
    layer: str = "fc7"  # the VGG layer pooled (Appendix B: fc7, after its ReLU)
    scales: tuple[int, ...] = (256, 384, 512)  # Q values: smallest image side at each scale
    flip: bool = True  # average with the horizontally flipped image
    aggregate: str = "mean"  # over scales: "mean" (VOC) or "stack" (Caltech)
    l2: bool = True  # L2-normalise each final descriptor
    l2_parts: bool = False  # also L2-normalise per scale and per net before aggregating (paper silent)
    snap: int = 1  # round the long side to a multiple of this (1: the exact isotropic rescale)
    fast_decode: bool = False  # JPEGs decoded at 1/2..1/8 size first (PIL draft): faster, not the exact rescale

    def __post_init__(self) -> None:
        scales = tuple(int(q) for q in self.scales)
        if not scales or min(scales) < 1:
            raise InputError(f"scales must be positive integers, got {self.scales!r}")
        if len(set(scales)) != len(scales):
            raise InputError(f"scales must be distinct, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)
        if self.aggregate not in AGGREGATES:
            raise InputError(f"unknown aggregate {self.aggregate!r}; valid: {', '.join(AGGREGATES)}")
        if self.snap < 1:
            raise InputError(f"snap must be >= 1, got {self.snap}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Protocol:
        """The protocol a store manifest or index.json records; fields it lacks (older files) keep defaults."""
        names = {f.name for f in fields(cls)}
        known: dict[str, Any] = {
            k: (tuple(v) if k == "scales" else v) for k, v in d.items() if k in names and v is not None
        }
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    def net_dim(self, dim: int) -> int:
        return dim * (len(self.scales) if self.aggregate == "stack" else 1)


def scaled_size(height: int, width: int, q: int, snap: int = 1) -> tuple[int, int]:
    """(H, W) at scale Q: smallest side Q; with snap > 1 the long side is rounded to a multiple of snap."""
    h, w = isotropic_size(height, width, q)
    if snap > 1:
        if h >= w:
            h = max(q, snap * round(h / snap))
        else:
            w = max(q, snap * round(w / snap))
    return h, w


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Each vector along `axis` divided by its own norm (per sample, never per batch)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def combine(parts: Sequence[np.ndarray], protocol: Protocol) -> np.ndarray:
    """Final descriptors from flip-averaged pooled vectors.

    parts: one array per net, shaped (N, S, D_net) - N images, S scales. Returns (N, D) float32.
    """
    per_net = []
    for p in parts:
        p = p.astype(np.float32, copy=False)
        if protocol.l2_parts:
            p = l2_normalize(p)
        if protocol.aggregate == "mean":
            d = p.mean(axis=1)  # (N, D_net)
        else:
            d = p.reshape(p.shape[0], -1)  # (N, S * D_net): scale-major stacking
        per_net.append(d)
    return fuse_nets(per_net, "per-net" if protocol.l2_parts else "whole", l2=protocol.l2)


def fuse_nets(per_net: Sequence[np.ndarray], fusion_l2: str, *, l2: bool = True) -> np.ndarray:
    """The late fusion of Appendix B (D & E), the one definition every command uses: each net's (N, D_net)
    descriptor L2-normalised first when `fusion_l2` is "per-net" (and there are several), stacked, then the
    whole L2-normalised when `l2`. Returns (N, sum of D_net) float32."""
    if fusion_l2 not in FUSION_L2:
        raise InputError(f"unknown fusion_l2 {fusion_l2!r}; valid: {', '.join(FUSION_L2)}")
    blocks = [np.asarray(p, dtype=np.float32) for p in per_net]
    if fusion_l2 == "per-net" and len(blocks) > 1:
        blocks = [l2_normalize(b) for b in blocks]
    out = np.concatenate(blocks, axis=1)  # (N, sum of net dims)
    return (l2_normalize(out) if l2 else out).astype(np.float32, copy=False)
