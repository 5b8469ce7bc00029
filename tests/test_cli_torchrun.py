"""Under torchrun the command speaks once: rank 0 prints the run's summary or its Error line, the other processes
exit with the same code without repeating it (two gloo processes on the CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY
from PIL import Image

import vggfeat
from vggfeat.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--scales", "64", "--workers", "0", "--quiet", "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port"]
    return subprocess.run(
        [*command, str(free_port()), "-m", "vggfeat", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{k}.png")
    vggfeat.save_weights(vggfeat.create_model("vgg_d", seed=0, **TINY), tmp_path / "d.safetensors")
    return tmp_path


def test_torchrun_prints_one_summary_and_one_error_line(inputs):
    args = ["extract", "imgs", "-o", "feats", "--weights", "d.safetensors", *FAST]
    done = torchrun(*args, cwd=inputs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("3 images -> feats") == 1, done.stdout
    # the README's case: the same -o with other settings is refused - by one line, not one per process
    refused = torchrun(*args, "--layer", "fc6", cwd=inputs)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "other settings" in errors[0], output
    assert "(rank 1)" not in output  # torchrun stopped rank 1 once rank 0 had said it: it never spoke


def test_torchrun_usage_error_is_one_line(inputs):
    refused = torchrun("extract", "imgs", "--scales", "10", cwd=inputs)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "--scales" in errors[0], output


def test_other_rank_that_is_not_stopped_says_its_error_with_its_rank(monkeypatch):
    """An error of rank 1 alone (rank 0 carries on, so torchrun does not stop rank 1) is not lost: after the
    grace period rank 1 prints it, naming itself, and exits with its code."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(main, "OTHER_RANK_GRACE_S", 0.0)
    result = CliRunner().invoke(main.cli, ["extract", "nowhere/"])
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: (rank 1) ") and "nowhere" in result.stderr


def test_other_rank_usage_errors_wait_too(monkeypatch):
    """A mistyped command or option is met before any command runs (click parsing): the same rule holds."""
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(main, "OTHER_RANK_GRACE_S", 0.0)
    for args, where in ((["extrct"], "No such command"), (["extract", "x", "--scales", "10"], "--scales")):
        result = CliRunner().invoke(main.cli, args)
        assert result.exit_code == 2
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and errors[0].startswith("Error: (rank 3) ") and where in errors[0], result.stderr


def test_rank_zero_and_single_processes_print_at_once(monkeypatch):
    monkeypatch.setattr(main, "OTHER_RANK_GRACE_S", 3600.0)  # a wait would hang the test
    for rank, world in (("0", "2"), ("0", "1")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        result = CliRunner().invoke(main.cli, ["extract", "nowhere/"])
        assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "nowhere" in result.stderr
