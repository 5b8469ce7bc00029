"""Any class-per-folder tree as a benchmark (ROOT/<class>/**/<image>), probed like Caltech (Appendix B): seeded
random splits holding out a fraction (or all but `train_per_class`) of each class for test, mean class recall;
descriptors averaged over Q in {256, 384, 512}. Not in the paper, so no paper rows."""

from __future__ import annotations

from pathlib import Path

from vggfeat.benchmarks.base import Benchmark, ProbeSplit, SplitOptions
from vggfeat.benchmarks.caltech import load_random_splits, score_recall


def load(root: Path, options: SplitOptions) -> list[ProbeSplit]:
    return load_random_splits("folder", root, options, recursive=True)


BENCHMARK = Benchmark(
    name="folder",
    title="class-per-folder images",
    load=load,
    split_rule="a test fraction (or all but train_per_class) of each class, seeded random splits",
    metric="mean_class_recall",
    metric_title="recall (mean class recall)",
    score=score_recall,
    headline="mean class recall",
    multilabel=False,
    scales=(256, 384, 512),
    aggregate="mean",
)
