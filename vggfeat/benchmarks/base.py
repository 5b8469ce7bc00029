"""What every transfer benchmark of Sect. 4 / Appendix B shares: its record (`Benchmark`), its splits
(`ProbeSplit`), the paper's numbers (`PaperRow`), the error for bad data (`DatasetError`) and the path and file
helpers of the readers (the bounded file readers live in vggfeat.utils.files, shared with data/ and evaluate/). A
leaf: it imports no vggfeat module but vggfeat.errors and vggfeat.utils.files, so every benchmark module can import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vggfeat.errors import DatasetError  # defined beside the other user-facing errors; the readers import it here
from vggfeat.utils.files import check_regular, file_kind, read_dataset_file, read_dataset_text  # noqa: F401 (the readers import them here)

DATA_ENV = "VGGFEAT_DATA"


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value; splits compare by identity
class ProbeSplit:
    benchmark: str  # the Benchmark's name (registry.BENCHMARKS)
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
    files: tuple[str, ...] = field(default=(), kw_only=True)  # the split files read or written (random splits)

    def __post_init__(self) -> None:
        for labels in (self.train_labels, self.test_labels):
            labels.flags.writeable = False  # frozen all the way down: a probe cannot edit the ground truth

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def unscored_classes(self) -> dict[int, str]:
        """{class index: why} for the classes that cannot be scored: no training positive (a probe would rank
        test images with no evidence, and its AP would count in the mean) or no test positive (no AP exists)."""
        reasons = {}
        for k in range(self.num_classes):
            missing = [
                name
                for name, labels in ((self.train_name, self.train_labels), (self.test_name, self.test_labels))
                if not (labels[:, k] == 1 if self.multilabel else labels == k).any()
            ]
            if missing:
                reasons[k] = f"no positives in {' or '.join(missing)}"
        return reasons

    def summary(self) -> str:
        return (
            f"{self.benchmark} split {self.split}: {len(self.classes)} classes, "
            f"{len(self.train_paths)} {self.train_name} / {len(self.test_paths)} {self.test_name} images"
        )


@dataclass(frozen=True)
class SplitOptions:
    """How a benchmark with random splits draws them; fixed-split benchmarks (VOC) ignore all of it."""

    seed: int = 0  # split i is drawn from numpy's generator seeded by (seed, i)
    splits: int = 3  # how many random splits (the paper's 3 for Caltech)
    splits_dir: str | Path | None = None  # split lists are read from here when present, else drawn and written
    train_per_class: int | None = None  # None: the benchmark's own quota (Caltech-101 30, Caltech-256 60)
    test_per_class: int | None = None  # None: the benchmark's own cap (Caltech-101 50, else the rest)
    test_fraction: float = 0.3  # folder without train_per_class: this fraction of each class is test


@dataclass(frozen=True)
class PaperRow:
    """One of the paper's published numbers for a benchmark: a reference printed beside ours, never ours."""

    method: str  # 'VGG Net-D', 'VGG Net-E', 'VGG Net-D & Net-E'
    mean: float  # percent
    std: float | None = None  # percent, over the paper's splits (Caltech); None for fixed splits
    table: str = "Table 11"


Score = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]]  # (scores (N, K), labels) -> (per class, headline)
Loader = Callable[[Path, SplitOptions], list[ProbeSplit]]  # (resolved data root, options) -> splits


@dataclass(frozen=True)
class Benchmark:
    """Everything about one benchmark; its module builds one and registry.py lists it."""

    name: str  # lower case id used on the command line: 'voc2007'
    title: str  # 'PASCAL VOC-2007 classification'
    load: Loader  # reads the dataset layout under the data root and applies the split rule
    split_rule: str  # the split rule in words, for --help and reports
    metric: str  # metric id recorded in reports: 'voc07_ap' | 'voc12_ap' | 'mean_class_recall'
    metric_title: str  # 'AP (VOC2007 11-point)'
    score: Score  # the metric on test scores
    headline: str  # what the mean over classes is called: 'mAP', 'mean class recall'
    multilabel: bool  # labels (N, K) in {1, -1, 0} (VOC) or (N,) class ids
    scales: tuple[int, ...]  # Appendix B's scales Q for on-the-fly extraction
    aggregate: str  # over scales: 'mean' (VOC) or 'stack' (Caltech)
    paper_rows: tuple[PaperRow, ...] = ()  # the paper's numbers for this benchmark (references)

    def load_splits(self, root: str | Path | None = None, options: SplitOptions | None = None) -> list[ProbeSplit]:
        """The splits under `root` (else $VGGFEAT_DATA)."""
        options = options or SplitOptions()
        if options.splits < 1:
            raise DatasetError(f"splits must be >= 1, got {options.splits}")
        splits = self.load(resolve_root(root), options)
        for split in splits:
            check_scorable(split)
        return splits


def check_scorable(split: ProbeSplit) -> None:
    """A DatasetError when no class of `split` has a positive in both its train and test sets: every score would
    be undefined (an all-negative test set is not 'mAP nan'). Classes that cannot be scored beside ones that can
    are excluded from the mean and marked in the reports (vggfeat.probes.run)."""
    if len(split.unscored_classes()) < split.num_classes:
        return
    for name, labels in ((split.test_name, split.test_labels), (split.train_name, split.train_labels)):
        if split.multilabel and not (labels == 1).any():
            raise DatasetError(
                f"{split.benchmark}: no class has a positive in {name} ({len(labels)} samples, every label -1 or 0): "
                f"nothing can be scored; check the {name} lists under --root"
            )
    raise DatasetError(
        f"{split.benchmark}: no class has a positive in both {split.train_name} and {split.test_name}: nothing can "
        f"be scored; check the lists under --root"
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


def present(path: Path) -> bool:
    """Whether anything is at `path` (a FIFO or a folder too, which the readers then refuse by name): an optional
    dataset file that is there but unreadable must not pass for an absent one."""
    return os.path.exists(path)


def find_dataset_dir(root: Path, names: tuple[str, ...], accept: Callable[[Path], bool]) -> Path | None:
    """The first of root, root/<name>, root/*/<name> (for each name, in order) that `accept` takes."""
    candidates = [root] + [root / n for n in names]
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    candidates += [c / n for c in children for n in names]
    for cand in candidates:
        if cand.is_dir() and accept(cand):
            return cand.resolve()
    return None


def benchmark_images(splits: list[ProbeSplit]) -> list[str]:
    """Every image any split trains or tests on, sorted, once: what a benchmark's feature store must hold."""
    return sorted({p for s in splits for p in (*s.train_paths, *s.test_paths)})
