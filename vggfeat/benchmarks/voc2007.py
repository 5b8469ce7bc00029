"""PASCAL VOC-2007 classification (Sect. 4.1, Table 11): train on trainval (5,011 images), test on test (4,952),
20 classes, the devkit's 11-point AP per class; descriptors averaged over Q in {256, 384, 512, 640, 768}
(Appendix B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggfeat import metrics
from vggfeat.benchmarks.base import Benchmark, PaperRow, ProbeSplit, SplitOptions
from vggfeat.benchmarks.voc import load_voc


def load(root: Path, options: SplitOptions) -> list[ProbeSplit]:
    return [load_voc(root, "voc2007", "2007", "trainval", "test", "voc07_ap")]


def score(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    per_class = np.asarray(metrics.voc07_ap(scores, labels))  # (K,): scores are (N, K)
    return per_class, float(np.nanmean(per_class))


BENCHMARK = Benchmark(
    name="voc2007",
    title="PASCAL VOC-2007 classification",
    load=load,
    split_rule="trainval -> test (fixed split)",
    metric="voc07_ap",
    metric_title="AP (VOC2007 11-point)",
    score=score,
    headline="mAP",
    multilabel=True,
    scales=(256, 384, 512, 640, 768),  # Appendix B: five scales averaged; {256, 384, 512} was 0.3 points worse
    aggregate="mean",
    paper_rows=(PaperRow("VGG Net-D", 89.3), PaperRow("VGG Net-E", 89.3), PaperRow("VGG Net-D & Net-E", 89.7)),
)
