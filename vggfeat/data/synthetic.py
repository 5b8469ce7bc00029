"""A small generated class-per-folder dataset of drawn shapes and textures, for the smoke recipe, tests
and the demo: deterministic from a seed, laid out like ImageNet (train/<class>/*.jpg, val/<class>/*.jpg)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

SHAPES = ("disc", "square", "triangle", "hstripes", "vstripes", "checker", "ring", "cross", "diagonal", "dots")
# Classes beyond the first ten draw the same patterns in another form: small and off-centre objects with
# coarse textures ("small"), or large objects with fine textures ("fine"). 30 classes in all.
VARIANTS = ("", "small", "fine")
MAX_CLASSES = len(SHAPES) * len(VARIANTS)


def class_name(c: int) -> str:
    """Folder name of class c: 00_disc ... 09_dots, 10_disc_small ... 29_dots_fine."""
    variant = VARIANTS[c // len(SHAPES)]
    return f"{c:02d}_{SHAPES[c % len(SHAPES)]}" + (f"_{variant}" if variant else "")


def _draw(kind: str, size: tuple[int, int], rng: np.random.Generator, variant: str = "") -> Image.Image:
    w, h = size
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    m = min(w, h)
    r = int(m * rng.uniform(0.25, 0.4))
    cx, cy = int(w / 2 + rng.uniform(-0.1, 0.1) * w), int(h / 2 + rng.uniform(-0.1, 0.1) * h)
    period = int(rng.integers(6, 12))
    if variant == "small":
        r = max(4, r // 2)
        cx, cy = int(w * rng.uniform(0.25, 0.75)), int(h * rng.uniform(0.25, 0.75))
        period = int(rng.integers(14, 20))
    elif variant == "fine":
        period = int(rng.integers(3, 5))
    if kind == "disc":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif kind == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif kind == "hstripes":
        for y in range(0, h, period):
            d.rectangle([0, y, w, y + period // 2], fill=fg)
    elif kind == "vstripes":
        for x in range(0, w, period):
            d.rectangle([x, 0, x + period // 2, h], fill=fg)
    elif kind == "checker":
        for y in range(0, h, period):
            for x in range(0, w, period):
                if (x // period + y // period) % 2:
                    d.rectangle([x, y, x + period - 1, y + period - 1], fill=fg)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=max(2, r // 4))
    elif kind == "cross":
        t = max(2, r // 3)
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fg)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fg)
    elif kind == "diagonal":
        for k in range(-h, w, period):
            d.line([(k, 0), (k + h, h)], fill=fg, width=max(1, period // 3))
    else:  # dots
        for y in range(period // 2, h, period):
            for x in range(period // 2, w, period):
                d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=fg)
    noise = rng.normal(0, 8, (h, w, 3))
    arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def generate_synthetic(
    root: str | Path, *, classes: int = 10, per_class: int = 40, seed: int = 0, size: tuple[int, int] = (72, 96)
) -> Path:
    """Write train/<class>/*.jpg (`per_class` each) and val/<class>/*.jpg (a quarter as many); image
    sides are drawn from `size` (min, max). Same seed, same files. Returns root."""
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be 1..{MAX_CLASSES}, got {classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(1, per_class // 4))):
        for c in range(classes):
            folder = root / split / class_name(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                wh = tuple(int(v) for v in rng.integers(size[0], size[1] + 1, 2))
                _draw(SHAPES[c % len(SHAPES)], wh, rng, VARIANTS[c // len(SHAPES)]).save(
                    folder / f"{split}_{c:02d}_{i:04d}.jpg", quality=92
                )
    (root / "SYNTHETIC_DONE").write_text(f"seed={seed} classes={classes} per_class={per_class}\n")
    log.info("generated synthetic dataset at %s", root)
    return root


def ensure_synthetic(root: str | Path, **kwargs: int | tuple[int, int]) -> Path:
    """Generate the dataset at root unless a complete one is already there (`kwargs`: generate_synthetic's)."""
    root = Path(root)
    if not (root / "SYNTHETIC_DONE").exists():
        generate_synthetic(root, **kwargs)
    return root
