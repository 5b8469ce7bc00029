"""Seeded random splits of class-per-folder trees (Appendix B): what caltech101.py, caltech256.py and folder.py share.

Split i is drawn with numpy's generator seeded by (seed, i) and written as text (`relative/path class_id` per
line, or the JSON line `["relative/path", class_id]` for a name that a plain line cannot hold: a newline, edge
spaces, a leading # or [) so that runs compare on the same images; split files that already exist are read
instead, which also admits official splits. A file vggfeat drew records the seed and rule that drew it and is
reused only for them (a hand-supplied file records none and is used as given). A class with no more images
than the training quota keeps one image for testing and trains on the rest (logged as a warning); a class with
fewer than two images is an error. Single-label benchmarks score with mean class recall.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path, PurePosixPath

import numpy as np

from vggfeat import metrics
from vggfeat.benchmarks.base import (
    DatasetError,
    ProbeSplit,
    SplitOptions,
    check_inside,
    check_regular,
    find_dataset_dir,
    present,
    read_dataset_file,
)
from vggfeat.data.images import is_image_file
from vggfeat.utils.files import atomic_write_text, parse_json
from vggfeat.utils.text import decimal_int, shorten

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
            if any(part.startswith(".") for part in parts) or not is_image_file(p) or p.is_dir():
                continue
            check_regular(p, "image")  # a FIFO named like an image would block its decoder: refused by name
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


DRAWN_BY = "# drawn by: "  # a split file's JSON record of the seed and rule that drew it
# the header vggfeat wrote before the record existed: it names the seed and the rule too
_OLD_HEADER = re.compile(r"# vggfeat \S+ split \d+ (?:train|test): seed (-?\d+), (.*), test cap (\S+); dataset folder ")


def write_split_file(path: Path, rows: list[tuple[str, int]], header: str, record: dict | None = None) -> None:
    """One line per image: `relative/path class_id`, or `["relative/path", class_id]` (JSON, ASCII) for a file
    name the plain form would break, so any legal name round-trips. `record`: the seed and rule that drew it."""
    body = "".join(f"{rel} {label}\n" if _plain(rel) else json.dumps([rel, label]) + "\n" for rel, label in rows)
    drawn = f"{DRAWN_BY}{json.dumps(record)}\n" if record is not None else ""
    atomic_write_text(
        path,
        f"# {_escape(header)}\n{drawn}# lines: <image path relative to the dataset folder> <class id>, "
        'or ["<path>", <class id>] as JSON\n' + body,
    )


def split_rule(
    table: ClassFiles, seed: int, train_per_class: int | None, test_per_class: int | None, test_fraction: float
) -> dict:
    """What a drawn split depends on: the seed, the per-class quotas and the images of each class folder."""
    quota = f"{train_per_class} train per class" if train_per_class is not None else f"test fraction {test_fraction}"
    images = hashlib.sha256(json.dumps(list(table.items())).encode()).hexdigest()[:16]
    return {"seed": seed, "rule": f"{quota}, test cap {test_per_class}", "images": images}


def split_record(path: Path) -> dict | None:
    """The seed and rule recorded in a split file's header; None for a file vggfeat did not draw."""
    # read without blocking (a FIFO is refused by name); split files are small, read whole
    lines = read_dataset_file(path, "split file").decode("utf-8", errors="surrogateescape").splitlines(keepends=True)
    head = (lines + ["", "", ""])[:3]
    for line in head:
        if line.startswith(DRAWN_BY):
            try:
                record = parse_json(line[len(DRAWN_BY) :])
            except ValueError:
                where = f"{path}, line {head.index(line) + 1}"
                raise DatasetError(f"{where}: unreadable record {shorten(line.strip())}") from None
            return record if isinstance(record, dict) else None
    old = _OLD_HEADER.match(head[0])
    if old is None:
        return None
    try:
        return {"seed": int(old[1]), "rule": f"{old[2]}, test cap {old[3]}"}
    except ValueError:  # thousands of digits, which int() refuses
        raise DatasetError(f"{path}, line 1: unreadable seed {shorten(old[1])}") from None


def _rule_text(record: dict, key: str) -> str:
    if key == "images":
        return "the class folders' images as they were then"
    return f"seed {record[key]}" if key == "seed" else f"rule {record[key]!r}"


def check_split_record(path: Path, asked: dict) -> None:
    """A DatasetError unless the split file at `path` was drawn with the asked seed and rule (or by hand)."""
    record = split_record(path)
    if record is None:
        return  # official or hand-written splits are used as they are
    differ = [k for k in asked if k in record and record[k] != asked[k]]
    if differ:
        then = ", ".join(_rule_text(record, k) for k in differ)
        now = ", ".join(_rule_text(asked, k).replace("as they were then", "as they are now") for k in differ)
        raise DatasetError(
            f"{path} was drawn with {then}, not {now} as asked: split files are reused only with the seed and "
            f"rule that drew them; choose another -o for this run, or delete {path.parent} to draw them again"
        )


def _split_line(path: Path, n: int, line: str) -> tuple[str, str, bool] | None:
    """(relative path, class, is JSON) of one line; None for a blank line or a comment. A line starting with
    [ that is not a JSON pair is read the plain way (an older file naming such an image)."""
    line = line.strip()
    if line.startswith("["):
        try:
            rel, cls = parse_json(line)
            if isinstance(rel, str) and isinstance(cls, (int, str)) and not isinstance(cls, bool):
                return rel, str(cls), True
        except (ValueError, TypeError):
            pass
    if not line or line.startswith("#"):
        return None
    parts = line.rsplit(None, 1)  # file names may hold spaces; the class never does
    if len(parts) != 2:
        raise DatasetError(f"{path}, line {n}: expected '<relative/path> <class id>', got {shorten(line)}")
    return parts[0], parts[1], False


def read_split_file(path: Path, data_dir: Path, classes: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(resolved path, class id, line) per line of `relative/path class` or `["relative/path", class]` (class:
    an id or a class name)."""
    index = {c: i for i, c in enumerate(classes)}
    rows: list[tuple[str, int, int]] = []
    seen: dict[str, int] = {}  # resolved image path -> its line
    # only "\n" ends a line: splitlines() would also cut at \r, \f or U+2028, which plain lines never hold
    text = read_dataset_file(path, "split file").decode("utf-8", errors="surrogateescape")
    for n, raw in enumerate(text.split("\n"), start=1):
        parsed = _split_line(path, n, raw)
        if parsed is None:
            continue
        rel, cls, is_json = parsed
        label = decimal_int(cls)  # written files hold ids
        label = index.get(cls, -1) if label is None else label
        if not 0 <= label < len(classes):
            where = f"{path}, line {n}: unknown class {shorten(cls)} ({len(classes)} classes)"
            raise DatasetError(f"{where} in {shorten(raw.strip())}")
        pure = PurePosixPath(rel if is_json else rel.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise DatasetError(f"{path}, line {n}: path {rel!r} escapes the dataset folder {data_dir}")
        if pure.parts[0] in index and pure.parts[0] != classes[label]:
            raise DatasetError(
                f"{path}, line {n}: {rel!r} is in folder {pure.parts[0]!r} but labelled "
                f"{classes[label]!r} (class ids follow the sorted class folders)"
            )
        image = data_dir / pure
        check_regular(image, "image", f"{path}, line {n}")
        real = str(check_inside(image, data_dir, f"{path}, line {n}"))
        if real in seen:
            raise DatasetError(f"{path}, line {n}: {rel!r} repeats line {seen[real]}")
        seen[real] = n
        rows.append((real, label, n))
    if not rows:
        raise DatasetError(f"{path} lists no images; delete it to draw the split again, or list the split's images")
    return rows


def _split_from_rows(
    name: str, split: int, classes: tuple[str, ...], train: list, test: list, files: list[Path]
) -> ProbeSplit:
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
        files=tuple(map(str, files)),
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
    rule = split_rule(table, seed, train_per_class, test_per_class, test_fraction)
    out = []
    for i in range(splits):
        files = [Path(splits_dir) / f"{name}_split{i}_{part}.txt" for part in ("train", "test")] if splits_dir else []
        found = [present(f) for f in files]
        if files and all(found):
            for f in files:
                check_split_record(f, rule)
            train, test = (read_split_file(f, data_dir, classes) for f in files)
            train_set = {p for p, _, _ in train}
            clash = next((r for r in test if r[0] in train_set), None)
            if clash is not None:
                raise DatasetError(f"{files[1]}, line {clash[2]}: {clash[0]} is also in {files[0]}")
            log.info("%s split %d: read %s and %s", name, i, files[0], files[1])
            out.append(_split_from_rows(name, i, classes, [r[:2] for r in train], [r[:2] for r in test], files))
            continue
        if any(found):
            have, lack = (files[0], files[1]) if found[0] else (files[1], files[0])
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
            os.makedirs(files[0].parent, exist_ok=True)
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
                    rule,
                )
        train_abs = [(os.path.realpath(data_dir / rel), c) for rel, c in train_rel]
        test_abs = [(os.path.realpath(data_dir / rel), c) for rel, c in test_rel]
        out.append(_split_from_rows(name, i, classes, train_abs, test_abs, files))
    return out
