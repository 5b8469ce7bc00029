"""Small generated class-per-folder datasets for the smoke recipe, tests and the demo, laid out like ImageNet
(train/<class>/*.jpg, val/<class>/*.jpg) and deterministic from a seed. Two kinds: drawn shapes and textures
(here), and single VOC pictograms (synthetic_pictograms.py, the quick demo's source)."""

from __future__ import annotations

import inspect
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vggfeat.data import synthetic_pictograms
from vggfeat.data.stats import CACHE_NAME as STATS_CACHE
from vggfeat.utils.files import open_regular

log = logging.getLogger(__name__)
DONE, PARTIAL = "SYNTHETIC_DONE", "SYNTHETIC_PARTIAL"  # markers: the settings of a finished / started generation
MARKER_BYTES = 4096  # what is read of a marker: far more than its one line of settings

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


def _draw_shape(c: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    return _draw(SHAPES[c % len(SHAPES)], size, rng, VARIANTS[c // len(SHAPES)])


@dataclass(frozen=True)
class Kind:
    """One kind of generated dataset: how many classes it has, their folder names, how to draw an image."""

    max_classes: int
    class_name: Callable[[int], str]
    draw: Callable[[int, tuple[int, int], np.random.Generator], Image.Image]
    what: str  # what its images show, for messages and reports


KINDS = {
    "shapes": Kind(MAX_CLASSES, class_name, _draw_shape, "shapes and textures"),
    "pictograms": Kind(
        synthetic_pictograms.MAX_CLASSES,
        synthetic_pictograms.class_name,
        synthetic_pictograms.draw_pictogram,
        "single VOC pictograms",
    ),
}


def _settings(kind: str, seed: int, classes: int, per_class: int, size: tuple[int, int]) -> str:
    return f"kind={kind} seed={seed} classes={classes} per_class={per_class} size={size[0]}x{size[1]}\n"


def generate_synthetic(
    root: str | Path,
    *,
    kind: str = "shapes",
    classes: int = 10,
    per_class: int = 40,
    seed: int = 0,
    size: tuple[int, int] = (72, 96),
) -> Path:
    """Write train/<class>/*.jpg (`per_class` each) and val/<class>/*.jpg (a quarter as many) of a kind in
    KINDS; image sides are drawn from `size` (min, max). Same settings, same files. Returns root."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    spec = KINDS[kind]
    if not 1 <= classes <= spec.max_classes:
        raise ValueError(f"classes must be 1..{spec.max_classes} for {kind}, got {classes}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings = _settings(kind, seed, classes, per_class, size)
    (root / DONE).unlink(missing_ok=True)
    (root / PARTIAL).write_text(settings)  # until DONE: the folder is ours, and incomplete
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(1, per_class // 4))):
        for c in range(classes):
            folder = root / split / spec.class_name(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
                spec.draw(c, (w, h), rng).save(folder / f"{split}_{c:02d}_{i:04d}.jpg", quality=92)
    (root / DONE).write_text(settings)
    (root / PARTIAL).unlink()
    log.info("generated a synthetic dataset of %d classes of %s at %s", classes, kind, root)
    return root


def ensure_synthetic(root: str | Path, **kwargs: Any) -> Path:
    """The dataset generate_synthetic(root, **kwargs) writes: reused when root holds one generated with the
    same settings; regenerated from scratch when it holds a generated one with other settings (another seed,
    kind, class count: a stale dataset, or its cached pixel statistics, must never be trained on) or an
    interrupted one. A folder with train/ or val/ that vggfeat did not generate is never touched:
    FileExistsError."""
    root = Path(root)
    call = inspect.signature(generate_synthetic).bind(root, **kwargs)  # its defaults: one place
    call.apply_defaults()
    settings = _settings(**{k: v for k, v in call.arguments.items() if k != "root"})
    done = root / DONE
    if _read_marker(done) == settings.encode():
        return root
    check_generatable(root)
    if done.is_file() or (root / PARTIAL).is_file():
        log.warning("%s was generated with other settings (%s); generating it again", root, _read(root).strip())
        for sub in ("train", "val"):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / STATS_CACHE).unlink(missing_ok=True)  # the old images' mean RGB and colour PCA
    return generate_synthetic(*call.args, **call.kwargs)


def check_generatable(root: str | Path) -> None:
    """FileExistsError, naming root, when it holds train/ or val/ that vggfeat did not generate."""
    root = Path(root)
    ours = (root / DONE).is_file() or (root / PARTIAL).is_file()
    if not ours and any((root / sub).exists() for sub in ("train", "val")):
        raise FileExistsError(
            f"{root} holds train/ or val/ not generated by vggfeat (no {DONE} file); a generated dataset is "
            "never written over another: choose an empty folder"
        )


def _read(root: Path) -> str:
    """The first marker there and the first line of its settings, for a log line."""
    for name in (DONE, PARTIAL):
        data = _read_marker(root / name)
        if data is not None:
            line = data.decode("utf-8", "replace").partition("\n")[0]
            return f"{name}: {line[:200]}"
    return ""


def _read_marker(path: Path) -> bytes | None:
    """The start of marker `path`, as bytes (whatever it holds compares; nothing fails to decode): a marker is one
    short line of settings, so a longer one differs from any settings; None when it is not a regular file."""
    try:
        with open_regular(path) as f:
            return f.read(MARKER_BYTES)
    except OSError:
        return None
