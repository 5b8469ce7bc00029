"""Low-shot VOC-2007 on generated descriptors: the sampling rule, the batched solve against one fit per
problem, the suites' scoring against a literal port of their code, the old scoring's numbers, and the summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vggfeat import metrics
from vggfeat.data.synthetic_features import make_voc_like_features
from vggfeat.errors import VggfeatError
from vggfeat.probes.lowshot import (
    LowShotResult,
    draw_low_shot,
    normalize_rows,
    plot_low_shot,
    run_low_shot,
)
from vggfeat.probes.svm import fit_linear_svms


@pytest.fixture(scope="module")
def voc_like():
    return make_voc_like_features(700, 500, 64, seed=3)


def test_each_class_draws_k_positives_and_19k_negatives_never_a_difficult_one(voc_like):
    _, y, _, _ = voc_like
    draws = draw_low_shot(y, 4, seed=0, sample=1)
    assert len(draws) == y.shape[1]
    for c, (pos, neg) in enumerate(draws):
        assert len(pos) == 4 and len(neg) == 19 * 4
        assert (y[pos, c] == 1).all() and (y[neg, c] == -1).all()
        assert len(np.unique(pos)) == 4 and len(np.unique(neg)) == 76
    again = draw_low_shot(y, 4, seed=0, sample=1)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(draws, again, strict=False))
    other = draw_low_shot(y, 4, seed=0, sample=2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(draws, other, strict=False))


def test_the_negatives_are_k_times_the_other_classes_count():
    # the suites draw (K - 1) k negatives: 19 k for VOC's 20 classes, 4 k for 5
    y = -np.ones((60, 5), dtype=np.int8)
    y[np.arange(60), np.arange(60) % 5] = 1
    y[:5, 0] = 0  # difficult: never drawn
    for c, (pos, neg) in enumerate(draw_low_shot(y, 2, seed=0, sample=0)):
        assert len(pos) == 2 and len(neg) == 4 * 2
        assert (y[pos, c] == 1).all() and (y[neg, c] == -1).all()


def test_a_k_that_a_class_cannot_meet_is_refused_naming_the_class_not_drawn_short(voc_like):
    y = -np.ones((50, 2), dtype=np.int8)
    y[:3, 0] = 1
    y[3:5, 0] = 0  # difficult: not counted
    y[10:30, 1] = 1
    with pytest.raises(VggfeatError, match=r"k=8 needs 8 positives .* but '0' has 3 positives .* up to 3"):
        draw_low_shot(y, 8, seed=0, sample=0)
    assert [len(p) for p, _ in draw_low_shot(y, 3, seed=0, sample=0, negatives_per_positive=1)] == [3, 3]
    x, y, x_test, y_test = voc_like  # before any solve, for every k asked
    with pytest.raises(VggfeatError, match=r"k=100000000000000000000 needs .* up to"):
        run_low_shot(x, y, x_test, y_test, ks=(1, 100000000000000000000), classes=[f"c{i}" for i in range(20)])


def test_batched_run_equals_one_weighted_fit_per_sample_class_and_C(voc_like):
    x, y, x_test, y_test = voc_like
    scale = np.random.default_rng(0).uniform(0.5, 4.0, size=(len(x), 1))  # unnormalised rows
    ks, samples, Cs = (1, 4), 2, (0.1, 10.0)
    result = run_low_shot(x * scale, y, x_test, y_test, ks=ks, samples=samples, Cs=Cs, seed=7)
    assert result.ap.shape == (2, 2, 2, 20) and result.drawn.shape == (2, 2, 20, 2)
    xn, xn_test = normalize_rows(x * scale), normalize_rows(x_test)
    for i, k in enumerate(ks):
        for s in range(samples):
            draws = draw_low_shot(y, k, seed=7, sample=s)
            for j, C in enumerate(Cs):
                scores = np.empty((len(x_test), 20))
                for c, (pos, neg) in enumerate(draws):
                    rows = np.concatenate([pos, neg])
                    t = np.where(y[rows, c] > 0, 1.0, -1.0)[:, None]
                    coef, b, _ = fit_linear_svms(xn[rows], t, np.where(t > 0, 2.0, 1.0), [C])  # class weight 2:1
                    scores[:, c] = xn_test @ coef[0] + b[0]
                np.testing.assert_allclose(result.ap[i, s, j], metrics.voc12_ap(scores, y_test), atol=2e-3)


def test_features_are_scaled_inside_so_a_python_caller_gets_the_clis_numbers(voc_like):
    x, y, x_test, y_test = voc_like
    rng = np.random.default_rng(1)
    kw = dict(ks=(2,), samples=2, Cs=(0.1, 1.0), seed=0)
    raw = run_low_shot(x * rng.uniform(0.1, 10, (len(x), 1)), y, x_test * 7.0, y_test, **kw)
    np.testing.assert_allclose(raw.map_table, run_low_shot(x, y, x_test, y_test, **kw).map_table, atol=1e-3)


def test_the_old_11_point_unweighted_scoring_reproduces_its_numbers(voc_like):
    # mAP per C that the first low-shot default printed for k = 4, sample 0, seed 7 on these features
    x, y, x_test, y_test = voc_like
    old = run_low_shot(x, y, x_test, y_test, ks=(4,), samples=1, seed=7, scoring="11point-unweighted")
    assert old.Cs == (0.01, 0.1, 1.0, 10.0, 100.0) and old.to_dict()["rows"][0]["negatives"] == 19 * 4
    first_default = [0.37992783, 0.64886388, 0.69117355, 0.67131360, 0.66344029]
    np.testing.assert_allclose(old.map_table[0, 0], first_default, atol=2e-3)
    new = run_low_shot(x, y, x_test, y_test, ks=(4,), samples=1, Cs=(1.0,), seed=7)
    assert new.to_dict()["metric"] == "voc12_ap" and old.to_dict()["metric"] == "voc07_ap"
    assert abs(new.mean[0] - old.map_table[0, 0, 2]) > 1e-3  # the two scorings give different numbers at C = 1


def test_summary_more_shots_help_and_the_report_is_json_and_a_plot(voc_like, tmp_path):
    x, y, x_test, y_test = voc_like
    result = run_low_shot(
        x,
        y,
        x_test,
        y_test,
        ks=(1, 16),
        samples=3,
        Cs=(0.1, 1.0, 10.0),
        seed=0,
        classes=[f"class{c}" for c in range(20)],
    )
    assert isinstance(result, LowShotResult)
    assert result.mean.shape == (2,) and result.std.shape == (2,)
    assert result.mean[1] > result.mean[0] + 0.05  # 16 shots clearly beat one
    assert (result.std >= 0).all() and result.std[0] > 0  # one-shot samples differ
    best = result.map_table.mean(axis=1).max(axis=1)
    np.testing.assert_allclose(result.mean, best)
    assert set(result.chosen_C) <= {0.1, 1.0, 10.0}
    report = json.loads(json.dumps(result.to_dict()))
    assert report["ks"] == [1, 16] and report["samples"] == 3
    assert report["rows"][1]["mAP"] == pytest.approx(100 * result.mean[1], abs=0.01)
    assert report["rows"][0]["negatives"] == 19 and len(report["rows"][0]["per_sample"]) == 3
    assert set(report["rows"][0]["per_class"]) == {f"class{c}" for c in range(20)}
    png = plot_low_shot(result, tmp_path / "lowshot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*tmp*"))


def test_bad_inputs_are_one_line_errors(voc_like):
    x, y, x_test, y_test = voc_like
    with pytest.raises(VggfeatError, match="VOC label matrices"):
        run_low_shot(x, y[:, 0], x_test, y_test)
    with pytest.raises(VggfeatError, match="positive C"):
        run_low_shot(x, y, x_test, y_test, ks=(1,), Cs=(0.0,))
    with pytest.raises(VggfeatError, match="disagree"):
        run_low_shot(x[:5], y, x_test, y_test, ks=(1,))


def test_the_reports_metric_and_headline_come_from_the_benchmark_registry(voc_like, tmp_path, monkeypatch):
    from dataclasses import replace

    from vggfeat.benchmarks import registry
    from vggfeat.probes.lowshot import low_shot_lines, write_low_shot

    x, y, x_test, y_test = voc_like
    result = run_low_shot(x, y, x_test, y_test, ks=(1,), samples=1, Cs=(1.0,), seed=0)
    bench, all_point = registry.get_benchmark("voc2007"), registry.get_benchmark("voc2012")
    report = result.to_dict()
    # VOC-2007's title and headline; the metric is the all-point AP, registered as voc2012's
    assert (report["metric"], report["metric_title"], report["headline_name"]) == (
        all_point.metric,
        all_point.metric_title,
        bench.headline,
    )
    assert report["class_weight"] == {"1": 2.0, "-1": 1.0} and report["negatives_per_positive"] == 19
    # the labels are the registry's, not a copy of them: renamed there, renamed in every output
    monkeypatch.setitem(
        registry.BENCHMARKS, "voc2007", replace(bench, headline="meanAP", metric_title="x", title="VOC renamed")
    )
    monkeypatch.setitem(registry.BENCHMARKS, "voc2012", replace(all_point, metric_title="AP (renamed)"))
    report = result.to_dict()
    assert (report["metric_title"], report["headline_name"]) == ("AP (renamed)", "meanAP")
    lines = low_shot_lines(report)
    assert "meanAP %" in lines[0] and "mAP" not in lines[0] and lines[-1].startswith("low-shot VOC renamed"), lines
    assert "suites scoring: AP (renamed), class weight {1: 2, -1: 1}" in lines[-2], lines
    assert "a grid other than the suites' (1)" in lines[-2], lines  # C = 1 only: not their tables' number
    md = write_low_shot(result, tmp_path)["markdown"].read_text()
    assert "| meanAP % (mean +- std over samples) |" in md and "AP (renamed), class weight {1: 2, -1: 1}" in md, md
