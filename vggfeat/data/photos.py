"""JPEGs with the statistics of real photographs, for benchmarks: windows of scikit-learn's two sample
photos (427 x 640, shipped with the package), rescaled to the sizes asked for and saved at quality 90."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# (H, W) of VOC-2007 images, roughly in their proportions: most are 500 x 375 landscape or portrait
VOC_SIZES = [(375, 500)] * 11 + [(500, 375)] * 4 + [(333, 500)] * 3 + [(500, 333), (281, 500)]
# ImageNet training images are mostly about 500 x 375, landscape or portrait
IMAGENET_SIZES = [(375, 500), (500, 375)]


def photo_jpegs(folder: str | Path, n: int, sizes: Sequence[tuple[int, int]] = VOC_SIZES, seed: int = 0) -> list[Path]:
    """Write n JPEGs (sizes drawn from `sizes`, each (H, W)) into `folder`; return their paths in order."""
    from sklearn.datasets import load_sample_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        h, w = sizes[int(rng.integers(len(sizes)))]
        x0, y0 = int(rng.integers(0, 60)), int(rng.integers(0, 40))
        crop = photos[k % 2].crop((x0, y0, x0 + 560, y0 + 380)).resize((w, h), Image.Resampling.BILINEAR)
        if k % 3 == 1:
            crop = ImageOps.mirror(crop)
        paths.append(folder / f"img{k:05d}.jpg")
        crop.save(paths[-1], quality=90)
    return paths
