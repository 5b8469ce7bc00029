"""`vggfeat linear-probe voc2007 --low-shot` end to end on a generated VOC-2007 layout with a tiny net."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import vggfeat
import vggfeat.features.engine as engine_module
from vggfeat.benchmarks.registry import get_benchmark, load_benchmark
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import make_voc2007
from vggfeat.features.store import load_store
from vggfeat.probes.lowshot import LOW_SHOT_CS, run_low_shot

TINY = dict(width_mult=1 / 16, fc_dim=32, fc6_kernel=2, num_classes=10, init="glorot")


def test_low_shot_writes_mean_std_per_k_on_the_probes_cached_features(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_voc2007(root, n_trainval=40, n_test=24, seed=5, size=(72, 64))
    weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY), tmp_path / "a.safetensors")
    out = tmp_path / "out"
    common = ["--root", root, "-o", out, "--weights", weights, "--scales", "64", "--workers", "0", "--quiet"]
    args = ["linear-probe", "voc2007", *common, "--low-shot", "--low-shot-ks", "2,1", "--low-shot-samples", "2"]
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "low-shot.json").read_text())
    assert (out / "low-shot.md").is_file() and (out / "low-shot.png").stat().st_size > 1000
    assert report["ks"] == [1, 2] and report["samples"] == 2 and report["Cs"] == list(LOW_SHOT_CS)
    bench = get_benchmark("voc2007")  # the report's metric and labels are the registry's, as the full probe's
    assert (report["metric"], report["metric_title"], report["headline_name"]) == (
        bench.metric,
        bench.metric_title,
        bench.headline,
    )
    assert f"{bench.headline} %" in result.output and f"low-shot {bench.title} (ours" in result.output
    for row in report["rows"]:
        assert f"{row['mAP']:>7.2f} +- {row['std']:<4.2f}" in result.output
        assert (
            f"| {row['k']} | {19 * row['k']} | {row['mAP']:.2f} +- {row['std']:.2f}"
            in (out / "low-shot.md").read_text()
        )

    # the numbers are the library's on the cached store
    store = load_store(report["features"]["store"])
    (split,) = load_benchmark("voc2007", root)
    x_train = np.asarray(store.features[store.rows_for(list(split.train_paths))])
    x_test = np.asarray(store.features[store.rows_for(list(split.test_paths))])
    ref = run_low_shot(x_train, split.train_labels, x_test, split.test_labels, ks=(1, 2), samples=2, seed=0)
    assert [r["mAP"] for r in report["rows"]] == pytest.approx(list(np.round(100 * ref.mean, 2)), abs=0.02)

    # the full probe afterwards reuses the same cached descriptors: nothing is extracted again
    described = []
    real = engine_module.DescriptorEngine.describe
    monkeypatch.setattr(
        engine_module.DescriptorEngine,
        "describe",
        lambda self, items, *a, **k: described.append(items) or real(self, items, *a, **k),
    )
    args = ["linear-probe", "voc2007", *common, "--Cs", "1"]
    assert CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False).exit_code == 0 and described == []


def test_low_shot_is_voc2007_only(tmp_path):
    result = CliRunner().invoke(cli, ["linear-probe", "caltech101", "--root", str(tmp_path), "--low-shot"])
    assert result.exit_code == 2 and "--low-shot is a VOC-2007 protocol" in result.output
