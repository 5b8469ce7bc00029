"""Probes under faults: the feature cache never serves another dataset's descriptors, and
extraction flags given beside --features are checked against the store instead of silently ignored."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import TINY_GLOROT

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import make_voc2007
from vggfeat.features.store import load_store

FAST = ["--scales", "64", "--workers", "0", "--quiet", "--Cs", "1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), path))


def invoke(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def test_cache_is_keyed_by_the_dataset(tmp_path, weights):
    voc1, voc2 = make_voc2007(tmp_path / "voc1", 24, 24, seed=1), make_voc2007(tmp_path / "voc2", 24, 24, seed=2)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    invoke("linear-probe", "voc2007", "--root", voc1.parent.parent, "-o", out, "--weights", weights, *FAST)
    # another dataset's probe in the same OUT: refused without --overwrite (the report is voc1's)
    args = ("linear-probe", "voc2007", "--root", voc2.parent.parent, "-o", out, "--weights", weights, *FAST)
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 1 and "its data differ" in r.output and "--overwrite" in r.output, r.output
    invoke(*args, "--overwrite")
    invoke("linear-probe", "voc2007", "--root", voc2.parent.parent, "-o", fresh, "--weights", weights, *FAST)
    second = json.loads((out / "linear-probe.json").read_text())
    clean = json.loads((fresh / "linear-probe.json").read_text())
    # before: the second run matched voc2's JPEGImages/<id>.jpg to voc1's cached rows and scored voc1's pictures
    assert second["per_class"] == clean["per_class"] and second["headline"] == clean["headline"]
    store = load_store(second["features"]["store"])
    assert all(p.startswith(str(voc2)) for p in store.paths)
    assert len(list((out / "features").iterdir())) >= 2  # voc1's cache is kept beside voc2's


def _folder(root, n=6):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (64, 72, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "flags, problem",
    [
        (["--layer", "fc6"], "layer"),
        (["--scales", "96"], "scales"),
        (["--aggregate", "stack"], "aggregate"),
        (["--layer", "fc7", "--scales", "64"], None),  # what the store holds: accepted
    ],
)
def test_extraction_flags_beside_features_are_checked_against_the_store(tmp_path, weights, flags, problem):
    data = _folder(tmp_path / "data")
    store = tmp_path / "store"
    invoke("extract", data, "-o", store, "--weights", weights, "--scales", "64", "--workers", "0", "--quiet")
    argv = ["linear-probe", "folder", "--root", data, "-o", tmp_path / "o", "--features", store, "--splits", "1"]
    r = CliRunner().invoke(cli, [str(a) for a in [*argv, "--Cs", "1", *flags]])
    if problem is None:
        assert r.exit_code == 0, r.output
        return
    # before: the flags were silently ignored and the report claimed nothing about it
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1, r.output
    assert problem in errors[0] and str(store) in errors[0]


def test_a_probe_cache_being_written_stops_a_second_probe(tmp_path, weights):
    """Two probes into one -o at once: the second stops naming the first instead of writing the same cache."""
    import os
    import shutil
    import subprocess
    import sys

    data, out = _folder(tmp_path / "data"), tmp_path / "o"
    argv = ["knn-probe", "folder", "--root", data, "-o", out, "--weights", weights, "--splits", "1"]
    argv += ["--scales", "64", "--workers", "0", "--quiet"]
    invoke(*argv)
    (cache,) = (out / "features").iterdir()
    shutil.rmtree(cache)  # as if the first probe were still extracting it
    hold = "import sys, time\nfrom vggfeat.utils.locks import folder_lock\n"
    hold += "with folder_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-c", hold, str(cache)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "locked"
        r = CliRunner().invoke(cli, [str(a) for a in argv])
    finally:
        p.kill()
        p.wait()
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1 and f"being written by process {p.pid}" in errors[0], r.output
    invoke(*argv)  # the holder is gone: the probe finishes
