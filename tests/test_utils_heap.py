"""Freed tensor memory stays in the process: after a warm-up, a forward's maps land on resident pages instead of
being mapped and page-faulted (zeroed by the kernel) again. Each case runs in a fresh interpreter, since the
policy is process-wide and cannot be undone."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="a glibc malloc policy"
)

# page faults of one forward-like step (32 MB maps through convs and a pool), after warm-up steps
FAULTS = """
import resource, torch
import torch.nn.functional as F
w = torch.randn(32, 32, 3, 3)
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(1, 32, 512, 512)
    for _ in range(4):
        x = F.relu(F.conv2d(x, w, padding=1))
    y = F.max_pool2d(x, 2)
    del x, y
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def faults_after_warm_up():
    return max([step() for _ in range(4)][2:])
"""
PAGES = (32 << 20) // 4096  # one map


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS + textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_freed_memory_is_faulted_in_again_by_default():
    # the case the policy exists for: glibc unmaps each map on free, so every step faults them all in again
    assert int(run("print(faults_after_warm_up())")) > 4 * PAGES


def test_kept_memory_is_reused_without_faults_after_warm_up():
    code = """
    from vggfeat.utils.heap import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
    print(faults_after_warm_up())
    """
    assert int(run(code)) < PAGES // 4


def test_the_cpu_engine_keeps_freed_memory_and_the_runtime_can_decline():
    code = """
    import vggfeat
    from vggfeat.features.engine import DescriptorEngine
    from vggfeat.features.nets import VGGFeatureNet
    from vggfeat.features.protocol import Protocol
    from vggfeat.features.runtime import Runtime
    from vggfeat.utils import heap
    net = VGGFeatureNet(vggfeat.create_model("vgg_a", width_mult=1 / 16, fc_dim=32, fc6_kernel=2, num_classes=10))
    DescriptorEngine([net], Protocol(scales=(64,)), Runtime(device="cpu", keep_freed_memory={keep}))
    print(heap._state["kept"])
    """
    assert run(code.format(keep=True)) == "True"
    assert run(code.format(keep=False)) == "False"
