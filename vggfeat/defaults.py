"""Every default a user meets in more than one place, defined once: the commands' options and the library's
keyword arguments both read them here. A leaf module: it imports nothing from vggfeat, so any layer may use it.
Per-benchmark extraction settings (Appendix B's scales and aggregation) live with each benchmark's definition.
"""

from __future__ import annotations

from pathlib import Path

OUT_ROOT = Path("vggfeat-out")  # every command's output folder when -o is not given: OUT_ROOT/<what it did>

# how images become descriptors
LAYER = "fc7"  # the paper's descriptor (Sect. 4): fc7 after its ReLU
DEVICE = "auto"  # CUDA when torch sees a GPU, else the CPU
BATCH_SIZE = 16  # images per forward pass (their flipped copies ride along)
WORKERS = 4  # loader processes asked for; utils.cpus.share_cpus caps them to the CPUs this process may use
FUSION_L2 = "per-net"  # several nets (Appendix B's D & E): each net L2-normalised before stacking

# how descriptors are probed
SEED = 0  # random splits, held-out sets, random nets
SPLITS = 3  # Caltech's three random splits (Appendix B)
# Appendix B gives no C: the SVM's cost is chosen per class on held-out training images from this grid
COSTS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
HOLDOUT = 0.2  # fraction of the training images held out to choose C
KNN_K = 20  # neighbours that vote
KNN_INDEX = "flat"  # exact search
KNN_TEMPERATURE = 0.07  # votes weighted by exp(similarity / T)

# low-shot VOC-2007 (beyond the paper), scored as the self-supervised suites score it
LOW_SHOT_KS = (1, 2, 4, 8, 16, 32, 64, 96)
LOW_SHOT_SAMPLES = 5
# VISSL's voc07 low-shot costs_list; C is chosen per k on test, as the suites do
LOW_SHOT_SUITES_COSTS = (0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 50.0, 100.0, 1000.0)
# vggfeat's first low-shot scoring's grid, also the demo's (a coarse grid: the demo's probes are small)
COARSE_COSTS = (0.01, 0.1, 1.0, 10.0, 100.0)


def grid_text(costs: tuple[float, ...]) -> str:
    """'0.001,0.003,...,100': a cost grid as the --Cs option takes it."""
    return ",".join(f"{c:g}" for c in costs)


def out_dir(name: str) -> Path:
    """The output folder of a job called `name` when -o is not given."""
    return OUT_ROOT / name
