"""PASCAL VOC-2012 classification (Sect. 4.1, Table 11): the test labels are private (evaluation server), so train
on train and report on val; 20 classes, all-point AP (the devkit's rule from 2010); descriptors averaged over
Q in {256, 384, 512, 640, 768} (Appendix B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggfeat import metrics
from vggfeat.benchmarks.base import Benchmark, PaperRow, ProbeSplit, SplitOptions
from vggfeat.benchmarks.voc import load_voc


def load(root: Path, options: SplitOptions) -> list[ProbeSplit]:
    return [load_voc(root, "voc2012", "2012", "train", "val", "voc12_ap")]


def score(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    per_class = np.asarray(metrics.voc12_ap(scores, labels))  # (K,): scores are (N, K)
    return per_class, float(np.nanmean(per_class))


BENCHMARK = Benchmark(
    name="voc2012",
    title="PASCAL VOC-2012 classification",
    load=load,
    split_rule="train -> val (fixed split; test labels are private)",
    metric="voc12_ap",
    metric_title="AP (VOC2010+ all-point)",
    score=score,
    headline="mAP",
    multilabel=True,
    scales=(256, 384, 512, 640, 768),  # Appendix B: five scales averaged; {256, 384, 512} was 0.3 points worse
    aggregate="mean",
    paper_rows=(PaperRow("VGG Net-D", 89.0), PaperRow("VGG Net-E", 89.0), PaperRow("VGG Net-D & Net-E", 89.3)),
)
