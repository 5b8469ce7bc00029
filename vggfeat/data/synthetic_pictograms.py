"""Single VOC pictograms on cluttered backgrounds, one class per folder: the quick demo's source dataset.

The same drawings as the generated VOC scenes (synthetic_voc.py), one clear instance per image, near the
centre: a classification task a few seconds of training on a CPU can learn, so that the quick demo's net
D carries features worth more than a random net's (shapes and textures did not, on some seeds).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vggfeat.data.synthetic_voc import PICTOGRAMS, VOC_CLASSES, draw_background

MAX_CLASSES = len(VOC_CLASSES)  # 20


def class_name(c: int) -> str:
    """Folder name of class c: 00_aeroplane ... 19_tvmonitor (the devkit's order)."""
    return f"{c:02d}_{VOC_CLASSES[c]}"


def draw_pictogram(c: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One image of class c: a pictogram of the scenes' clear size, dark ink, smoothed half the time."""
    w, h = size
    img = draw_background(rng, size)
    s = float(rng.uniform(0.18, 0.32)) * min(w, h) * 1.6
    x, y = float(rng.uniform(0.35, 0.65) * w), float(rng.uniform(0.35, 0.65) * h)
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    PICTOGRAMS[VOC_CLASSES[c]](ImageDraw.Draw(img), x, y, s, ink, max(1, round(s / 12)))
    return img.filter(ImageFilter.SMOOTH) if rng.random() < 0.5 else img
