"""The transfer benchmarks by name (Sect. 4, Table 11): every benchmark module's `BENCHMARK`, and the functions
that look one up and load its splits. A new benchmark is one new module plus one line here."""

from __future__ import annotations

from pathlib import Path

from vggfeat.benchmarks import caltech101, caltech256, folder, voc2007, voc2012, voc2012_action
from vggfeat.benchmarks.base import Benchmark, DatasetError, ProbeSplit, SplitOptions

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        voc2007.BENCHMARK,
        voc2012.BENCHMARK,
        voc2012_action.BENCHMARK,
        caltech101.BENCHMARK,
        caltech256.BENCHMARK,
        folder.BENCHMARK,
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`; a DatasetError listing the valid names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise DatasetError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}") from None


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
    """The splits of benchmark `name` under `root` (else $VGGFEAT_DATA). VOC ignores the split options (its
    splits are fixed). Caltech-101: 30 train and up to 50 test images per class; Caltech-256: 60 train, the rest
    test; folder: `test_fraction` of each class for test (at least one image), or `train_per_class` train and
    the rest test when given. Random splits are drawn with a seed derived from (seed, split) and written to
    `splits_dir` (`<name>_split<i>_{train,test}.txt`, lines `relative/path class_id`); existing files there are
    read instead of drawing, so official or earlier splits are reused exactly.
    """
    options = SplitOptions(seed, splits, splits_dir, train_per_class, test_per_class, test_fraction)
    return get_benchmark(name).load_splits(root, options)
