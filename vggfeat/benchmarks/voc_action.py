"""PASCAL VOC-2012 action classification (Table 12) from the devkit layout: one sample per person box.

VOC2012/ImageSets/Action/<split>.txt lists a split's images; <action>_<split>.txt holds one line per person
instance, `<image id> <object index> <flag>` (flag 1 or -1; 0, if present, counts as neither for AP). The object
index counts every <object> of Annotations/<id>.xml from 1, as the devkit's VOCevalaction does; that object is a
person whose <bndbox> (1-based, inclusive) is the region of the box descriptor. The 10 actions are scored, not
'other'. Test labels are private: train on train, report all-point AP on val.
"""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggfeat.benchmarks.base import (
    DatasetError,
    ProbeSplit,
    check_inside,
    check_regular,
    find_dataset_dir,
    present,
    read_dataset_file,
    resolve_root,
)
from vggfeat.benchmarks.voc import _check_id, _lines, read_id_list
from vggfeat.data.images import load_rgb
from vggfeat.data.voc_names import VOC_ACTIONS
from vggfeat.utils.files import atomic_write_bytes

ACTION_FLAGS = (1, -1, 0)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value
class ActionSplit:
    """The person instances of one split, in the order of the first action file."""

    name: str  # 'train' | 'val'
    image_ids: tuple[str, ...]  # N image ids (one per person instance, repeated for several people)
    object_indices: tuple[int, ...]  # N, 1-based over the image's <object>s
    image_paths: tuple[str, ...]  # N resolved JPEG paths
    boxes: np.ndarray  # (N, 4) int: xmin, ymin, xmax, ymax, 1-based inclusive (the devkit's)
    labels: np.ndarray  # (N, 10) int8 in {1, -1, 0}, columns VOC_ACTIONS

    def __post_init__(self) -> None:
        for a in (self.boxes, self.labels):
            a.flags.writeable = False

    def __len__(self) -> int:
        return len(self.image_ids)

    def sample_names(self) -> list[str]:
        """`<image id>_<object index>`: one unique name per sample (its box crop's file stem)."""
        return [f"{i}_{o}" for i, o in zip(self.image_ids, self.object_indices, strict=True)]


def find_voc_action(root: Path) -> Path:
    """VOC2012 with the action layout, given VOC2012, VOCdevkit, the folder holding it, or one level above."""

    def accept(cand: Path) -> bool:
        ok = all((cand / sub).is_dir() for sub in ("JPEGImages", "Annotations", "ImageSets/Action"))
        return ok and cand.name != "VOC2007"

    found = find_dataset_dir(root, ("VOC2012", "VOCdevkit/VOC2012"), accept)
    if found is None:
        raise DatasetError(
            f"{root}: no VOC2012 action layout found (looked for {root}/VOCdevkit/VOC2012 with JPEGImages/, "
            "Annotations/ and ImageSets/Action/)"
        )
    return found


def read_action_list(file: Path) -> dict[tuple[str, int], tuple[int, int]]:
    """ImageSets/Action/<action>_<split>.txt -> {(image id, object index): (flag, line number)}, in file order."""
    rows: dict[tuple[str, int], tuple[int, int]] = {}
    for n, line in _lines(file):
        parts = line.split()
        if len(parts) != 3:
            raise DatasetError(f"{file}, line {n}: expected '<image id> <object index> <flag>', got {line!r}")
        image_id, index, flag = parts
        try:
            obj, value = int(index), int(flag)
        except ValueError:
            raise DatasetError(f"{file}, line {n}: object index and flag must be integers in {line!r}") from None
        if obj < 1:
            raise DatasetError(f"{file}, line {n}: object index {obj} must be >= 1 (the devkit counts from 1)")
        if value not in ACTION_FLAGS:
            raise DatasetError(f"{file}, line {n}: flag {flag!r} is not 1, -1 or 0 in {line!r}")
        key = (_check_id(image_id, file, n), obj)
        if key in rows:
            raise DatasetError(f"{file}, line {n}: person {image_id} {obj} repeats line {rows[key][1]}")
        rows[key] = (value, n)
    return rows


def _int(node: ET.Element | None, tag: str, file: Path, where: str) -> int:
    child = None if node is None else node.find(tag)
    text = "" if child is None or child.text is None else child.text
    try:
        value = float(text)  # a few devkit boxes are written as floats
    except ValueError:
        raise DatasetError(f"{file}: {where} has no numeric <{tag}>") from None
    if not math.isfinite(value):  # 'inf', 'nan', or '1e400', which float() reads as inf
        raise DatasetError(f"{file}: {where} has <{tag}>{text.strip()}</{tag}>, not a finite number of pixels")
    return int(round(value))


def read_person_boxes(file: Path) -> tuple[dict[int, tuple[int, int, int, int] | str], tuple[int, int] | None]:
    """Annotations/<id>.xml -> ({object index: box, or the object's name when it is not a person}, (w, h))."""
    data = read_dataset_file(file, "annotation file")
    # an encoding the file declares that the parser cannot use is a LookupError or a ValueError (UnicodeError),
    # not a ParseError: <?xml encoding="rot13"?>, "utf-32", "idna"
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, LookupError, ValueError) as e:
        raise DatasetError(f"{file}: not valid XML ({e})") from None
    size = root.find("size")
    wh = None
    if size is not None and size.find("width") is not None:
        wh = (_int(size, "width", file, "<size>"), _int(size, "height", file, "<size>"))
    objects: dict[int, tuple[int, int, int, int] | str] = {}
    for index, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip().lower()
        if name != "person":
            objects[index] = name or "<no name>"
            continue
        where = f"object {index} (person)"
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (_int(bb, t, file, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        box = (xmin, ymin, xmax, ymax)
        if not (1 <= box[0] <= box[2] and 1 <= box[1] <= box[3]):
            raise DatasetError(f"{file}: {where} has an empty or negative box {box} (xmin, ymin, xmax, ymax)")
        objects[index] = box
    return objects, wh


def read_action_split(voc: Path, split: str, actions: tuple[str, ...] = VOC_ACTIONS) -> ActionSplit:
    """One split's person instances; every action file must list the same instances, each a person box of an
    image of <split>.txt."""
    action_dir = voc / "ImageSets" / "Action"
    ids_file = action_dir / f"{split}.txt"
    image_ids = read_id_list(ids_file) if present(ids_file) else None
    tables = {a: read_action_list(action_dir / f"{a}_{split}.txt") for a in actions}
    first_file = action_dir / f"{actions[0]}_{split}.txt"
    keys = list(tables[actions[0]])
    if not keys:
        raise DatasetError(
            f"{first_file} lists no person instances: there is nothing to {'test' if split == 'val' else 'train'} "
            f"on; fill the <action>_{split}.txt lists of {action_dir}"
        )
    index = {k: row for row, k in enumerate(keys)}
    labels = np.empty((len(keys), len(actions)), dtype=np.int8)
    for col, a in enumerate(actions):
        rows, file = tables[a], action_dir / f"{a}_{split}.txt"
        extra = next((k for k in rows if k not in index), None)
        if extra is not None:
            raise DatasetError(f"{file}, line {rows[extra][1]}: person {extra[0]} {extra[1]} is not in {first_file}")
        missing = next((k for k in keys if k not in rows), None)
        if missing is not None:
            line = tables[actions[0]][missing][1]
            raise DatasetError(f"{file}: lacks person {missing[0]} {missing[1]} (listed at {first_file}, line {line})")
        for k, (value, _) in rows.items():
            labels[index[k], col] = value
    boxes = np.empty((len(keys), 4), dtype=np.int64)
    paths: list[str] = []
    parsed: dict[str, tuple[dict, tuple[int, int] | None]] = {}
    for row, (image_id, obj) in enumerate(keys):
        line = tables[actions[0]][(image_id, obj)][1]
        where = f"{first_file}, line {line}"
        if image_ids is not None and image_id not in image_ids:
            raise DatasetError(f"{where}: image {image_id!r} is not in {ids_file}")
        if image_id not in parsed:
            parsed[image_id] = read_person_boxes(voc / "Annotations" / f"{image_id}.xml")
        objects, wh = parsed[image_id]
        xml = voc / "Annotations" / f"{image_id}.xml"
        found = objects.get(obj)
        if found is None:
            raise DatasetError(f"{where}: {xml} has {len(objects)} objects, no object {obj}")
        if isinstance(found, str):
            raise DatasetError(f"{where}: object {obj} of {xml} is a {found}, not a person")
        if wh is not None and (found[2] > wh[0] or found[3] > wh[1]):
            raise DatasetError(f"{xml}: object {obj}'s box {found} lies outside the {wh[0]}x{wh[1]} image")
        boxes[row] = found
        path = voc / "JPEGImages" / f"{image_id}.jpg"
        check_regular(path, f"image {image_id!r}", where)
        paths.append(str(check_inside(path, voc, where)))
    return ActionSplit(split, tuple(k[0] for k in keys), tuple(k[1] for k in keys), tuple(paths), boxes, labels)


def load_voc_action(root: str | Path) -> tuple[ActionSplit, ActionSplit]:
    """(train, val) person instances of VOC2012 action classification under `root`."""
    voc = find_voc_action(resolve_root(root))
    return read_action_split(voc, "train"), read_action_split(voc, "val")


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header, None when it does not open."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError):
        return None


def write_box_crops(split: ActionSplit, out: str | Path) -> list[str]:
    """Each sample's person box cut from the fully decoded image, as a lossless PNG OUT/<image id>_<object>.png
    (so the box descriptor is exactly that of the crop in memory); written atomically, reused when present."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    crops: list[str] = []
    decoded: tuple[str, Image.Image] | None = None  # samples of one image are adjacent: decode it once
    samples = zip(split.image_ids, split.object_indices, split.image_paths, split.boxes, strict=True)
    for image_id, obj, path, box in samples:
        name = f"{image_id}_{obj}"
        x0, y0, x1, y1 = (int(v) for v in box)
        target = out / f"{name}_{x0}_{y0}_{x1}_{y1}.png"  # the box in the name: an edited box is a new crop
        crops.append(str(target))
        if target.is_file() and _image_size(target) == (x1 - x0 + 1, y1 - y0 + 1):
            continue  # a crop of another size (cut clipped by an older version) is cut again, and checked
        if decoded is None or decoded[0] != path:
            decoded = (path, load_rgb(path))
        img = decoded[1]
        if x1 > img.width or y1 > img.height:  # the XML's <size> is absent or wrong: the pixels decide
            xml = Path(path).parent.parent / "Annotations" / f"{image_id}.xml"
            raise DatasetError(
                f"{xml}: object {obj}'s box {(x0, y0, x1, y1)} (xmin, ymin, xmax, ymax) lies outside the decoded "
                f"{img.width}x{img.height} image {path}; fix the box (or the <size>) in the annotation"
            )
        # 1-based inclusive devkit box -> PIL's 0-based half-open crop
        crop = img.crop((x0 - 1, y0 - 1, x1, y1))
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
    return crops


def sample_keys(split: ActionSplit) -> list[str]:
    """One name per person instance, `<image path>#<object index>`: the rows of an action feature store."""
    return [f"{p}#{o}" for p, o in zip(split.image_paths, split.object_indices, strict=True)]


@dataclass(frozen=True, eq=False)
class ActionProbeSplit(ProbeSplit):
    """A ProbeSplit whose 'paths' are sample keys, carrying the person instances they stand for (images and
    boxes), from which vggfeat.probes.action builds the store those keys name."""

    train_action: ActionSplit | None = None
    test_action: ActionSplit | None = None


def action_probe_split(train: ActionSplit, val: ActionSplit) -> ActionProbeSplit:
    """The person instances of train and val as one probe split (train -> val)."""
    return ActionProbeSplit(
        "voc2012-action",
        0,
        VOC_ACTIONS,
        True,
        "voc12_ap",
        tuple(sample_keys(train)),
        np.array(train.labels),
        tuple(sample_keys(val)),
        np.array(val.labels),
        train.name,
        val.name,
        train,
        val,
    )
