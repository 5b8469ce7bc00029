"""Seeded random splits of class-per-folder trees (Appendix B): what caltech101.py, caltech256.py and folder.py share.

Split i is drawn with numpy's generator seeded by (seed, i) and written as text (`relative/path class_id` per
line, or the JSON line `["relative/path", class_id]` for a name that a plain line cannot hold: a newline, edge
spaces, a leading # or [) so that runs compare on the same images; split files that already exist are read
instead, which also admits official splits. A class with no more images than the training quota keeps one
image for testing and trains on the rest (logged as a warning); a class with fewer than two images is an
error. Single-label benchmarks score with mean class recall.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath

import numpy as np

from vggfeat.benchmarks.base import DatasetError, ProbeSplit, SplitOptions, check_inside, find_dataset_dir
from vggfeat.data.images import is_image_file
from vggfeat.probes import metrics
from vggfeat.utils.files import atomic_write_text

log = logging.getLogger(__name__)

ClassFiles = dict[str, list[str]]  # class name -> sorted image paths relative to the dataset folder


def score_recall(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class recall and mean class recall of the argmax of test `scores` (N, K) against class ids (N,)."""
    pred = np.asarray(scores).argmax(axis=1)
    k = np.asarray(scores).shape[1]
    per_class = metrics.per_class_recall(labels, pred, num_classes=k)
    return per_class, float(metrics.mean_class_recall(labels, pred, num_classes=k))


def find_caltech(root: Path, name: str, folder: str, marker: str) -> Path:
    """The <folder> (e.g. 101_ObjectCategories, recognised by its class folder `marker`): root itself,
    root/<folder>, or root/*/<folder>."""
    found = find_dataset_dir(root, (folder,), lambda c: c.name == folder or (c / marker).is_dir())
    if found is None:
        raise DatasetError(
            f"{root}: no {folder} folder found for {name} (looked in {root}, {root}/{folder} and {root}/*/{folder})"
        )
    return found


def scan_classes(data_dir: Path, recursive: bool) -> ClassFiles:
    """Class folders (sorted) and their images; hidden entries and non-image files are ignored."""
    data_dir = data_dir.resolve()
    if not data_dir.is_dir():
        raise DatasetError(f"no such dataset folder: {data_dir}")
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{data_dir}: no class folders (expected {data_dir}/<class>/<image>)")
    table: ClassFiles = {}
    for cls in classes:
        folder = data_dir / cls
        files = folder.rglob("*") if recursive else folder.iterdir()
        rel = []
        for p in files:
            parts = p.relative_to(data_dir).parts
            if any(part.startswith(".") for part in parts) or not is_image_file(p) or not p.is_file():
                continue
            check_inside(p, data_dir, str(p))  # a symlink out of the dataset is an error
            rel.append(PurePosixPath(*parts).as_posix())
        table[cls] = sorted(rel)
    return table


def _quota(
    cls: str, n: int, train_per_class: int | None, test_per_class: int | None, test_fraction: float, where: Path
) -> tuple[int, int]:
    """(train, test) image counts for a class of n images."""
    if n < 2:
        raise DatasetError(f"{where / cls}: {n} images; a class needs at least 2 (one to train, one to test)")
    if train_per_class is not None:
        n_train = min(train_per_class, n - 1)
    else:
        n_train = n - min(n - 1, max(1, round(n * test_fraction)))
    n_test = n - n_train if test_per_class is None else min(test_per_class, n - n_train)
    return n_train, n_test


def draw_split(
    table: ClassFiles,
    seed: int,
    split: int,
    *,
    train_per_class: int | None,
    test_per_class: int | None,
    test_fraction: float,
    where: Path,
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) lists of (relative path, class id), disjoint, in class order; deterministic in (seed, split)."""
    rng = np.random.default_rng([seed, split])
    train, test, short = [], [], []
    for label, (cls, files) in enumerate(table.items()):
        n_train, n_test = _quota(cls, len(files), train_per_class, test_per_class, test_fraction, where)
        if train_per_class is not None and n_train < train_per_class:
            short.append(f"{cls} ({len(files)})")
        order = rng.permutation(len(files))
        train += [(files[i], label) for i in sorted(order[:n_train])]
        test += [(files[i], label) for i in sorted(order[n_train : n_train + n_test])]
    if short:
        log.warning(
            "%s: %d classes have no more than %d images, so they train on all but one and test on one: %s",
            where,
            len(short),
            train_per_class,
            ", ".join(short[:10]) + (" ..." if len(short) > 10 else ""),
        )
    return train, test


def _plain(rel: str) -> bool:
    """Whether `rel <id>` reads back as `rel`: printable, no edge spaces, no backslash (read as a Windows
    separator), and not starting like a comment or a JSON line."""
    return rel == rel.strip() and rel[:1] not in ("#", "[") and "\\" not in rel and rel.isprintable()


def _escape(text: str) -> str:
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def write_split_file(path: Path, rows: list[tuple[str, int]], header: str) -> None:
    """One line per image: `relative/path class_id`, or `["relative/path", class_id]` (JSON, ASCII) for a file
    name the plain form would break, so any legal name round-trips (issue 12.6)."""
    body = "".join(f"{rel} {label}\n" if _plain(rel) else json.dumps([rel, label]) + "\n" for rel, label in rows)
    atomic_write_text(
        path,
        f"# {_escape(header)}\n# lines: <image path relative to the dataset folder> <class id>, "
        'or ["<path>", <class id>] as JSON\n' + body,
    )


def _split_line(path: Path, n: int, line: str) -> tuple[str, str, bool] | None:
    """(relative path, class, is JSON) of one line; None for a blank line or a comment. A line starting with
    [ that is not a JSON pair is read the plain way (an older file naming such an image)."""
    line = line.strip()
    if line.startswith("["):
        try:
            rel, cls = json.loads(line)
            if isinstance(rel, str) and isinstance(cls, (int, str)) and not isinstance(cls, bool):
                return rel, str(cls), True
        except (ValueError, TypeError):
            pass
    if not line or line.startswith("#"):
        return None
    parts = line.rsplit(None, 1)  # file names may hold spaces; the class never does
    if len(parts) != 2:
        raise DatasetError(f"{path}, line {n}: expected '<relative/path> <class id>', got {line!r}")
    return parts[0], parts[1], False


def read_split_file(path: Path, data_dir: Path, classes: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(resolved path, class id, line) per line of `relative/path class` or `["relative/path", class]` (class:
    an id or a class name)."""
    index = {c: i for i, c in enumerate(classes)}
    rows, seen = [], {}
    # only "\n" ends a line: splitlines() would also cut at \r, \f or U+2028, which plain lines never hold
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    for n, raw in enumerate(text.split("\n"), start=1):
        parsed = _split_line(path, n, raw)
        if parsed is None:
            continue
        rel, cls, is_json = parsed
        label = int(cls) if cls.isdigit() else index.get(cls, -1)  # written files hold ids
        if not 0 <= label < len(classes):
            raise DatasetError(f"{path}, line {n}: unknown class {cls!r} ({len(classes)} classes) in {raw.strip()!r}")
        pure = PurePosixPath(rel if is_json else rel.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise DatasetError(f"{path}, line {n}: path {rel!r} escapes the dataset folder {data_dir}")
        if pure.parts[0] in index and pure.parts[0] != classes[label]:
            raise DatasetError(
                f"{path}, line {n}: {rel!r} is in folder {pure.parts[0]!r} but labelled "
                f"{classes[label]!r} (class ids follow the sorted class folders)"
            )
        image = data_dir / pure
        if not image.is_file():
            raise DatasetError(f"{path}, line {n}: image not found: {image}")
        real = str(check_inside(image, data_dir, f"{path}, line {n}"))
        if real in seen:
            raise DatasetError(f"{path}, line {n}: {rel!r} repeats line {seen[real]}")
        seen[real] = n
        rows.append((real, label, n))
    return rows


def _split_from_rows(name: str, split: int, classes: tuple[str, ...], train: list, test: list) -> ProbeSplit:
    return ProbeSplit(
        name,
        split,
        classes,
        False,
        "mean_class_recall",
        tuple(p for p, _ in train),
        np.array([c for _, c in train], dtype=np.int64),
        tuple(p for p, _ in test),
        np.array([c for _, c in test], dtype=np.int64),
        "train",
        "test",
    )


def load_random_splits(
    name: str,
    data_dir: Path,
    options: SplitOptions,
    *,
    recursive: bool = False,
    expected_classes: int | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> list[ProbeSplit]:
    """`options.splits` ProbeSplits of a class-per-folder tree: read from `options.splits_dir` when there, else
    drawn (and written). The per-class quotas in `options` win over the benchmark's own given here."""
    seed, splits, splits_dir, test_fraction = options.seed, options.splits, options.splits_dir, options.test_fraction
    if options.train_per_class is not None:
        train_per_class = options.train_per_class
    if options.test_per_class is not None:
        test_per_class = options.test_per_class
    if train_per_class is None and not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    if train_per_class is not None and train_per_class < 1:
        raise DatasetError(f"train_per_class must be >= 1, got {train_per_class}")
    data_dir = Path(data_dir).resolve()
    table = scan_classes(data_dir, recursive=recursive)
    classes = tuple(table)
    if expected_classes is not None and len(classes) != expected_classes:
        log.warning("%s: %d class folders, but %s has %d", data_dir, len(classes), name, expected_classes)
    out = []
    for i in range(splits):
        files = [Path(splits_dir) / f"{name}_split{i}_{part}.txt" for part in ("train", "test")] if splits_dir else []
        present = [f.is_file() for f in files]
        if files and all(present):
            train, test = (read_split_file(f, data_dir, classes) for f in files)
            train_set = {p for p, _, _ in train}
            clash = next((r for r in test if r[0] in train_set), None)
            if clash is not None:
                raise DatasetError(f"{files[1]}, line {clash[2]}: {clash[0]} is also in {files[0]}")
            log.info("%s split %d: read %s and %s", name, i, files[0], files[1])
            out.append(_split_from_rows(name, i, classes, [r[:2] for r in train], [r[:2] for r in test]))
            continue
        if any(present):
            have, lack = (files[0], files[1]) if present[0] else (files[1], files[0])
            raise DatasetError(f"{have} exists but {lack} does not: supply both files of the split or neither")
        train_rel, test_rel = draw_split(
            table,
            seed,
            i,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            test_fraction=test_fraction,
            where=data_dir,
        )
        if files:
            os.makedirs(splits_dir, exist_ok=True)
            quota = (
                f"{train_per_class} train per class"
                if train_per_class is not None
                else f"test fraction {test_fraction}"
            )
            for f, rows, part in zip(files, (train_rel, test_rel), ("train", "test"), strict=False):
                write_split_file(
                    f,
                    rows,
                    f"vggfeat {name} split {i} {part}: seed {seed}, {quota}, "
                    f"test cap {test_per_class}; dataset folder {data_dir}",
                )
        train_abs = [(os.path.realpath(data_dir / rel), c) for rel, c in train_rel]
        test_abs = [(os.path.realpath(data_dir / rel), c) for rel, c in test_rel]
        out.append(_split_from_rows(name, i, classes, train_abs, test_abs))
    return out
