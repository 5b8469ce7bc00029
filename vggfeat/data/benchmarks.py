"""The linear-probe benchmarks of Sect. 4.1/5 as train/test splits: VOC-2007, VOC-2012, Caltech-101/256, any folder.

`load_benchmark(name, root)` returns one `ProbeSplit` per split (VOC: one; Caltech and folder: `splits` seeded
random splits). Each benchmark keeps its own rules (PAPER.md sect. 5): VOC trains on trainval (2007) or train
(2012) with labels in {1, -1, 0}; Caltech draws 30 (101) or 60 (256) training images per class. Every bad input
is a `DatasetError` naming the file (and line) at fault. The readers live in voc.py and caltech.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggfeat.errors import VggfeatError

BENCHMARKS = ("voc2007", "voc2012", "caltech101", "caltech256", "folder")
METRICS = ("voc07_ap", "voc12_ap", "mean_class_recall")
DATA_ENV = "VGGFEAT_DATA"


class DatasetError(VggfeatError, ValueError):
    """A benchmark tree or list file that cannot be used; the message names the file and line at fault."""


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; splits compare by identity
class ProbeSplit:
    benchmark: str  # one of BENCHMARKS
    split: int  # 0 for VOC; 0, 1, 2 for Caltech; the seeded split index for folder
    classes: tuple[str, ...]  # K class names; label c / column c is classes[c]
    multilabel: bool  # VOC True (an image may hold several classes); Caltech/folder False
    metric: str  # 'voc07_ap' | 'voc12_ap' | 'mean_class_recall'
    train_paths: tuple[str, ...]  # absolute, resolved image paths
    train_labels: np.ndarray  # multilabel: (N, K) int8 in {1, -1, 0}; else (N,) int64 class ids
    test_paths: tuple[str, ...]
    test_labels: np.ndarray
    train_name: str  # 'trainval' (VOC07), 'train' (VOC12, Caltech, folder)
    test_name: str  # 'test' (VOC07, Caltech, folder), 'val' (VOC12)

    def __post_init__(self) -> None:
        for labels in (self.train_labels, self.test_labels):
            labels.flags.writeable = False  # frozen all the way down: a probe cannot edit the ground truth

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> str:
        return (
            f"{self.benchmark} split {self.split}: {len(self.classes)} classes, "
            f"{len(self.train_paths)} {self.train_name} / {len(self.test_paths)} {self.test_name} images"
        )


def resolve_root(root: str | Path | None) -> Path:
    """The data root: `root`, else $VGGFEAT_DATA; a clear DatasetError when neither names a folder."""
    if root is None or str(root) == "":
        env = os.environ.get(DATA_ENV, "")
        if not env:
            raise DatasetError(
                f"no dataset root given: pass --root DIR or set {DATA_ENV}=DIR "
                "(the folder holding VOCdevkit, 101_ObjectCategories, ...)"
            )
        root, source = env, f"${DATA_ENV}"
    else:
        source = "root"
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"no such dataset folder: {path} (from {source}); pass --root DIR or set {DATA_ENV}")
    return path.resolve()


def check_inside(path: Path, root: Path, where: str) -> Path:
    """`path` resolved (symlinks followed); a DatasetError naming `where` when it lands outside `root`."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise DatasetError(f"{where}: {path} resolves to {real}, outside the dataset folder {root}")
    return real


def find_dataset_dir(root: Path, names: tuple[str, ...], accept) -> Path | None:
    """The first of root, root/<name>, root/*/<name> (for each name, in order) that `accept` takes."""
    candidates = [root] + [root / n for n in names]
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    candidates += [c / n for c in children for n in names]
    for cand in candidates:
        if cand.is_dir() and accept(cand):
            return cand.resolve()
    return None


def load_benchmark(
    name: str,
    root: str | Path | None = None,
    *,
    seed: int = 0,
    splits: int = 3,
    splits_dir: str | Path | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    test_fraction: float = 0.3,
) -> list[ProbeSplit]:
    """The benchmark's splits. VOC ignores seed/splits/per-class counts (its splits are fixed).

    Caltech-101: 30 train and up to 50 test images per class; Caltech-256: 60 train, the rest test;
    folder: `test_fraction` of each class for test (at least one image), or `train_per_class` train and the
    rest test when given. Random splits are drawn with a seed derived from (seed, split) and written to
    `splits_dir` (`<name>_split<i>_{train,test}.txt`, lines `relative/path class_id`); existing files there
    are read instead of drawing, so official or earlier splits are reused exactly.
    """
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    base = resolve_root(root)
    if name in ("voc2007", "voc2012"):
        from .voc import load_voc

        return [load_voc(base, year=name[3:])]
    from .caltech import CALTECH_DEFAULTS, find_caltech, load_random_splits

    if splits < 1:
        raise DatasetError(f"splits must be >= 1, got {splits}")
    if name == "folder":
        data_dir, n_train, n_test = base, train_per_class, test_per_class
    else:
        data_dir = find_caltech(base, name)
        d_train, d_test = CALTECH_DEFAULTS[name]
        n_train = train_per_class if train_per_class is not None else d_train
        n_test = test_per_class if test_per_class is not None else d_test
    return load_random_splits(
        name,
        data_dir,
        seed=seed,
        splits=splits,
        splits_dir=splits_dir,
        train_per_class=n_train,
        test_per_class=n_test,
        test_fraction=test_fraction,
    )


def benchmark_images(splits: list[ProbeSplit]) -> list[str]:
    """Every image any split trains or tests on, sorted, once: what a benchmark's feature store must hold."""
    return sorted({p for s in splits for p in (*s.train_paths, *s.test_paths)})
