"""linear-probe, knn-probe and index end to end through the CLI on a generated VOC2007-layout dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_GLOROT, voc_labels

import vggfeat
from vggfeat import metrics
from vggfeat.benchmarks.base import DATA_ENV
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import VOC_CLASSES, make_voc2007
from vggfeat.features.store import load_store
from vggfeat.probes import LinearSVMProbe

FAST = ["--scales", "64,96", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc2007(root, n_trainval=60, n_test=60, seed=3)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=0, **TINY_GLOROT), path))


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_linear_probe_on_the_fly_matches_a_manual_probe_and_caches_features(voc, weights, tmp_path):
    out = tmp_path / "out"
    text = invoke("linear-probe", "voc2007", "--root", voc, "-o", out, "--weights", weights, *FAST, "--Cs", "0.1,1,10")
    report = json.loads((out / "linear-probe.json").read_text())
    assert (out / "linear-probe.md").is_file() and (out / "linear-probe.png").stat().st_size > 1000
    assert report["benchmark"] == "voc2007" and report["metric"] == "voc07_ap"
    assert [r["class"] for r in report["per_class"]] == list(VOC_CLASSES)
    assert report["paper_table11"]["rows"]["VGG Net-D"]["mean"] == 89.3 and "paper" in report["paper_table11"]["label"]
    assert f"{report['headline']:.1f}" in text and "Table 11" in text
    assert report["features"]["scales"] == [64, 96] and report["features"]["aggregate"] == "mean"

    # the same numbers from the store and a probe fitted by hand at the chosen C per class
    store = load_store(report["features"]["store"])
    train_paths, train_y = voc_labels(voc, "trainval")
    test_paths, test_y = voc_labels(voc, "test")
    x_train = np.asarray(store.features[store.rows_for(train_paths)], np.float32)
    x_test = np.asarray(store.features[store.rows_for(test_paths)], np.float32)
    chosen = np.array([r["chosen_C"][0] for r in report["per_class"]])
    probe = LinearSVMProbe(C=chosen).fit(x_train, train_y)
    ap = metrics.voc07_ap(probe.decision_function(x_test), test_y)
    ours = np.array([np.nan if r["value"] is None else r["value"] for r in report["per_class"]])
    np.testing.assert_allclose(ours, np.round(100 * ap, 2), atol=0.011)
    assert report["headline"] == pytest.approx(100 * np.nanmean(ap), abs=0.01)

    # a second probe with another grid reuses the cached features: nothing is extracted again; its report
    # replaces the first one's only when asked to
    mtime = (store.root / "emb" / "000000.npy").stat().st_mtime_ns
    args = ("linear-probe", "voc2007", "--root", voc, "-o", out, "--weights", weights, *FAST, "--Cs", "1")
    refused = CliRunner().invoke(cli, [str(a) for a in args])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1, refused.output
    assert f"{out / 'linear-probe.json'} holds another linear-probe (its probe differ)" in refused.output
    assert "--overwrite" in refused.output
    assert json.loads((out / "linear-probe.json").read_text()) == report  # untouched
    invoke(*args, "--overwrite")
    assert (store.root / "emb" / "000000.npy").stat().st_mtime_ns == mtime
    again = json.loads((out / "linear-probe.json").read_text())
    assert all(r["chosen_C"] == [1.0] for r in again["per_class"])
    invoke(*args)  # the same probe again rewrites its own report: nothing to refuse


def test_probes_of_other_weights_data_or_kind_never_replace_a_report_silently(voc, weights, tmp_path, monkeypatch):
    """The default OUT is vggfeat-out/BENCHMARK for every probe of that benchmark: a probe of other weights or
    other data is refused there; kNN, low-shot and linear probes write their own reports side by side."""
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.safetensors"
    vggfeat.save_weights(vggfeat.create_model("vgg_a", seed=7, **TINY_GLOROT), other)
    base = ("voc2007", "--root", voc, *FAST, "--Cs", "1")
    invoke("linear-probe", *base, "--weights", weights)
    first = (tmp_path / "vggfeat-out" / "voc2007" / "linear-probe.json").read_text()
    invoke("knn-probe", *base[:-2], "--weights", weights, "-k", "3")  # its own report, beside
    r = CliRunner().invoke(cli, ["linear-probe", *map(str, base), "--weights", str(other)])
    assert r.exit_code == 1 and "its features differ" in r.output and "--overwrite" in r.output, r.output
    assert (tmp_path / "vggfeat-out" / "voc2007" / "linear-probe.json").read_text() == first
    assert (tmp_path / "vggfeat-out" / "voc2007" / "knn-probe.json").is_file()


def test_features_store_path_knn_probe_and_sklearn_reference(voc, weights, tmp_path):
    store = tmp_path / "store"
    invoke("extract", voc / "VOCdevkit" / "VOC2007" / "JPEGImages", "-o", store, "--weights", weights, *FAST)
    invoke("linear-probe", "voc2007", "--root", voc, "-o", tmp_path / "a", "--features", store, "--Cs", "0.1,1,10")
    invoke(
        "linear-probe",
        "voc2007",
        "--root",
        voc,
        "-o",
        tmp_path / "b",
        "--features",
        store,
        "--Cs",
        "0.1,1,10",
        "--classifier",
        "sklearn",
    )
    ours = json.loads((tmp_path / "a" / "linear-probe.json").read_text())
    ref = json.loads((tmp_path / "b" / "linear-probe.json").read_text())
    assert ours["features"]["store"] == ref["features"]["store"] == str(store)
    assert abs(ours["headline"] - ref["headline"]) <= 0.1 + 1e-9  # within 0.1 AP points of the LinearSVC reference

    text = invoke("knn-probe", "voc2007", "--root", voc, "-o", tmp_path / "k", "--features", store, "-k", "5")
    knn = json.loads((tmp_path / "k" / "knn-probe.json").read_text())
    assert knn["method"] == "knn" and 0 < knn["headline"] <= 100 and f"{knn['headline']:.1f}" in text


def test_index_build_and_search_agree_with_brute_force(voc, weights, tmp_path):
    store_dir = tmp_path / "store"
    jpegs = voc / "VOCdevkit" / "VOC2007" / "JPEGImages"
    invoke("extract", jpegs, "-o", store_dir, "--weights", weights, *FAST)
    invoke("index", "build", store_dir, "-o", tmp_path / "idx", "--factory", "Flat")
    store = load_store(store_dir)
    query = sorted(jpegs.glob("*.jpg"))[7]
    text = invoke("index", "search", tmp_path / "idx", query, "-k", "3")
    lines = [line.split() for line in text.splitlines() if line.startswith("  ")]
    x = np.asarray(store.features, np.float32)
    q = x[store.paths.index(next(p for p in store.paths if p.endswith(query.name)))]
    top = np.argsort(-(x @ q), kind="stable")[:3]
    assert [line[2] for line in lines] == [store.paths[i] for i in top]
    np.testing.assert_allclose([float(line[1]) for line in lines], (x @ q)[top], atol=1e-4)
    assert lines[0][2].endswith(query.name)  # an indexed image finds itself first


def test_probe_errors_name_the_problem(voc, tmp_path, monkeypatch):
    monkeypatch.delenv("VGGFEAT_DATA", raising=False)
    r = CliRunner().invoke(cli, ["linear-probe", "voc2007", "-o", str(tmp_path / "o")])
    assert r.exit_code != 0 and "VGGFEAT_DATA" in r.output
    r = CliRunner().invoke(cli, ["linear-probe", "voc2012", "--root", str(voc), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0 and "VOC2012" in r.output
    r = CliRunner().invoke(cli, ["linear-probe", "voc2007", "--root", str(voc), "--Cs", "1,-2"])
    assert r.exit_code != 0 and "positive" in r.output
    r = CliRunner().invoke(cli, ["linear-probe", "voc2007", "--root", str(voc), "--features", str(tmp_path)])
    assert r.exit_code != 0 and "not a finished feature store" in r.output


def test_folder_benchmark_on_real_digits_reports_mean_class_recall_over_splits(weights, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "digits"
    for c in range(4):
        (root / f"digit{c}").mkdir(parents=True)
        for i, row in enumerate(np.flatnonzero(digits.target == c)[:12]):
            img = (digits.images[row] * 255 / 16).astype(np.uint8)
            Image.fromarray(img).resize((64, 64)).save(root / f"digit{c}" / f"{i}.png")
    out = tmp_path / "out"
    text = invoke(
        "linear-probe",
        "folder",
        "--root",
        root,
        "-o",
        out,
        "--weights",
        weights,
        *FAST,
        "--Cs",
        "0.1,10",
        "--splits",
        "2",
    )
    report = json.loads((out / "linear-probe.json").read_text())
    assert report["metric"] == "mean_class_recall" and len(report["per_split"]) == 2
    values = [s["headline"] for s in report["per_split"]]
    assert report["headline"] == pytest.approx(np.mean(values), abs=0.01)
    assert report["headline_std"] == pytest.approx(np.std(values), abs=0.01) and "+-" in text
    # one C for all classes per split, chosen by held-out mean class recall
    assert len({tuple(r["chosen_C"]) for r in report["per_class"]}) == 1
    assert (out / "splits" / "folder_split1_test.txt").is_file()


@pytest.mark.parametrize("command", ["linear-probe", "knn-probe"])
def test_single_class_folder_is_refused_by_both_probes(weights, tmp_path, command):
    from PIL import Image

    root = tmp_path / "one"
    (root / "only").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(root / "only" / f"{i}.png")
    r = CliRunner().invoke(
        cli,
        [
            command,
            "folder",
            "--root",
            str(root),
            "-o",
            str(tmp_path / "out"),
            "--weights",
            weights,
            *FAST,
            "--splits",
            "1",
        ],
    )
    # before: knn-probe reported 100 % (every neighbour votes for the only class)
    assert r.exit_code == 1, r.output
    assert "at least 2 classes" in r.output and "Traceback" not in r.output


# Runs in a fresh interpreter: every probe command with a missing dataset root, then which heavy modules it loaded.
MISSING_ROOT_SCRIPT = """
import json, sys, time
from click.testing import CliRunner
from vggfeat.cli.main import cli
heavy = ("torch", "sklearn", "scipy", "faiss", "matplotlib")
results = []
for root in sys.argv[1:]:
  for command in ("linear-probe", "knn-probe"):
    for benchmark in ("voc2007", "voc2012", "caltech101", "caltech256", "folder"):
        start = time.perf_counter()
        r = CliRunner().invoke(cli, [command, benchmark, "--root", root])
        results.append(dict(args=[command, benchmark, root], code=r.exit_code, output=r.output,
                            seconds=time.perf_counter() - start, heavy=[m for m in heavy if m in sys.modules]))
print(json.dumps(results))
"""


def test_missing_dataset_root_is_reported_before_torch_is_imported(tmp_path):
    """`vggfeat linear-probe voc2007` with no data answers at once: arguments are checked before torch, sklearn
    or faiss load (they take seconds to import), for both probes and every benchmark."""
    import subprocess
    import sys

    missing, empty = tmp_path / "no-such-data", tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", MISSING_ROOT_SCRIPT, str(missing), str(empty)],
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(done.stdout)
    assert len(results) == 20
    for r in results:
        assert r["code"] == 1, r
        if r["args"][2] == str(missing):
            assert (
                r["output"]
                == f"Error: no such dataset folder: {missing} (from root); pass --root DIR or set {DATA_ENV}\n"
            )
        else:  # the folder exists but holds no benchmark: one line naming what is missing
            assert r["output"].startswith("Error: ") and r["output"].count("\n") == 1, r
        assert r["heavy"] == [], f"{r['args']} imported {r['heavy']} before checking its arguments"


def test_index_search_keeps_queries_in_memory(voc, weights, tmp_path, monkeypatch):
    import tempfile

    from vggfeat.features import shard_files as fs

    store_dir = tmp_path / "store"
    jpegs = voc / "VOCdevkit" / "VOC2007" / "JPEGImages"
    invoke("extract", jpegs, "-o", store_dir, "--weights", weights, *FAST)
    invoke("index", "build", store_dir, "-o", tmp_path / "idx")

    def no_store(*a, **k):
        raise AssertionError("index search wrote a temporary feature store")

    # before: the queries went through extract_to_store into a TemporaryDirectory, chunk files and all
    for module, name in [(tempfile, "TemporaryDirectory"), (tempfile, "mkdtemp"), (fs, "write_shard")]:
        monkeypatch.setattr(module, name, no_store)
    queries = sorted(jpegs.glob("*.jpg"))[:2]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    # in this process: loader workers pass tensors through a socket in a mkdtemp folder, patched away above
    args = ["index", "search", str(tmp_path / "idx"), *map(str, queries), str(tmp_path / "bad.jpg"), "-k", "1"]
    result = CliRunner().invoke(cli, [*args, "--workers", "0"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line for line in lines if not line.startswith(" ")][:2] == [str(q) for q in queries]
    assert all(line.split()[2].endswith(q.name) for line, q in zip(lines[1::2], queries, strict=False))
    assert "skipped" in result.output and "bad.jpg" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["extract", "IMGS", "-o", "OUT"],
        ["linear-probe", "voc2007", "--root", "VOC"],
        ["knn-probe", "voc2007", "--root", "VOC"],
    ],
)
def test_scales_are_one_parameter_type_everywhere(command, voc, tmp_path):
    args = [str(voc) if a == "VOC" else str(tmp_path / a.lower()) if a in ("IMGS", "OUT") else a for a in command]
    for value, message in [("abc", "expected comma-separated integers"), ("256,16", "Q = 16 is below the minimum 32")]:
        result = CliRunner().invoke(cli, [*args, "--scales", value])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(cli, [*args, "--scales", "64,64"])
    assert result.exit_code == 2 and "distinct" in result.output


def test_cost_grid_parameter_type(voc, tmp_path):
    for value in ("1,-2", "0.1,x", "nan", ""):
        result = CliRunner().invoke(cli, ["linear-probe", "voc2007", "--root", str(voc), "--Cs", value])
        assert result.exit_code == 2 and "positive numbers" in result.output, (value, result.output)


def test_probe_report_is_printed_from_memory_not_read_back(voc, tmp_path, monkeypatch):
    """write_report returns the dict it wrote; the CLI prints its summary from that, never re-reading the JSON."""
    import pathlib

    from vggfeat.features.store import FEATURES_FILE, MANIFEST_FILE

    jpegs = sorted((voc / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))
    store = tmp_path / "store"
    store.mkdir()
    np.save(store / FEATURES_FILE, np.random.default_rng(0).standard_normal((len(jpegs), 8)).astype(np.float32))
    (store / MANIFEST_FILE).write_text(json.dumps({"paths": [str(p) for p in jpegs], "skipped": []}))
    real_read = pathlib.Path.read_text

    def read_text(self, *a, **k):
        assert not self.name.endswith("-probe.json"), "the report was read back from disk"
        return real_read(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    out = tmp_path / "o"
    text = invoke("knn-probe", "voc2007", "--root", voc, "-o", out, "--features", store, "-k", "3")
    monkeypatch.undo()
    written = json.loads((out / "knn-probe.json").read_text())
    assert f"{written['headline']:.1f}" in text and str(out / "knn-probe.json") in text
