"""Caltech-101 (Sect. 4.2, Table 11): 102 classes (101 + BACKGROUND_Google), 3 seeded random splits of 30 training
and up to 50 test images per class, mean class recall (mean +- std over splits); descriptors stacked over
Q in {256, 384, 512} (Appendix B)."""

from __future__ import annotations

from pathlib import Path

from vggfeat.benchmarks.base import Benchmark, PaperRow, ProbeSplit, SplitOptions
from vggfeat.benchmarks.caltech import find_caltech, load_random_splits, score_recall

FOLDER, MARKER, NUM_CLASSES = "101_ObjectCategories", "BACKGROUND_Google", 102
TRAIN_PER_CLASS, TEST_PER_CLASS = 30, 50


def load(root: Path, options: SplitOptions) -> list[ProbeSplit]:
    return load_random_splits(
        "caltech101",
        find_caltech(root, "caltech101", FOLDER, MARKER),
        options,
        expected_classes=NUM_CLASSES,
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
    )


BENCHMARK = Benchmark(
    name="caltech101",
    title="Caltech-101",
    load=load,
    split_rule=f"{TRAIN_PER_CLASS} train and up to {TEST_PER_CLASS} test images per class, 3 seeded random splits",
    metric="mean_class_recall",
    metric_title="recall (mean class recall)",
    score=score_recall,
    headline="mean class recall",
    multilabel=False,
    scales=(256, 384, 512),
    aggregate="stack",
    paper_rows=(
        PaperRow("VGG Net-D", 91.8, 1.0),
        PaperRow("VGG Net-E", 92.3, 0.5),
        PaperRow("VGG Net-D & Net-E", 92.7, 0.5),
    ),
)
