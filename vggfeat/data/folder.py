"""Class-per-folder datasets and the ImageNet layout: train/<wnid>/*.JPEG, val/<wnid>/*.JPEG or a flat
val/ folder with a labels file ("file_name class" per line, class a wnid or an index into the sorted wnids)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vggfeat.errors import DatasetError
from vggfeat.utils.files import read_dataset_text
from vggfeat.utils.text import decimal_int, shorten

from .images import IMAGE_EXTENSIONS, is_image_file


@dataclass(frozen=True)
class Samples:
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]  # class names, index = label

    def __len__(self) -> int:
        return len(self.paths)


def class_folders(root: str | Path) -> tuple[str, ...]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no such dataset folder: {root}")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise DatasetError(
            f"{root}: no class folders (expected {root}/<class>/<image>, one folder per class); point at the folder "
            "that holds them (a flat folder of images needs a labels file: evaluate --val-labels, data.val_labels)"
        )
    return classes


def scan_folder(root: str | Path, classes: tuple[str, ...] | None = None) -> Samples:
    """Every image under root/<class>/, sorted; `classes` fixes the label order (from train/)."""
    root = Path(root)
    classes = classes or class_folders(root)
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file() and is_image_file(p):
                paths.append(p)
                labels.append(label)
    if not paths:
        shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
        raise DatasetError(
            f"{root}: no images in its {len(classes)} class folders ({shown}); put the images in {root}/<class>/ "
            f"(files ending {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return Samples(tuple(paths), tuple(labels), classes)


def scan_flat(root: str | Path, labels_file: str | Path, classes: tuple[str, ...]) -> Samples:
    """A flat folder of images labelled by a file of `name label` lines (label: class name or index)."""
    root, index = Path(root), {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for lineno, line in enumerate(_read_labels(Path(labels_file)), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(
                f"{labels_file}, line {lineno}: expected 'file label' (an image in {root} and its class), "
                f"got {shorten(line)}"
            )
        name, label = parts
        lab = index.get(label, decimal_int(label))
        if lab is None or lab >= len(classes):
            raise DatasetError(
                f"{labels_file}, line {lineno}: unknown class {shorten(label)}; a label is one of the "
                f"{len(classes)} class names or an index 0..{len(classes) - 1}"
            )
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{labels_file}, line {lineno}: no such image {path}; fix the line or add the image")
        paths.append(path)
        labels.append(lab)
    if not paths:
        raise DatasetError(f"{labels_file}: no 'file label' lines; list each image of {root} with its class")
    return Samples(tuple(paths), tuple(labels), classes)


def _read_labels(labels_file: Path) -> list[str]:
    # read bounded: missing, a folder or a FIFO (which a plain read would wait on forever) is one DatasetError
    return read_dataset_text(labels_file, "labels file").splitlines()


def imagenet_splits(root: str | Path, val_labels: str | Path | None = None) -> tuple[Samples, Samples]:
    """(train, val) samples of an ImageNet-style tree; val labels follow train's sorted class folders."""
    root = Path(root)
    train = scan_folder(root / "train")
    val_root = root / "val"
    if val_labels is not None:
        labels = Path(val_labels)
        val = scan_flat(val_root, labels if labels.is_absolute() or labels.exists() else root / labels, train.classes)
    else:
        val = scan_folder(val_root, train.classes)
    return train, val
