"""Image geometry shared by training, evaluation and extraction (Sect. 3.1-3.2)."""
from __future__ import annotations


def isotropic_size(height: int, width: int, smallest_side: int) -> tuple[int, int]:
    """(H, W) after an isotropic rescale that makes the smallest side exactly `smallest_side` (S or Q)."""
    if height <= 0 or width <= 0 or smallest_side <= 0:
        raise ValueError(f"sizes must be positive, got {height}x{width} -> {smallest_side}")
    if height <= width:
        return smallest_side, max(smallest_side, round(width * smallest_side / height))
    return max(smallest_side, round(height * smallest_side / width)), smallest_side


# ---- Sect. 3.1 training augmentation, per sample, deterministic from (seed, epoch, index) ----

def sample_rng(seed: int, epoch: int, index: int):
    """The generator of one sample's augmentation: the same triple draws the same crop, flip and colour
    shift whatever the worker, process count or restart (exact resume)."""
    import numpy as np

    return np.random.default_rng([seed, epoch, index])


def train_crop(img, rng, *, scale: tuple[int, int], crop: int, flip: bool = True):
    """Isotropic rescale to S (fixed, or uniform in [Smin, Smax]), one random crop x crop, random flip.

    `img` is a PIL RGB image; returns a (crop, crop, 3) uint8 array.
    """
    import numpy as np
    from PIL import Image

    s = int(rng.integers(scale[0], scale[1] + 1))
    h, w = isotropic_size(img.height, img.width, s)
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    # Resample only the crop's window of the rescaled image (PIL's box): the same pixels as rescaling
    # the whole image then cropping, at a fraction of the cost.
    fy, fx = img.height / h, img.width / w
    box = (left * fx, top * fy, (left + crop) * fx, (top + crop) * fy)
    arr = np.array(img.resize((crop, crop), Image.BILINEAR, box=box, reducing_gap=None), dtype=np.uint8)
    if flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def center_crop(img, *, size: int, crop: int):
    """Isotropic rescale to `size`, the central crop x crop (validation during training)."""
    import numpy as np
    from PIL import Image

    h, w = isotropic_size(img.height, img.width, size)
    arr = np.asarray(img.resize((w, h), Image.BILINEAR, reducing_gap=None), dtype=np.uint8)
    top, left = (h - crop) // 2, (w - crop) // 2
    return np.ascontiguousarray(arr[top:top + crop, left:left + crop])


def normalize_batch(x, mean, eigval=None, eigvec=None, alpha=None):
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
