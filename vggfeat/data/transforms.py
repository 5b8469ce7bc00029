"""Image geometry shared by training, evaluation and extraction (Sect. 3.1-3.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


def isotropic_size(height: int, width: int, smallest_side: int) -> tuple[int, int]:
    """(H, W) after an isotropic rescale that makes the smallest side exactly `smallest_side` (S or Q)."""
    if height <= 0 or width <= 0 or smallest_side <= 0:
        raise ValueError(f"sizes must be positive, got {height}x{width} -> {smallest_side}")
    if height <= width:
        return smallest_side, max(smallest_side, round(width * smallest_side / height))
    return max(smallest_side, round(height * smallest_side / width)), smallest_side


# ---- Sect. 3.1 training augmentation, per sample, deterministic from (seed, epoch, index) ----


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation: the same triple draws the same crop, flip and colour
    shift whatever the worker, process count or restart (exact resume)."""
    import numpy as np

    return np.random.default_rng([seed, epoch, index])


def _window(height: int, width: int, size: int, crop: int) -> tuple[int, int]:
    """(h, w) of the source window that a crop x crop crop covers once the image is rescaled to `size`,
    in whole source pixels (the scale is then exact up to half a pixel over the window)."""
    rh, rw = isotropic_size(height, width, size)
    return (min(height, max(1, round(crop * height / rh))), min(width, max(1, round(crop * width / rw))))


def _resize_window(img: torch.Tensor, top: int, left: int, window: tuple[int, int], crop: int) -> torch.Tensor:
    """The window of a (3, H, W) uint8 image resized to (3, crop, crop) uint8 - antialiased bilinear
    (PIL's filter; torch's vectorised uint8 kernel) - so only pixels inside the crop are ever resampled."""
    import torch
    import torch.nn.functional as F

    win = img[:, top : top + window[0], left : left + window[1]].unsqueeze(0)
    # channels_last in -> the vectorised uint8 kernel, and channels_last out, so the caller's (H, W, 3)
    # view is free (a strided window would take the generic kernel and a transposing copy: 2.5x slower)
    win = win.contiguous(memory_format=torch.channels_last)
    return F.interpolate(win, size=(crop, crop), mode="bilinear", antialias=True, align_corners=False)[0]


def train_crop(
    img: torch.Tensor, rng: np.random.Generator, *, scale: tuple[int, int], crop: int, flip: bool = True
) -> torch.Tensor:
    """Isotropic rescale to S (fixed, or uniform in [Smin, Smax]), one random crop x crop, random flip.

    `img` is a (3, H, W) uint8 tensor; returns a (crop, crop, 3) uint8 tensor. Rather than rescaling the
    whole image and cropping, the window the crop covers is cut from the source at a uniformly random
    whole-pixel position and resampled to crop x crop: the same augmentation, a fraction of the cost.
    """
    s = int(rng.integers(scale[0], scale[1] + 1))
    _, h, w = img.shape
    if s < crop:
        raise ValueError(f"S={s} is smaller than the {crop} px crop")
    wh, ww = _window(h, w, s, crop)
    top, left = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
    out = _resize_window(img, top, left, (wh, ww), crop)
    if flip and rng.random() < 0.5:
        out = out.flip(-1)
    return out.permute(1, 2, 0).contiguous()


def center_crop(img: torch.Tensor, *, size: int, crop: int) -> torch.Tensor:
    """Isotropic rescale to `size`, the central crop x crop (validation during training): (3, H, W) uint8
    tensor in, (crop, crop, 3) uint8 tensor out, resampling only the central window as `train_crop` does."""
    _, h, w = img.shape
    wh, ww = _window(h, w, size, crop)
    return _resize_window(img, (h - wh) // 2, (w - ww) // 2, (wh, ww), crop).permute(1, 2, 0).contiguous()


def normalize_batch(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    eigval: Sequence[float] | torch.Tensor | None = None,
    eigvec: Sequence[Sequence[float]] | torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 (B, H, W, 3) or (B, 3, H, W) crops -> float (B, 3, H, W): minus mean RGB (0-255 units), plus
    the PCA colour shift eigvec @ (alpha * eigval) per image (Krizhevsky et al. 2012, Sect. 3.1)."""
    import torch

    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    x = x.float()
    shift = -torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3)
    if alpha is not None:
        vec = torch.as_tensor(eigvec, dtype=x.dtype, device=x.device)  # (3, 3), columns are eigenvectors
        val = torch.as_tensor(eigval, dtype=x.dtype, device=x.device)
        shift = shift + (alpha.to(x) * val) @ vec.T  # (B, 3)
    return x + shift.view(-1, 3, 1, 1)
