"""`vggfeat linear-probe voc2007 --low-shot` end to end on a generated VOC-2007 layout with a tiny net."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_GLOROT

import vggfeat
import vggfeat.features.engine as engine_module
from vggfeat.benchmarks.registry import get_benchmark, load_benchmark
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import make_voc2007
from vggfeat.features.store import load_store
from vggfeat.probes.lowshot import LOW_SHOT_CS, run_low_shot


def test_low_shot_writes_mean_std_per_k_on_the_probes_cached_features(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_voc2007(root, n_trainval=80, n_test=24, seed=5, size=(72, 64))  # every class meets k = 2
    weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), tmp_path / "a.safetensors")
    out = tmp_path / "out"
    common = ["--root", root, "-o", out, "--weights", weights, "--scales", "64", "--workers", "0", "--quiet"]
    args = ["linear-probe", "voc2007", *common, "--low-shot", "--low-shot-ks", "2,1", "--low-shot-samples", "2"]
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "low-shot.json").read_text())
    assert (out / "low-shot.md").is_file() and (out / "low-shot.png").stat().st_size > 1000
    assert report["ks"] == [1, 2] and report["samples"] == 2 and report["Cs"] == list(LOW_SHOT_CS)
    # the report's labels are the registry's, as the full probe's; the metric is the all-point AP (voc2012's)
    bench, all_point = get_benchmark("voc2007"), get_benchmark("voc2012")
    assert (report["metric"], report["metric_title"], report["headline_name"]) == (
        all_point.metric,
        all_point.metric_title,
        bench.headline,
    )
    assert f"{bench.headline} %" in result.output and f"low-shot {bench.title} (ours" in result.output
    # the metric and the class weight are stated wherever the result is shown
    stated = f"suites scoring: {all_point.metric_title}, class weight {{1: 2, -1: 1}}"
    assert stated in result.output and stated in (out / "low-shot.md").read_text(), result.output
    assert "comparable with the self-supervised suites' low-shot VOC07 tables" in result.output
    assert report["scoring"] == "suites" and report["class_weight"] == {"1": 2.0, "-1": 1.0}
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
    real = engine_module.DescriptorEngine.feed
    monkeypatch.setattr(
        engine_module.DescriptorEngine,
        "feed",
        lambda self, items, *a, **k: described.append(items) or real(self, items, *a, **k),
    )
    args = ["linear-probe", "voc2007", *common, "--Cs", "1"]
    assert CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False).exit_code == 0 and described == []


def test_low_shot_is_voc2007_only(tmp_path):
    result = CliRunner().invoke(cli, ["linear-probe", "caltech101", "--root", str(tmp_path), "--low-shot"])
    assert result.exit_code == 2 and "--low-shot is a VOC-2007 protocol" in result.output


def voc_and_weights(tmp_path, n_trainval=40):
    root = tmp_path / "data"
    make_voc2007(root, n_trainval=n_trainval, n_test=12, seed=5, size=(72, 64))
    weights = vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), tmp_path / "a.safetensors")
    common = ["--root", root, "--weights", weights, "--scales", "64", "--workers", "0", "--quiet"]
    return [str(a) for a in ["linear-probe", "voc2007", *common, "--low-shot"]]


@pytest.mark.parametrize("ks", ["1000", "1,2,100000000000000000000"])
def test_a_k_no_class_meets_is_one_error_line_before_anything_is_extracted_or_written(tmp_path, ks):
    # on 80 images the rarest class has 2 positives: k = 1000 was reported as "k=1000, negatives 19000" while
    # 2 were used, and a 21-digit k ended in a TypeError in the plot after the JSON was written
    args = voc_and_weights(tmp_path, n_trainval=80)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [*args, "-o", str(out), f"--low-shot-ks={ks}"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: low-shot k="), result.output
    assert "positives and" in lines[0] and "give ks up to 2 (--low-shot-ks)" in lines[0], lines[0]
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))  # nothing extracted nor written


def test_options_a_low_shot_run_would_ignore_are_refused(tmp_path):
    args = voc_and_weights(tmp_path)
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "out"), "--holdout", "0.3", "--classifier", "svm"])
    assert result.exit_code == 2 and "--classifier, --holdout do not apply to --low-shot" in result.output
    plain = [a for a in args if a != "--low-shot"]
    result = CliRunner().invoke(cli, [*plain, "-o", str(tmp_path / "out"), "--low-shot-scoring", "suites"])
    assert result.exit_code == 2 and "--low-shot-scoring apply to --low-shot only" in result.output
    assert not (tmp_path / "out").exists()


def test_help_states_the_metric_and_class_weight_and_the_old_scoring_is_an_option():
    result = CliRunner().invoke(cli, ["linear-probe", "--help"])
    text = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(result.output.split()))  # undo click's wrapping at hyphens
    assert "all-point AP" in text and "class weight {1: 2, -1: 1}" in text, text
    assert "--low-shot-scoring [suites|11point-unweighted]" in text and "11-point AP, no class weight" in text


def test_the_11_point_unweighted_scoring_reproduces_the_first_defaults_numbers(tmp_path):
    args = voc_and_weights(tmp_path, n_trainval=80)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, [*args, "-o", str(out), "--low-shot-ks", "1", "--low-shot-samples", "2", "--low-shot-scoring",
              "11point-unweighted"], catch_exceptions=False
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "low-shot.json").read_text())
    assert report["scoring"] == "11point-unweighted" and report["metric"] == "voc07_ap"
    assert report["Cs"] == [0.01, 0.1, 1.0, 10.0, 100.0] and report["class_weight"] == {"1": 1.0, "-1": 1.0}
    assert "11point-unweighted scoring: AP (VOC2007 11-point), class weight {1: 1, -1: 1}" in result.output
    store = load_store(report["features"]["store"])
    (split,) = load_benchmark("voc2007", tmp_path / "data")
    x_train = np.asarray(store.features[store.rows_for(list(split.train_paths))])
    x_test = np.asarray(store.features[store.rows_for(list(split.test_paths))])
    y_train, y_test = np.array(split.train_labels), np.array(split.test_labels)
    # the first default, written out: 11-point AP, one unweighted SVM per class on the features as given
    from vggfeat.metrics import voc07_ap
    from vggfeat.probes.lowshot import draw_low_shot
    from vggfeat.probes.svm import fit_linear_svms

    table = np.empty((2, 5))
    for s in range(2):
        for j, C in enumerate(report["Cs"]):
            scores = np.empty((len(x_test), 20))
            for c, (pos, neg) in enumerate(draw_low_shot(y_train, 1, seed=0, sample=s, negatives_per_positive=19)):
                rows = np.concatenate([pos, neg])
                t = np.where(y_train[rows, c] > 0, 1.0, -1.0)[:, None]
                coef, b, _ = fit_linear_svms(x_train[rows], t, np.ones_like(t), [C])
                scores[:, c] = x_test @ coef[0] + b[0]
            table[s, j] = np.nanmean(voc07_ap(scores, y_test))
    assert report["rows"][0]["mAP"] == pytest.approx(100 * table.mean(0).max(), abs=0.02)
