"""vggfeat.probe_benchmark is the one way a benchmark is probed: the Python call gives the numbers the commands
give, every command goes through it (no second copy of the splits -> settings -> store -> probe -> report
sequence elsewhere), and a report records what it was computed from."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import TINY_GLOROT

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import make_voc2007
from vggfeat.errors import InputError
from vggfeat.features.runtime import Runtime

PACKAGE = Path(vggfeat.__file__).parent
# the steps of probing a benchmark: only vggfeat.probes may call them; commands, reproduce and demo call
# probe_benchmark, which does
STEPS = {
    "run_linear_probe",
    "run_knn_probe",
    "run_low_shot",
    "probe_features",
    "action_features",
    "cached_store",
    "stack_stores",
    "write_report",
    "write_low_shot",
}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc2007(root, n_trainval=80, n_test=24, seed=5, size=(72, 64))  # every class meets low-shot k = 1
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), path))


def test_only_the_probes_package_runs_the_steps_of_a_probe():
    """Before, cli/probe_options.py, reproduce/tables.py and demo/pipeline.py each wrote the sequence."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "probes":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if name in STEPS:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}")
    assert found == [], "call vggfeat.probes.benchmark.probe_benchmark instead:\n" + "\n".join(found)


def test_the_python_call_gives_the_commands_numbers_and_records_its_identity(voc, weights, tmp_path):
    outcome = vggfeat.probe_benchmark(
        "voc2007",
        voc,
        nets=[("auto", weights)],
        scales=(64,),
        probe=vggfeat.LinearProbe(Cs=(0.1, 1.0)),
        runtime=Runtime(device="cpu", workers=0),
        out=tmp_path / "api",
        progress=False,
    )
    args = ["linear-probe", "voc2007", "--root", voc, "--weights", weights, "--scales", "64", "--Cs", "0.1,1"]
    r = CliRunner().invoke(cli, [str(a) for a in [*args, "-o", tmp_path / "cli", "--workers", "0", "--quiet"]])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "cli" / "linear-probe.json").read_text())
    assert report["headline"] == outcome.report["headline"]
    assert outcome.files["json"] == tmp_path / "api" / "linear-probe.json" and outcome.files["json"].is_file()
    identity = outcome.report["identity"]
    assert identity["probe"] == {"kind": "linear-probe", "Cs": [0.1, 1.0], "holdout": 0.2, "classifier": "svm"}
    assert identity["benchmark"] == "voc2007" and identity["data"] == str(Path(voc).resolve())
    assert report["identity"]["features"] == identity["features"]  # the same weights, by content


def test_features_cached_in_bfloat16_are_not_served_to_a_float32_probe(voc, weights, tmp_path):
    """A probe's feature cache and its report are keyed by the effective compute precision: bf16 descriptors
    (--device cuda, or precision="bfloat16") differ by ~1e-3 from float32 ones and are never reused for them."""
    import numpy as np

    kw = dict(nets=[("auto", weights)], scales=(64,), probe=vggfeat.LinearProbe(Cs=(1.0,)), progress=False)
    bf16 = Runtime(device="cpu", workers=0, precision="bfloat16")
    first = vggfeat.probe_benchmark("voc2007", voc, runtime=bf16, out=tmp_path / "p", **kw)
    f32 = Runtime(device="cpu", workers=0)
    with pytest.raises(InputError, match="another linear-probe \\(its features differ\\)"):
        vggfeat.probe_benchmark("voc2007", voc, runtime=f32, out=tmp_path / "p", **kw)
    second = vggfeat.probe_benchmark("voc2007", voc, runtime=f32, out=tmp_path / "p", overwrite=True, **kw)
    fresh = vggfeat.probe_benchmark("voc2007", voc, runtime=f32, out=tmp_path / "fresh", **kw)
    rows = [np.asarray(o.store.features) for o in (first, second, fresh)]
    np.testing.assert_array_equal(rows[1], rows[2])  # before: the bf16 cache, reused
    assert np.abs(rows[0] - rows[2]).max() > 1e-4 and first.store.root != second.store.root
    assert second.report["headline"] == fresh.report["headline"]


def test_feature_keys_follow_the_effective_precision(monkeypatch):
    """auto is bf16 on CUDA and float32 on the CPU: the probe cache key and the features key of reports and
    reproduce rows follow what is computed."""
    import torch

    import vggfeat.features.runtime as runtime_module
    from vggfeat.probes.benchmark import extraction_settings, features_key
    from vggfeat.probes.features import cache_key

    settings = extraction_settings("voc2007", [("vgg_a", None)], scales=(64,))
    images = ["a.jpg", "b.jpg"]

    def keys(runtime):
        return cache_key(settings, images, runtime), features_key(settings, runtime=runtime)

    cpu = keys(Runtime(device="cpu"))
    assert keys(Runtime(device="cpu", precision="float32")) == cpu
    bf16 = keys(Runtime(device="cpu", precision="bfloat16"))
    assert bf16[0] != cpu[0] and bf16[1] != cpu[1]
    monkeypatch.setattr(runtime_module, "resolve_device", lambda name: torch.device("cuda"))  # a GPU machine
    assert Runtime().effective_precision() == "bfloat16" and keys(Runtime()) == bf16
    assert Runtime(precision="float32").identity() == {} and keys(Runtime(precision="float32")) == cpu


def test_knn_and_low_shot_probes_write_their_own_reports(voc, weights, tmp_path):
    common = dict(nets=[("auto", weights)], scales=(64,), runtime=Runtime(device="cpu", workers=0), progress=False)
    knn = vggfeat.probe_benchmark("voc2007", voc, probe=vggfeat.KnnProbe(k=3), out=tmp_path, **common)
    assert knn.files["json"].name == "knn-probe.json" and knn.report["method"] == "knn"
    with pytest.raises(InputError, match="low-shot is a VOC-2007 protocol"):
        vggfeat.probe_benchmark("caltech101", voc, probe=vggfeat.LowShotProbe(ks=(1,)), out=tmp_path, **common)
    low = vggfeat.probe_benchmark(
        "voc2007", voc, probe=vggfeat.LowShotProbe(ks=(1,), samples=2), out=tmp_path, **common
    )
    assert low.files["json"].name == "low-shot.json" and [row["k"] for row in low.report["rows"]] == [1]
    assert low.report["identity"]["probe"]["kind"] == "low-shot"


def test_a_probe_needs_descriptors_from_somewhere(voc, tmp_path):
    with pytest.raises(InputError, match="give a feature store"):
        vggfeat.probe_benchmark("voc2007", voc, out=tmp_path)


def test_every_cost_grid_and_default_is_read_from_one_home():
    """The C grid was written in four places (two of them click strings) and the workers default was 0, 2 or 4
    depending on the path; the commands and the library now read vggfeat/defaults.py."""
    import inspect

    from vggfeat import defaults
    from vggfeat.cli.params import COST_GRID
    from vggfeat.probes.lowshot import ELEVEN_POINT_UNWEIGHTED, SUITES
    from vggfeat.probes.run import run_knn_probe, run_linear_probe
    from vggfeat.reproduce.tables import ReproduceOptions

    params = {
        (command, p.name): p.default
        for command in ("linear-probe", "knn-probe", "reproduce")
        for p in cli.get_command(None, command).params
    }
    for command in ("linear-probe", "reproduce"):
        assert tuple(COST_GRID.convert(params[command, "cs"], None, None)) == defaults.COSTS
    for command in ("linear-probe", "knn-probe", "reproduce"):
        assert params[command, "workers"] == defaults.WORKERS and params[command, "batch_size"] == defaults.BATCH_SIZE
    assert inspect.signature(run_linear_probe).parameters["Cs"].default == defaults.COSTS
    assert ReproduceOptions().Cs == vggfeat.LinearProbe().Cs == defaults.COSTS
    assert inspect.signature(run_knn_probe).parameters["k"].default == vggfeat.KnnProbe().k == params["knn-probe", "k"]
    assert (SUITES.Cs, ELEVEN_POINT_UNWEIGHTED.Cs) == (defaults.LOW_SHOT_SUITES_COSTS, defaults.COARSE_COSTS)
    assert Runtime().batch_size == defaults.BATCH_SIZE


def test_an_earlier_report_that_is_a_fifo_is_named_not_waited_on(voc, weights, tmp_path):
    """The report already in OUT is read to compare what it was computed from; a FIFO there would block the read."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "linear-probe.json")
    code = (
        "import vggfeat\n"
        "from vggfeat.errors import InputError\n"
        f"try:\n    vggfeat.probe_benchmark('voc2007', {str(voc)!r}, nets=[('auto', {weights!r})], scales=(64,), "
        f"out={str(out)!r}, progress=False)\n"
        "except InputError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("probe_benchmark hung reading the FIFO at OUT/linear-probe.json")
    assert done.stdout.startswith(f"{out / 'linear-probe.json'} is a FIFO, not a regular file;"), done.stderr[-2000:]
    assert "pass --overwrite to replace it" in done.stdout  # the report is renamed over whatever is there
