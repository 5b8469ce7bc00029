"""The training set's mean RGB (Sect. 2.1, the only preprocessing) and the eigen-decomposition of its
RGB pixel covariance (the PCA colour shift of Sect. 3.1), computed once and cached beside the data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vggfeat.utils.files import atomic_write_json

from .images import load_rgb

CACHE_NAME = "mean_rgb.json"


def pixel_stats(paths: Sequence[Path], *, max_images: int = 0, min_side: int = 256) -> dict:
    """mean (3,), eigval (3,) descending and eigvec (3x3, columns) of RGB pixels in 0-255 units.

    Images are decoded with their smallest side reduced to about `min_side` (JPEG draft) - the statistics
    of a rescaled image are those of the original to well within the colour shift's noise.
    """
    paths = list(paths)[:max_images] if max_images > 0 else list(paths)
    n, s1, s2 = 0, np.zeros(3), np.zeros((3, 3))
    for p in paths:
        px = np.asarray(load_rgb(p, min_side=min_side), dtype=np.float64).reshape(-1, 3)  # (N, 3)
        n += len(px)
        s1 += px.sum(0)
        s2 += px.T @ px
    if n == 0:
        raise ValueError("no pixels: empty image list")
    mean = s1 / n
    cov = s2 / n - np.outer(mean, mean)
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1]
    val, vec = np.clip(val[order], 0, None), vec[:, order]
    # eigval in the convention of Krizhevsky et al.'s published values (55.46, 4.794, 1.148): the
    # eigenvalues of the covariance of pixels in [0, 1], times 255 (= variance in 0-255 units / 255).
    return {
        "mean": mean.tolist(),
        "eigval": (val / 255.0).tolist(),
        "eigvec": vec.tolist(),
        "images": len(paths),
        "pixels": int(n),
    }


def cached_stats(
    root: str | Path, paths: Sequence[Path] | None = None, *, refresh: bool = False, max_images: int = 0
) -> dict:
    """Stats of `root`/train from `root`/mean_rgb.json, computed and cached if missing."""
    root = Path(root)
    cache = root / CACHE_NAME
    if cache.exists() and not refresh:
        return json.loads(cache.read_text())
    if paths is None:
        from .folder import scan_folder

        paths = scan_folder(root / "train").paths
    stats = pixel_stats(paths, max_images=max_images)
    atomic_write_json(cache, stats)
    return stats
