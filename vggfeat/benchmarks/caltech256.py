"""Caltech-256 (Sect. 4.2, Table 11): 257 classes (256 + 257.clutter), 3 seeded random splits of 60 training
images per class and the rest for testing, mean class recall (mean +- std over splits); descriptors stacked over
Q in {256, 384, 512} (Appendix B)."""

from __future__ import annotations

from pathlib import Path

from vggfeat.benchmarks.base import Benchmark, PaperRow, ProbeSplit, SplitOptions
from vggfeat.benchmarks.caltech import find_caltech, load_random_splits, score_recall

FOLDER, MARKER, NUM_CLASSES = "256_ObjectCategories", "257.clutter", 257
TRAIN_PER_CLASS = 60


def load(root: Path, options: SplitOptions) -> list[ProbeSplit]:
    return load_random_splits(
        "caltech256",
        find_caltech(root, "caltech256", FOLDER, MARKER),
        options,
        expected_classes=NUM_CLASSES,
        train_per_class=TRAIN_PER_CLASS,
    )


BENCHMARK = Benchmark(
    name="caltech256",
    title="Caltech-256",
    load=load,
    split_rule=f"{TRAIN_PER_CLASS} train images per class, the rest test, 3 seeded random splits",
    metric="mean_class_recall",
    metric_title="recall (mean class recall)",
    score=score_recall,
    headline="mean class recall",
    multilabel=False,
    scales=(256, 384, 512),
    aggregate="stack",
    paper_rows=(
        PaperRow("VGG Net-D", 85.0, 0.2),
        PaperRow("VGG Net-E", 85.1, 0.3),
        PaperRow("VGG Net-D & Net-E", 86.2, 0.3),
    ),
)
