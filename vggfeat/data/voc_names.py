"""The PASCAL VOC devkits' class and action names, in the devkits' order (the order of the label columns).

A leaf shared by the benchmark readers (vggfeat.benchmarks.voc, voc_action) and the synthetic VOC trees
(synthetic_voc.py, synthetic_voc_action.py), so data needs nothing from the benchmarks above it."""

from __future__ import annotations

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# the 10 scored actions of VOC-2012 action classification (Table 12)
VOC_ACTIONS = (
    "jumping",
    "phoning",
    "playinginstrument",
    "reading",
    "ridingbike",
    "ridinghorse",
    "running",
    "takingphoto",
    "usingcomputer",
    "walking",
)
ACTION_OTHER = "other"  # annotated, but not one of the 10 scored actions
