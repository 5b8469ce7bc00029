"""A small generated dataset in the real VOC2007 layout, for the demo and tests: no download needed.

Scenes on textured backgrounds hold one to three crude pictograms of the 20 VOC classes (a stick-figure
person, a car on two wheels, ...). An object drawn tiny or mostly outside the frame is 'difficult': an
image whose only instances of a class are difficult gets label 0 for it, as in the devkit. Written as
VOCdevkit/VOC2007 (or VOC2012)/{JPEGImages, ImageSets/Main/<split>.txt, ImageSets/Main/<class>_<split>.txt};
the VOC2012 action layout (Table 12) is synthetic_voc_action.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vggfeat.data.voc_names import VOC_CLASSES

Colour = tuple[int, ...]  # RGB ink
# a pictogram: (canvas, centre x, centre y, size s, ink, line width) draws one instance
Draw = Callable[[ImageDraw.ImageDraw, float, float, float, Colour, int], None]


def _box(cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _wheels(d: ImageDraw.ImageDraw, cx: float, cy: float, s: float, c: Colour, width: int, gap: float) -> None:
    for dx in (-gap, gap):
        d.ellipse(_box(cx + dx * s, cy, 0.3 * s, 0.3 * s), outline=c, width=width)


def _aeroplane(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.ellipse(_box(x, y, 1.6 * s, 0.3 * s), fill=c)
    d.polygon([(x - 0.1 * s, y), (x + 0.2 * s, y - 0.8 * s), (x + 0.35 * s, y)], fill=c)
    d.polygon([(x - 0.75 * s, y), (x - 0.8 * s, y - 0.45 * s), (x - 0.55 * s, y)], fill=c)


def _bicycle(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    _wheels(d, x, y + 0.2 * s, 1.6 * s, c, lw, 0.3)
    d.line(
        [
            (x - 0.5 * s, y + 0.2 * s),
            (x, y - 0.3 * s),
            (x + 0.5 * s, y + 0.2 * s),
            (x - 0.1 * s, y + 0.2 * s),
            (x, y - 0.3 * s),
        ],
        fill=c,
        width=lw,
    )


def _bird(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.arc(_box(x - 0.35 * s, y, 0.7 * s, 0.6 * s), 200, 340, fill=c, width=lw + 1)
    d.arc(_box(x + 0.35 * s, y, 0.7 * s, 0.6 * s), 200, 340, fill=c, width=lw + 1)


def _boat(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.polygon(
        [
            (x - 0.8 * s, y + 0.1 * s),
            (x + 0.8 * s, y + 0.1 * s),
            (x + 0.5 * s, y + 0.45 * s),
            (x - 0.5 * s, y + 0.45 * s),
        ],
        fill=c,
    )
    d.polygon([(x, y + 0.05 * s), (x, y - 0.8 * s), (x + 0.55 * s, y + 0.05 * s)], outline=c, width=lw)


def _bottle(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.rectangle(_box(x, y + 0.15 * s, 0.35 * s, 0.9 * s), fill=c)
    d.rectangle(_box(x, y - 0.45 * s, 0.14 * s, 0.35 * s), fill=c)


def _bus(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.rectangle(_box(x, y, 1.8 * s, 0.8 * s), outline=c, width=lw)
    for k in range(5):
        d.rectangle(_box(x - 0.7 * s + k * 0.35 * s, y - 0.15 * s, 0.2 * s, 0.2 * s), fill=c)
    _wheels(d, x, y + 0.45 * s, s, c, lw, 0.6)


def _car(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.rectangle(_box(x, y + 0.1 * s, 1.4 * s, 0.4 * s), fill=c)
    d.polygon(
        [
            (x - 0.4 * s, y - 0.1 * s),
            (x - 0.2 * s, y - 0.4 * s),
            (x + 0.3 * s, y - 0.4 * s),
            (x + 0.45 * s, y - 0.1 * s),
        ],
        fill=c,
    )
    _wheels(d, x, y + 0.35 * s, s, c, lw, 0.45)


def _cat(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.ellipse(_box(x, y + 0.1 * s, 0.9 * s, 0.8 * s), outline=c, width=lw)
    d.polygon([(x - 0.4 * s, y - 0.1 * s), (x - 0.35 * s, y - 0.6 * s), (x - 0.1 * s, y - 0.25 * s)], fill=c)
    d.polygon([(x + 0.4 * s, y - 0.1 * s), (x + 0.35 * s, y - 0.6 * s), (x + 0.1 * s, y - 0.25 * s)], fill=c)


def _chair(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.line([(x - 0.3 * s, y - 0.7 * s), (x - 0.3 * s, y + 0.6 * s)], fill=c, width=lw + 1)
    d.line([(x - 0.3 * s, y), (x + 0.35 * s, y), (x + 0.35 * s, y + 0.6 * s)], fill=c, width=lw + 1)


def _legs(
    d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int, span: float = 0.5, n: int = 4
) -> None:
    for k in range(n):
        lx = x - span * s + k * (2 * span * s / (n - 1))
        d.line([(lx, y), (lx, y + 0.4 * s)], fill=c, width=lw)


def _cow(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.rectangle(_box(x, y, 1.3 * s, 0.55 * s), outline=c, width=lw)
    for dx, dy in ((-0.3, -0.05), (0.2, 0.08), (0.35, -0.1)):
        d.ellipse(_box(x + dx * s, y + dy * s, 0.18 * s, 0.14 * s), fill=c)
    _legs(d, x, y + 0.27 * s, s, c, lw)


def _diningtable(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.rectangle(_box(x, y - 0.2 * s, 1.6 * s, 0.15 * s), fill=c)
    _legs(d, x, y - 0.12 * s, s * 1.3, c, lw + 1, span=0.55, n=2)


def _dog(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.ellipse(_box(x, y, 1.1 * s, 0.45 * s), fill=c)
    d.ellipse(_box(x + 0.6 * s, y - 0.3 * s, 0.4 * s, 0.35 * s), fill=c)
    d.line([(x - 0.55 * s, y), (x - 0.8 * s, y - 0.35 * s)], fill=c, width=lw)
    _legs(d, x, y + 0.15 * s, s * 0.9, c, lw, span=0.4)


def _horse(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.ellipse(_box(x, y, 1.2 * s, 0.45 * s), outline=c, width=lw)
    d.line([(x + 0.5 * s, y - 0.1 * s), (x + 0.8 * s, y - 0.7 * s)], fill=c, width=lw + 1)
    d.polygon([(x + 0.7 * s, y - 0.8 * s), (x + 1.05 * s, y - 0.6 * s), (x + 0.8 * s, y - 0.55 * s)], fill=c)
    _legs(d, x, y + 0.2 * s, s * 1.2, c, lw, span=0.4)


def _motorbike(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    for dx in (-0.5, 0.5):
        d.ellipse(_box(x + dx * s, y + 0.2 * s, 0.4 * s, 0.4 * s), fill=c)
    d.polygon(
        [
            (x - 0.3 * s, y + 0.1 * s),
            (x + 0.3 * s, y + 0.1 * s),
            (x + 0.1 * s, y - 0.25 * s),
            (x - 0.2 * s, y - 0.2 * s),
        ],
        fill=c,
    )


def _person(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.ellipse(_box(x, y - 0.65 * s, 0.3 * s, 0.3 * s), fill=c)
    d.line([(x, y - 0.5 * s), (x, y + 0.2 * s)], fill=c, width=lw + 1)
    d.line([(x - 0.35 * s, y - 0.3 * s), (x, y - 0.2 * s), (x + 0.35 * s, y - 0.3 * s)], fill=c, width=lw)
    d.line([(x - 0.25 * s, y + 0.75 * s), (x, y + 0.2 * s), (x + 0.25 * s, y + 0.75 * s)], fill=c, width=lw)


def _pottedplant(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.polygon(
        [
            (x - 0.3 * s, y + 0.2 * s),
            (x + 0.3 * s, y + 0.2 * s),
            (x + 0.2 * s, y + 0.7 * s),
            (x - 0.2 * s, y + 0.7 * s),
        ],
        fill=c,
    )
    for ang in (-50, -15, 15, 50):
        a = math.radians(ang)
        d.ellipse(_box(x + 0.45 * s * math.sin(a), y - 0.3 * s * math.cos(a), 0.22 * s, 0.45 * s), outline=c, width=lw)


def _sheep(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    for dx, dy in ((-0.35, 0), (0, -0.12), (0.35, 0), (0, 0.1)):
        d.ellipse(_box(x + dx * s, y + dy * s, 0.5 * s, 0.45 * s), outline=c, width=lw)
    _legs(d, x, y + 0.25 * s, s, c, lw, span=0.35)


def _sofa(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.rectangle(_box(x, y - 0.25 * s, 1.4 * s, 0.4 * s), outline=c, width=lw)
    d.rectangle(_box(x, y + 0.1 * s, 1.6 * s, 0.3 * s), fill=c)
    for dx in (-0.75, 0.75):
        d.rectangle(_box(x + dx * s, y, 0.15 * s, 0.6 * s), fill=c)


def _train(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    for k in range(3):
        d.rectangle(_box(x - 0.7 * s + k * 0.7 * s, y, 0.6 * s, 0.45 * s), outline=c, width=lw)
        _wheels(d, x - 0.7 * s + k * 0.7 * s, y + 0.28 * s, s * 0.7, c, lw, 0.22)
    d.rectangle(_box(x - 0.9 * s, y - 0.35 * s, 0.12 * s, 0.3 * s), fill=c)


def _tvmonitor(d: ImageDraw.ImageDraw, x: float, y: float, s: float, c: Colour, lw: int) -> None:
    d.rectangle(_box(x, y - 0.1 * s, 1.2 * s, 0.85 * s), outline=c, width=lw + 1)
    d.rectangle(_box(x, y - 0.1 * s, 0.85 * s, 0.55 * s), fill=c)
    d.line([(x, y + 0.33 * s), (x, y + 0.55 * s)], fill=c, width=lw)
    d.line([(x - 0.3 * s, y + 0.55 * s), (x + 0.3 * s, y + 0.55 * s)], fill=c, width=lw)


PICTOGRAMS: dict[str, Draw] = dict(
    zip(
        VOC_CLASSES,
        (
            _aeroplane,
            _bicycle,
            _bird,
            _boat,
            _bottle,
            _bus,
            _car,
            _cat,
            _chair,
            _cow,
            _diningtable,
            _dog,
            _horse,
            _motorbike,
            _person,
            _pottedplant,
            _sheep,
            _sofa,
            _train,
            _tvmonitor,
        ),
        strict=False,
    )
)


def draw_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Smooth coloured noise with a gradient: clutter that is not any class."""
    w, h = size
    low = rng.integers(90, 230, (max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8))


def draw_scene(rng: np.random.Generator, size: tuple[int, int] = (128, 96)) -> tuple[Image.Image, dict[str, int]]:
    """One scene and its labels: class -> 1 (a clear instance), 0 (only difficult instances)."""
    img = draw_background(rng, size)
    d = ImageDraw.Draw(img)
    w, h = size
    labels: dict[str, int] = {}
    for cls in rng.choice(VOC_CLASSES, size=int(rng.integers(1, 4)), replace=False):
        difficult = rng.random() < 0.15
        s = float(rng.uniform(0.07, 0.1) if difficult else rng.uniform(0.18, 0.32)) * min(w, h) * 1.6
        x, y = float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.25, 0.75) * h)
        colour = tuple(int(v) for v in rng.integers(0, 90, 3))  # dark ink on a light background
        PICTOGRAMS[cls](d, x, y, s, colour, max(1, int(round(s / 12))))
        labels[cls] = max(labels.get(cls, 0), 0 if difficult else 1)
    return img.filter(ImageFilter.SMOOTH) if rng.random() < 0.5 else img, labels


def make_voc2007(
    root: str | Path, n_trainval: int = 200, n_test: int = 200, seed: int = 0, size: tuple[int, int] = (128, 96)
) -> Path:
    """Write the scenes as VOCdevkit/VOC2007 under root; return the VOC2007 folder. Deterministic in seed."""
    return _make_voc(root, "2007", {"trainval": n_trainval, "test": n_test}, seed, size)


def make_voc2012(
    root: str | Path, n_train: int = 200, n_val: int = 200, seed: int = 0, size: tuple[int, int] = (128, 96)
) -> Path:
    """The same scenes as VOCdevkit/VOC2012 with its train/val classification lists (ImageSets/Main)."""
    return _make_voc(root, "2012", {"train": n_train, "val": n_val}, seed, size)


def _make_voc(root: str | Path, year: str, counts: dict[str, int], seed: int, size: tuple[int, int]) -> Path:
    voc = Path(root) / "VOCdevkit" / f"VOC{year}"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids, start = {}, 0
    for split, n in counts.items():
        ids[split] = [f"{k:06d}" for k in range(start, start + n)]
        start += n
    for split, names in ids.items():
        rows: dict[str, list[str]] = {cls: [] for cls in VOC_CLASSES}
        for name in names:
            img, labels = draw_scene(rng, size)
            img.save(voc / "JPEGImages" / f"{name}.jpg", quality=92)
            for cls in VOC_CLASSES:
                rows[cls].append(f"{name} {labels.get(cls, -1):2d}")
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for cls in VOC_CLASSES:
            (voc / "ImageSets" / "Main" / f"{cls}_{split}.txt").write_text("\n".join(rows[cls]) + "\n")
    return voc
