"""PASCAL VOC-2012 action classification (Sect. 4.1, Table 12): a sample is one person box in one image, 10 actions
('other' is not scored), train on train and report all-point AP on val (test labels are private). The descriptor
stacks the whole image's (VOC's Appendix B settings) and the person box's; vggfeat.probes.action builds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vggfeat import metrics
from vggfeat.benchmarks import voc2012
from vggfeat.benchmarks.base import Benchmark, PaperRow, ProbeSplit, SplitOptions
from vggfeat.benchmarks.voc_action import action_probe_split, load_voc_action

IMAGE_AND_BOX = "VGG Net-D & Net-E, image + person box"
IMAGE_ONLY = "VGG Net-D & Net-E, image only"


def load(root: Path, options: SplitOptions) -> list[ProbeSplit]:
    return [action_probe_split(*load_voc_action(root))]


def score(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    per_class = np.asarray(metrics.voc12_ap(scores, labels))  # (K,): scores are (N, K)
    return per_class, float(np.nanmean(per_class))


BENCHMARK = Benchmark(
    name="voc2012-action",
    title="PASCAL VOC-2012 action classification",
    load=load,
    split_rule="train -> val person instances (fixed split; test labels are private)",
    metric="voc12_ap",
    metric_title="AP (VOC2010+ all-point)",
    score=score,
    headline="mAP",
    multilabel=True,
    scales=voc2012.BENCHMARK.scales,  # VOC's (Appendix B), for the image and the box alike
    aggregate="mean",
    paper_rows=(PaperRow(IMAGE_AND_BOX, 84.0, table="Table 12"), PaperRow(IMAGE_ONLY, 79.2, table="Table 12")),
)
