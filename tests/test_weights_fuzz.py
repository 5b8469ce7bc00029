"""Fuzzing the weight readers: seeded random mutations (bit flips, truncations, inserted and deleted bytes,
varint edits) of small valid .caffemodel, .safetensors and .pth files each end in a net or one Error line naming the
file, within a time limit per file and memory bounded by the file's size (fuzz_weights.py runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# pth: torch.load(weights_only=True) behind our errors; caffegrid: every wire type / length / nesting combination
COUNT = {"caffemodel": 600, "safetensors": 400, "pth": 150, "caffegrid": 0}
SECONDS_PER_FILE = 2.0  # a mutant takes milliseconds; a hang or a quadratic walk takes far longer
BYTES_PER_FILE_BYTE = 32  # allocations (Python and numpy) per byte of the mutant, plus a fixed allowance:
FIXED_BYTES = 1 << 20  # a valid 50 kB file peaks at 0.6 MB (tracemalloc)


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory) -> tuple[Path, dict]:
    """Every format's run, in one fresh Python (its imports paid once)."""
    folder = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    args = [sys.executable, str(TESTS / "fuzz_weights.py"), "0", str(folder), *(f"{f}:{n}" for f, n in COUNT.items())]
    try:  # the whole run's limit: a mutant that hangs fails here instead of stalling the suite
        done = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fuzzing did not finish in 180 s: a mutant hangs a reader (the last one written is in {folder})")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(params=sorted(COUNT))
def fuzzed(request, fuzz_runs):
    folder, runs = fuzz_runs
    return request.param, folder / request.param, runs[request.param]


def test_every_mutant_ends_in_a_net_or_one_error_line(fuzzed):
    fmt, folder, run = fuzzed
    bad = [r for r in run["results"] if r["outcome"] not in ("ok", "error")]
    assert not bad, f"{len(bad)} mutants escaped as other errors (kept in {folder}): {bad[:3]}"
    errors = sum(r["outcome"] == "error" for r in run["results"])
    assert errors > len(run["results"]) // 2  # the mutations do reach the checks
    if fmt == "caffegrid":
        assert len(run["results"]) == 1360 and errors == len(run["results"])  # none of them is a net


def test_every_mutant_is_read_in_bounded_time_and_memory(fuzzed):
    fmt, folder, run = fuzzed
    slow = [r for r in run["results"] if r["seconds"] > SECONDS_PER_FILE]
    assert not slow, f"mutants read slower than {SECONDS_PER_FILE} s: {slow[:3]}"
    big = [r for r in run["results"] if r["peak"] > BYTES_PER_FILE_BYTE * r["size"] + FIXED_BYTES]
    assert not big, f"mutants that allocated far more than their size: {big[:3]}"
    assert run["rss_growth"] < 256 << 20, run["rss_growth"]  # no mutant made the process grow by much
