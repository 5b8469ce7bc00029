"""Probes never report a number that is not one: a kNN vote at a tiny temperature, classes without training
positives, a val set without any positive and empty val lists, through the CLI on generated VOC trees."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY, voc_labels

import vggfeat
from vggfeat import metrics
from vggfeat.benchmarks.voc_action import VOC_ACTIONS
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import VOC_CLASSES, make_voc2007, make_voc2012
from vggfeat.data.synthetic_voc_action import make_voc2012_action
from vggfeat.features.store import load_store

FAST = ["--scales", "64", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, init="glorot", **TINY), path))


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc2007(root, n_trainval=40, n_test=40, seed=3)
    return root


def invoke(*args, code=0):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    numpy_warnings = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not numpy_warnings, numpy_warnings  # overflow, invalid value, mean of empty slice: never
    return result.output


def _relabel(list_file, old: str, new: str) -> None:
    """Rewrite the labels `old` as `new` in a VOC list file (lines `<id> <label>`)."""
    rows = [line.rsplit(None, 1) for line in list_file.read_text().splitlines() if line.strip()]
    list_file.write_text("".join(f"{i} {new if lab == old else lab}\n" for i, lab in rows))


def _stable_knn_scores(x_train, y_train, x_test, k: int, temperature: float) -> np.ndarray:
    """The weighted vote by brute force, as softmax over each row's k best similarities (the max subtracted)."""
    a = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)
    b = x_test / np.linalg.norm(x_test, axis=1, keepdims=True)
    sims = b.astype(np.float64) @ a.T.astype(np.float64)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sims, top, axis=1) / temperature
    w = np.exp(s - s.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("mk,mkc->mc", w, (y_train == 1)[top].astype(np.float64))


def test_knn_probe_at_a_tiny_temperature_votes_without_overflow(voc, weights, tmp_path):
    store = tmp_path / "store"
    invoke("extract", voc / "VOCdevkit" / "VOC2007" / "JPEGImages", "-o", store, "--weights", weights, *FAST)
    out = tmp_path / "k"
    invoke("knn-probe", "voc2007", "--root", voc, "-o", out, "--features", store, "-k", "5", "--temperature", "0.0013")
    report = json.loads((out / "knn-probe.json").read_text())
    s = load_store(store)
    train_paths, train_y = voc_labels(voc, "trainval")
    test_paths, test_y = voc_labels(voc, "test")
    x_train = np.asarray(s.features[s.rows_for(train_paths)], np.float32)
    x_test = np.asarray(s.features[s.rows_for(test_paths)], np.float32)
    cos = (x_test / np.linalg.norm(x_test, axis=1, keepdims=True)) @ (
        x_train / np.linalg.norm(x_train, axis=1)[:, None]
    ).T
    assert cos.max() > 0.93  # exp(0.93 / 0.0013) overflows float64: the naive vote is inf / inf
    ap = metrics.voc07_ap(_stable_knn_scores(x_train, train_y, x_test, 5, 0.0013), test_y)
    assert report["headline"] == pytest.approx(100 * np.nanmean(ap), abs=0.01)
    ours = [np.nan if r["value"] is None else r["value"] for r in report["per_class"]]
    np.testing.assert_allclose(ours, np.round(100 * ap, 2), atol=0.011)


@pytest.mark.parametrize("command", ["linear-probe", "knn-probe"])
def test_a_class_without_training_positives_is_excluded_and_marked(voc, weights, tmp_path, caplog, command):
    root = tmp_path / "voc"
    shutil.copytree(voc, root)
    main = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    _relabel(main / "bird_trainval.txt", "1", "-1")
    _relabel(main / "bird_trainval.txt", "0", "-1")
    test_y = voc_labels(root, "test")[1]
    assert (test_y[:, VOC_CLASSES.index("bird")] == 1).any()  # it has test positives: it would get an AP
    out = tmp_path / "o"
    grid = ["--Cs", "1"] if command == "linear-probe" else []
    text = invoke(command, "voc2007", "--root", root, "-o", out, "--weights", weights, *FAST, *grid)
    stem = command
    report = json.loads((out / f"{stem}.json").read_text())
    row = next(r for r in report["per_class"] if r["class"] == "bird")
    assert row["value"] is None and row["excluded"] == "no positives in trainval"
    no_test = [c for k, c in enumerate(VOC_CLASSES) if not (test_y[:, k] == 1).any()]
    assert report["excluded_classes"] == {"bird": row["excluded"], **dict.fromkeys(no_test, "no positives in test")}
    others = [r["value"] for r in report["per_class"] if r["value"] is not None]
    assert len(others) == len(VOC_CLASSES) - 1 - len(no_test)
    assert report["headline"] == pytest.approx(np.mean(others), abs=0.01)
    assert any(
        r.levelname == "WARNING" and r.getMessage().startswith("bird: no positives in trainval") for r in caplog.records
    )
    bird_line = next(line for line in text.splitlines() if line.startswith("bird "))
    assert "excluded: no positives in trainval" in bird_line
    assert f"of {len(VOC_CLASSES)} classes (bird" in text
    md = (out / f"{stem}.md").read_text()
    assert "| bird | - (excluded: no positives in trainval) |" in md and f"of {len(VOC_CLASSES)} classes" in md


def test_voc2012_action_without_training_positives_of_an_action(tmp_path, weights):
    root = tmp_path / "data"
    make_voc2012_action(root, n_train=20, n_val=14, seed=6, size=(96, 72))
    action = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Action"
    rows = [line.split() for line in (action / "phoning_train.txt").read_text().splitlines()]
    (action / "phoning_train.txt").write_text("".join(f"{i} {o} -1\n" for i, o, _ in rows))
    out = tmp_path / "o"
    text = invoke(
        "linear-probe",
        "voc2012-action",
        "--root",
        root,
        "-o",
        out,
        "--weights",
        weights,
        *FAST,
        "--Cs",
        "1",
        "--no-box",
    )
    report = json.loads((out / "linear-probe.json").read_text())
    assert report["excluded_classes"]["phoning"] == "no positives in train" and "phoning" in text
    assert [r["class"] for r in report["per_class"]] == list(VOC_ACTIONS)
    assert next(r for r in report["per_class"] if r["class"] == "phoning")["value"] is None


def test_a_test_set_without_any_positive_is_refused_before_extracting(voc, weights, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc, root)
    for f in (root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main").glob("*_test.txt"):
        _relabel(f, "1", "-1")
    out = tmp_path / "o"
    text = invoke("linear-probe", "voc2007", "--root", root, "-o", out, "--weights", weights, *FAST, code=1)
    assert text.startswith("Error: ") and len(text.strip().splitlines()) == 1 and "Traceback" not in text
    assert "no class has a positive" in text and "test" in text
    assert not (out / "features").exists() and not (out / "linear-probe.json").exists()


@pytest.mark.parametrize("benchmark", ["voc2012", "voc2012-action"])
def test_empty_val_lists_are_one_error_line(tmp_path, weights, benchmark):
    root = tmp_path / "data"
    if benchmark == "voc2012":
        make_voc2012(root, n_train=6, n_val=4, seed=0)
        lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    else:
        make_voc2012_action(root, n_train=6, n_val=4, seed=0, size=(96, 72))
        lists = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Action"
    for f in lists.glob("*val.txt"):
        f.write_text("")
    text = invoke("linear-probe", benchmark, "--root", root, "-o", tmp_path / "o", "--weights", weights, *FAST, code=1)
    assert text.startswith("Error: ") and len(text.strip().splitlines()) == 1, text
    assert "lists no" in text and "val" in text


@pytest.mark.parametrize(
    "args",
    [
        ["knn-probe", "--temperature", "nan"],
        ["knn-probe", "--temperature", "inf"],
        ["knn-probe", "--temperature", "1000"],
        ["knn-probe", "--temperature", "0"],
        ["linear-probe", "--holdout", "nan"],
    ],
)
def test_number_options_refuse_nan_inf_and_out_of_range(voc, tmp_path, args):
    command, *option = args
    text = invoke(command, "voc2007", "--root", voc, "-o", tmp_path / "o", *option, code=2)
    assert f"Invalid value for '{option[0]}'" in text and not (tmp_path / "o").exists()


def test_reproduce_table12_marks_an_action_without_training_positives(tmp_path, weights):
    root = tmp_path / "data"
    make_voc2012_action(root, n_train=16, n_val=10, seed=6, size=(96, 72))
    action = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Action"
    rows = [line.split() for line in (action / "phoning_train.txt").read_text().splitlines()]
    (action / "phoning_train.txt").write_text("".join(f"{i} {o} -1\n" for i, o, _ in rows))
    out = tmp_path / "t"
    nets = ["--net-d", weights, "--net-e", weights, "-o", out, "--device", "cpu", "--Cs", "1"]
    text = invoke("reproduce", "table12", "--root", root, *nets, *FAST)
    line = next(ln for ln in text.splitlines() if ln.startswith("voc2012-action:image: ") and "excluded" in ln)
    assert "classes excluded from ours:" in line and "phoning (no positives in train)" in line
    md = (out / "table12.md").read_text()
    assert "## Classes left out of our numbers" in md and "phoning (no positives in train)" in md
    table = json.loads((out / "table12.json").read_text())
    cells = [cell for r in table["rows"] for cell in r["cells"].values()]
    assert len(cells) == 6 and all(cell["excluded"]["phoning"] == "no positives in train" for cell in cells)

    for f in action.glob("*_val.txt"):  # no positive left in val: the column is empty with the reason, no NaN
        _relabel(f, "1", "-1")
    text = invoke("reproduce", "table12", "--root", root, *nets, "-o", tmp_path / "t2", *FAST, code=1)
    assert "no class has a positive in val" in text and "Traceback" not in text
