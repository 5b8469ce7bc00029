"""Class labels for `vggfeat evaluate` (Sect. 3.2): a label is the net's output index, so it must come from the
net's full class list (a train/ folder, a class-index file, or all K class folders of val/), never from whichever
val/ folders happen to be present - a val/ lacking classes would shift every label silently."""

from __future__ import annotations

from pathlib import Path

from vggfeat.errors import VggfeatError
from vggfeat.utils.files import read_dataset_text
from vggfeat.utils.text import shorten


class EvaluateError(VggfeatError, ValueError):
    """Evaluation settings or data that cannot give a correct error figure."""


def read_class_file(path: str | Path) -> tuple[str, ...]:
    """One class name (e.g. a wnid) per line, in the net's output order; blank lines and '#' comments skipped."""
    text = read_dataset_text(Path(path), "class file", EvaluateError)  # a FIFO is refused, never waited on
    lines: dict[str, int] = {}  # class name -> its line
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name = line.split()[0]
        if name in lines:
            raise EvaluateError(f"{path}, line {n}: class name {shorten(name)} repeats line {lines[name]}")
        lines[name] = n
    if not lines:
        raise EvaluateError(f"{path}: no class names (expected one class name per line)")
    return tuple(lines)


def resolve_classes(
    val_classes: tuple[str, ...], num_classes: int, classes: tuple[str, ...] | None, source: str = ""
) -> tuple[str, ...]:
    """The full class list (index = the net's output index) for val folders `val_classes`.

    `classes`: the list from train/ or a class file; without it, the val folders are the list only when there
    are exactly `num_classes` of them (then sorted, as train/ would give)."""
    if classes is None:
        if len(val_classes) != num_classes:
            raise EvaluateError(
                f"val/ has {len(val_classes)} class folders but the net has {num_classes} classes, so their labels "
                f"cannot be known; pass --classes FILE (one class name per line, in the net's order) or a data root "
                f"with train/<class>/ folders"
            )
        classes = tuple(sorted(val_classes))
    elif len(classes) != num_classes:
        raise EvaluateError(f"{source or 'the class list'} names {len(classes)} classes but the net has {num_classes}")
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise EvaluateError(
            f"val/ folders {', '.join(unknown)} are not in {source or 'the class list'}; their labels cannot be mapped"
        )
    return classes
