"""The PASCAL VOC devkit layout, read for the classification benchmarks of Sect. 4.1 (voc2007.py, voc2012.py).

Labels come from VOC<year>/ImageSets/Main/<class>_<split>.txt, lines `<image id> <label>` with label 1
(present), -1 (absent) or 0 (only 'difficult' instances: neither positive nor negative for AP). Images are
VOC<year>/JPEGImages/<id>.jpg. Which splits train and test is each benchmark's rule, not this reader's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vggfeat.benchmarks.base import (
    DatasetError,
    ProbeSplit,
    check_inside,
    check_regular,
    find_dataset_dir,
    present,
    read_dataset_text,
)
from vggfeat.data.voc_names import VOC_CLASSES

VOC_LABELS = (1, -1, 0)

Ref = tuple[Path, int]  # (list file, line number) that named an image


def find_voc(root: Path, year: str) -> Path:
    """VOC<year> given root = VOC<year>, VOCdevkit, the folder holding VOCdevkit, or one level above that."""

    def accept(cand: Path) -> bool:
        other_year = re.fullmatch(r"VOC\d{4}", cand.name) and cand.name != f"VOC{year}"
        return (cand / "JPEGImages").is_dir() and (cand / "ImageSets" / "Main").is_dir() and not other_year

    found = find_dataset_dir(root, (f"VOC{year}", f"VOCdevkit/VOC{year}"), accept)
    if found is None:
        raise DatasetError(
            f"{root}: no VOC{year} folder found (looked for {root}/VOCdevkit/VOC{year} with "
            "JPEGImages/ and ImageSets/Main/)"
        )
    return found


def _check_id(image_id: str, file: Path, lineno: int) -> str:
    if "/" in image_id or "\\" in image_id or image_id in (".", "..") or image_id.startswith(".."):
        raise DatasetError(
            f"{file}, line {lineno}: image id {image_id!r} must be a plain file name (no path separators or '..')"
        )
    return image_id


def _lines(file: Path) -> list[tuple[int, str]]:
    text = read_dataset_text(file, "list file")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_id_list(file: Path) -> dict[str, int]:
    """ImageSets/Main/<split>.txt: one image id per line -> {id: line number}, in file order."""
    ids: dict[str, int] = {}
    for n, line in _lines(file):
        parts = line.split()
        if len(parts) != 1:
            raise DatasetError(f"{file}, line {n}: expected one image id, got {line!r}")
        if parts[0] in ids:
            raise DatasetError(f"{file}, line {n}: image id {parts[0]!r} repeats line {ids[parts[0]]}")
        ids[_check_id(parts[0], file, n)] = n
    return ids


def read_class_list(file: Path) -> dict[str, tuple[int, int]]:
    """ImageSets/Main/<class>_<split>.txt -> {id: (label, line number)}, in file order."""
    rows: dict[str, tuple[int, int]] = {}
    for n, line in _lines(file):
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{file}, line {n}: expected '<image id> <label>', got {line!r}")
        image_id, label = parts
        try:
            value = int(label)
        except ValueError:
            value = None
        if value not in VOC_LABELS:
            raise DatasetError(f"{file}, line {n}: label {label!r} is not 1, -1 or 0 in {line!r}")
        if image_id in rows:
            raise DatasetError(f"{file}, line {n}: image id {image_id!r} repeats line {rows[image_id][1]}")
        rows[_check_id(image_id, file, n)] = (value, n)
    return rows


def _mismatch(file: Path, rows: dict, ids: dict[str, int], ids_file: Path) -> DatasetError:
    extra = next((i for i in rows if i not in ids), None)
    if extra is not None:
        return DatasetError(f"{file}, line {rows[extra][1]}: image id {extra!r} is not in {ids_file}")
    missing = next(i for i in ids if i not in rows)
    return DatasetError(f"{file}: lacks image id {missing!r} (listed at {ids_file}, line {ids[missing]})")


def read_voc_split(voc: Path, split: str, classes: tuple[str, ...] = VOC_CLASSES) -> tuple[tuple[str, ...], np.ndarray]:
    """(resolved image paths, (N, K) int8 labels) of one split; all class files must list the same ids."""
    main = voc / "ImageSets" / "Main"
    ids_file = main / f"{split}.txt"
    tables = {cls: read_class_list(main / f"{cls}_{split}.txt") for cls in classes}
    if present(ids_file):
        ids = read_id_list(ids_file)
        refs: dict[str, Ref] = {i: (ids_file, n) for i, n in ids.items()}
    else:  # no <split>.txt: the first class file fixes the ids and their order
        ids_file = main / f"{classes[0]}_{split}.txt"
        ids = {i: n for i, (_, n) in tables[classes[0]].items()}
        refs = {i: (ids_file, n) for i, n in ids.items()}
    if not ids:
        raise DatasetError(
            f"{ids_file} lists no images (nor does any <class>_{split}.txt): there is nothing to "
            f"{'test' if split in ('test', 'val') else 'train'} on; fill the {split} lists of {voc}"
        )
    index = {image_id: row for row, image_id in enumerate(ids)}
    labels = np.empty((len(ids), len(classes)), dtype=np.int8)
    for col, cls in enumerate(classes):
        rows = tables[cls]
        if len(rows) != len(ids) or any(i not in index for i in rows):
            raise _mismatch(main / f"{cls}_{split}.txt", rows, ids, ids_file)
        for image_id, (value, _) in rows.items():
            labels[index[image_id], col] = value
    paths = []
    for image_id in ids:
        file, n = refs[image_id]
        path = voc / "JPEGImages" / f"{image_id}.jpg"
        check_regular(path, f"image {image_id!r}", f"{file}, line {n}")
        paths.append(str(check_inside(path, voc, f"{file}, line {n}")))
    return tuple(paths), labels


def load_voc(root: Path, benchmark: str, year: str, train_name: str, test_name: str, metric: str) -> ProbeSplit:
    """The single split of a VOC benchmark: `train_name` -> `test_name` of VOC<year> under `root`."""
    voc = find_voc(Path(root), year)
    train_paths, train_labels = read_voc_split(voc, train_name)
    test_paths, test_labels = read_voc_split(voc, test_name)
    if overlap := set(train_paths) & set(test_paths):
        raise DatasetError(
            f"{voc}: {len(overlap)} images are in both {train_name} and {test_name}, e.g. {sorted(overlap)[0]}"
        )
    return ProbeSplit(
        benchmark,
        0,
        VOC_CLASSES,
        True,
        metric,
        train_paths,
        train_labels,
        test_paths,
        test_labels,
        train_name,
        test_name,
    )
