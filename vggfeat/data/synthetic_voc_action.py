"""A small generated dataset in the real VOC2012 action layout (Table 12), for tests: no download needed.

Each scene holds one or two stick-figure people, each doing one of the devkit's actions with a crude prop
(a phone at the head, a book in front, a bicycle or horse underneath, ...), sometimes beside a chair or a
pottedplant, so a person is not always object 1. Written as VOCdevkit/VOC2012/{JPEGImages, Annotations/<id>.xml
(person boxes and <actions> flags), ImageSets/Action/<split>.txt, ImageSets/Action/<action>_<split>.txt}.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vggfeat.data.voc_names import ACTION_OTHER, VOC_ACTIONS

from .synthetic_voc import PICTOGRAMS, Colour, _box, _person, draw_background

ACTION_SPLITS = ("train", "val")
Box = tuple[int, int, int, int]  # (xmin, ymin, xmax, ymax), 1-based and inclusive as in the devkit
# one annotated object: (class name, box, action: one of VOC_ACTIONS or 'other' for a person, None otherwise)
Object = tuple[str, Box, str | None]


def _prop(d: ImageDraw.ImageDraw, action: str, x: float, y: float, s: float, c: Colour, lw: int) -> float:
    """Draw the action's prop around a person at (x, y) of size s; return how far below y the box reaches."""
    if action == "jumping":  # arms up, feet tucked: the person floats above a ground line
        d.line([(x - 0.35 * s, y - 0.8 * s), (x, y - 0.4 * s), (x + 0.35 * s, y - 0.8 * s)], fill=c, width=lw)
        d.line([(x - 0.5 * s, y + 1.0 * s), (x + 0.5 * s, y + 1.0 * s)], fill=c, width=lw)
        return 1.05
    if action == "phoning":
        d.rectangle(_box(x + 0.18 * s, y - 0.65 * s, 0.1 * s, 0.25 * s), fill=c)
    elif action == "playinginstrument":
        d.ellipse(_box(x + 0.1 * s, y - 0.05 * s, 0.35 * s, 0.3 * s), outline=c, width=lw)
        d.line([(x + 0.2 * s, y - 0.1 * s), (x + 0.55 * s, y - 0.5 * s)], fill=c, width=lw)
    elif action == "reading":
        d.rectangle(_box(x - 0.13 * s, y - 0.3 * s, 0.25 * s, 0.3 * s), fill=c)
        d.rectangle(_box(x + 0.13 * s, y - 0.3 * s, 0.25 * s, 0.3 * s), outline=c, width=lw)
    elif action == "ridingbike":
        PICTOGRAMS["bicycle"](d, x, y + 0.75 * s, 0.7 * s, c, lw)
        return 1.2
    elif action == "ridinghorse":
        PICTOGRAMS["horse"](d, x, y + 0.6 * s, 0.7 * s, c, lw)
        return 1.1
    elif action == "running":  # a wide stride and a forward lean
        d.line([(x - 0.5 * s, y + 0.7 * s), (x, y + 0.2 * s), (x + 0.55 * s, y + 0.55 * s)], fill=c, width=lw + 1)
        d.line([(x - 0.45 * s, y - 0.05 * s), (x + 0.45 * s, y - 0.45 * s)], fill=c, width=lw)
    elif action == "takingphoto":
        d.rectangle(_box(x, y - 0.6 * s, 0.35 * s, 0.22 * s), fill=c)
        d.ellipse(_box(x, y - 0.6 * s, 0.12 * s, 0.12 * s), fill=(240, 240, 240))
    elif action == "usingcomputer":
        PICTOGRAMS["tvmonitor"](d, x + 0.55 * s, y - 0.1 * s, 0.4 * s, c, lw)
    elif action == "walking":
        d.line([(x - 0.3 * s, y + 0.75 * s), (x, y + 0.2 * s), (x + 0.2 * s, y + 0.75 * s)], fill=c, width=lw)
    return 0.8


def draw_action_scene(rng: np.random.Generator, size: tuple[int, int] = (160, 120)) -> tuple[Image.Image, list[Object]]:
    """One scene and its objects in XML order: (name, box (xmin, ymin, xmax, ymax) 1-based inclusive as in the
    devkit, action) - action is one of VOC_ACTIONS or 'other' for a person, None for another object."""
    img = draw_background(rng, size)
    d = ImageDraw.Draw(img)
    w, h = size
    objects: list[Object] = []
    n_people = int(rng.integers(1, 3))
    if rng.random() < 0.3:  # a non-person object first: action object indices then start at 2
        name = str(rng.choice(["chair", "pottedplant"]))
        s = 0.15 * min(w, h)
        x, y = float(rng.uniform(0.1, 0.9) * w), float(rng.uniform(0.2, 0.4) * h)
        PICTOGRAMS[name](d, x, y, s, (60, 60, 60), 1)
        objects.append((name, _clip((x - 0.6 * s, y - 0.7 * s, x + 0.6 * s, y + 0.7 * s), w, h), None))
    for p in range(n_people):
        action = ACTION_OTHER if rng.random() < 0.1 else str(rng.choice(VOC_ACTIONS))
        s = float(rng.uniform(0.3, 0.4)) * h
        lo, hi = (0.2, 0.8) if n_people == 1 else ((0.15, 0.4) if p == 0 else (0.6, 0.85))
        x, y = float(rng.uniform(lo, hi) * w), float(rng.uniform(0.38, 0.45) * h)
        colour = tuple(int(v) for v in rng.integers(0, 90, 3))  # dark ink on a light background
        lw = max(1, int(round(s / 14)))
        _person(d, x, y, s, colour, lw)
        below = _prop(d, action, x, y, s, colour, lw)
        objects.append(("person", _clip((x - 0.6 * s, y - 0.85 * s, x + 0.6 * s, y + below * s), w, h), action))
    return img, objects


def _clip(box: tuple[float, float, float, float], w: int, h: int) -> Box:
    """Pixel box (x0, y0, x1, y1) -> the devkit's 1-based inclusive integer box inside a w x h image."""
    x0, y0, x1, y1 = box
    return (
        max(1, int(x0) + 1),
        max(1, int(y0) + 1),
        min(w, max(int(x0) + 2, int(round(x1)))),
        min(h, max(int(y0) + 2, int(round(y1)))),
    )


def _annotation_xml(image_id: str, size: tuple[int, int], objects: Iterable[Object]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    sz = ET.SubElement(root, "size")
    for tag, v in zip(("width", "height", "depth"), (*size, 3), strict=True):
        ET.SubElement(sz, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for name, box, action in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bb, tag).text = str(v)
        if action is not None:
            acts = ET.SubElement(obj, "actions")
            for a in (*VOC_ACTIONS, ACTION_OTHER):
                ET.SubElement(acts, a).text = "1" if a == action else "0"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def make_voc2012_action(
    root: str | Path, n_train: int = 60, n_val: int = 60, seed: int = 0, size: tuple[int, int] = (160, 120)
) -> Path:
    """Write the scenes as VOCdevkit/VOC2012 (action layout) under root; return the VOC2012 folder.

    Deterministic in seed. Image ids look like the devkit's (2012_000001); a VOC2012 classification layout
    (ImageSets/Main) already there is kept, as in the real devkit where both share JPEGImages.
    """
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Action"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {"train": n_train, "val": n_val}
    start = 1
    for split in ACTION_SPLITS:
        names = [f"2012_{k:06d}" for k in range(start, start + counts[split])]
        start += counts[split]
        rows: dict[str, list[str]] = {a: [] for a in VOC_ACTIONS}
        for name in names:
            img, objects = draw_action_scene(rng, size)
            img.save(voc / "JPEGImages" / f"{name}.jpg", quality=92)
            (voc / "Annotations" / f"{name}.xml").write_bytes(_annotation_xml(name, size, objects))
            for index, (_, _, action) in enumerate(objects, start=1):  # the devkit counts every object
                if action is None:
                    continue
                for a in VOC_ACTIONS:
                    rows[a].append(f"{name} {index} {1 if a == action else -1:2d}")
        (voc / "ImageSets" / "Action" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for a in VOC_ACTIONS:
            (voc / "ImageSets" / "Action" / f"{a}_{split}.txt").write_text("\n".join(rows[a]) + "\n")
    return voc
