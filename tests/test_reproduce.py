"""`vggfeat reproduce table11/table12` end to end on generated layouts with tiny nets: each net's features are
extracted once per benchmark, D & E stacks them, a missing dataset is an empty column with its reason, and a
rerun extracts and probes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY_GLOROT

import vggfeat
import vggfeat.features.engine as engine_module
import vggfeat.features.extract as extract_module
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import draw_scene, make_voc2007
from vggfeat.data.synthetic_voc_action import make_voc2012_action
from vggfeat.features.store import load_store

FAST = ["--scales", "64", "--workers", "0", "--quiet", "--Cs", "0.1,1,10", "--device", "cpu"]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    d = vggfeat.save_weights(vggfeat.create_model("vgg_d", seed=0, **TINY_GLOROT), folder / "d.safetensors")
    e = vggfeat.save_weights(vggfeat.create_model("vgg_e", seed=1, **TINY_GLOROT), folder / "e.safetensors")
    return str(d), str(e)


@pytest.fixture
def counted(monkeypatch):
    """The images each extraction described (a finished store that is reused describes none)."""
    calls: list[list[str]] = []
    real = extract_module.extract_to_store
    real_describe = engine_module.DescriptorEngine.feed

    def counting(images, out, *args, **kwargs):
        calls.append([])
        return real(images, out, *args, **kwargs)

    def describing(self, items, *args, **kwargs):
        calls[-1].extend(i for i, _ in items)
        return real_describe(self, items, *args, **kwargs)

    monkeypatch.setattr(extract_module, "extract_to_store", counting)
    monkeypatch.setattr(engine_module.DescriptorEngine, "feed", describing)
    return calls


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def make_caltech101(root, per_class=5, seed=0):
    rng = np.random.default_rng(seed)
    for cls in ("BACKGROUND_Google", "Faces", "ant"):
        (root / "101_ObjectCategories" / cls).mkdir(parents=True)
        for k in range(per_class):
            img, _ = draw_scene(rng, (80, 64))
            img.save(root / "101_ObjectCategories" / cls / f"image_{k:04d}.jpg")


@pytest.mark.slow
def test_table11_runs_present_benchmarks_once_and_resumes(tmp_path, nets, counted):
    root = tmp_path / "data"
    make_voc2007(root, n_trainval=24, n_test=16, seed=1, size=(80, 64))
    make_caltech101(root)
    out = tmp_path / "t11"
    text = invoke("reproduce", "table11", "--root", root, "--net-d", nets[0], "--net-e", nets[1], "-o", out, *FAST)

    # one extraction per (benchmark, net), each image once: D & E reuses the D and E stores
    done = [c for c in counted if c]  # extractions that described images (a reused store describes none)
    assert len(done) == 4 and all(len(c) == len(set(c)) for c in done)
    assert sorted(len(c) for c in done) == [15, 15, 40, 40]
    table = json.loads((out / "table11.json").read_text())
    assert (out / "table11.md").is_file() and (out / "table11.png").stat().st_size > 1000
    cols = {c["id"]: c for c in table["columns"]}
    assert cols["voc2007"]["status"] == cols["caltech101"]["status"] == "done"
    assert cols["voc2012"]["status"] == cols["caltech256"]["status"] == "missing"
    assert "no VOC2012 folder found" in cols["voc2012"]["reason"] and "voc2012: empty - " in text
    rows = {r["row"]: r["cells"] for r in table["rows"]}
    for r in ("D", "E", "D&E"):
        assert 0 <= rows[r]["voc2007"]["ours"] <= 100 and rows[r]["voc2012"]["ours"] is None
        assert len(rows[r]["caltech101"]["per_split"]) == 3 and rows[r]["caltech101"]["std"] is not None
    # the paper's numbers beside ours, labelled as the paper's
    assert rows["D&E"]["voc2007"]["paper"] == [89.7, None] and rows["E"]["caltech101"]["paper"] == [92.3, 0.5]
    assert rows["D&E"]["voc2012"]["paper"] == [89.3, None]  # shown even where our column is empty
    assert "VGG Net-D & Net-E (paper)" in text and "reference, not measured here" in text
    assert f"{rows['D']['voc2007']['ours']:.1f}" in text
    assert (
        "| VGG Net-D - paper (reference) | 89.3 | 89.0 | 91.8 +- 1.0 | 85.0 +- 0.2 |"
        in (out / "table11.md").read_text()
    )

    # D & E probes the stacked D and E descriptors: its report names both nets and is 64-D
    de = json.loads(open(rows["D&E"]["voc2007"]["report"]).read())
    assert de["features"]["dim"] == 64 and len(de["features"]["models"]) == 2
    d = json.loads(open(rows["D"]["voc2007"]["report"]).read())
    assert d["features"]["dim"] == 32 and load_store(d["features"]["store"]).dim == 32

    # a rerun extracts nothing and reuses every finished row
    counted.clear()
    again = invoke("reproduce", "table11", "--root", root, "--net-d", nets[0], "--net-e", nets[1], "-o", out, *FAST)
    assert not any(counted) and "probing" not in again and "reused" in again
    assert json.loads((out / "table11.json").read_text())["rows"] == table["rows"]

    # another C grid: rows are probed again, still on the cached features
    text = invoke("reproduce", "table11", "--root", root, "--net-d", nets[0], "--net-e", nets[1], "-o", out, *FAST[:-4])
    assert not any(counted) and "probing" in text


def test_table11_fast_voc_only_resumes(tmp_path, nets, counted):
    root = tmp_path / "data"
    make_voc2007(root, n_trainval=16, n_test=12, seed=2, size=(72, 64))
    out = tmp_path / "t11"
    args = ("reproduce", "table11", "--root", root, "--net-d", nets[0], "--net-e", nets[1], "-o", out, *FAST)
    text = invoke(*args)
    assert sorted(len(c) for c in counted if c) == [28, 28]  # D once, E once; D & E extracts nothing
    table = json.loads((out / "table11.json").read_text())
    assert [c["status"] for c in table["columns"]] == ["done", "missing", "missing", "missing"]
    assert "VGG Net-D & Net-E (paper)" in text and "reference, not measured here" in text
    counted.clear()
    assert "probing" not in invoke(*args) and not any(counted)


def test_rows_computed_in_bfloat16_are_not_reused_at_float32(tmp_path, nets, counted):
    """A finished row is keyed by the effective compute precision (bf16 with --device cuda): a CPU (float32)
    rerun probes again and reports what a fresh float32 run does."""
    from vggfeat.features.runtime import Runtime
    from vggfeat.reproduce import Nets, ReproduceOptions, reproduce_table

    root = tmp_path / "data"
    make_voc2007(root, n_trainval=12, n_test=8, seed=2, size=(64, 64))
    pair = Nets(("auto", nets[0]), ("auto", nets[1]))

    def table(out, precision):
        runtime = Runtime(device="cpu", workers=0, precision=precision)
        options = ReproduceOptions(scales=(64,), Cs=(1.0,), runtime=runtime, progress=False)
        found = reproduce_table("table11", root, out, pair, options)
        return [r["cells"]["voc2007"]["ours"] for r in found["rows"]]

    table(tmp_path / "t", "bfloat16")
    counted.clear()
    float32 = table(tmp_path / "t", "float32")
    assert sorted(len(c) for c in counted if c) == [20, 20]  # before: every row reused, nothing extracted
    assert float32 == table(tmp_path / "fresh", "float32")


def test_table12_image_and_box(tmp_path, nets, counted):
    root = tmp_path / "data"
    make_voc2012_action(root, n_train=20, n_val=14, seed=3, size=(96, 72))
    out = tmp_path / "t12"
    text = invoke("reproduce", "table12", "--root", root, "--net-d", nets[0], "--net-e", nets[1], "-o", out, *FAST)
    # per net: the images once and the person boxes once
    assert len([c for c in counted if c]) == 4
    table = json.loads((out / "table12.json").read_text())
    rows = {r["row"]: r["cells"] for r in table["rows"]}
    assert rows["D&E"]["voc2012-action:image+box"]["paper"] == [84.0, None]
    assert (
        rows["D&E"]["voc2012-action:image"]["paper"] == [79.2, None]
        and rows["D"]["voc2012-action:image"]["paper"] is None
    )
    assert all(0 <= rows[r][c]["ours"] <= 100 for r in rows for c in rows[r])
    report = json.loads(open(rows["D&E"]["voc2012-action:image+box"]["report"]).read())
    assert report["features"]["dim"] == 4 * 32 and len(report["per_class"]) == 10  # image D, box D, image E, box E
    assert "Table 12" in text
    counted.clear()
    invoke("reproduce", "table12", "--root", root, "--net-d", nets[0], "--net-e", nets[1], "-o", out, *FAST)
    assert not any(counted)


def test_no_dataset_at_all_is_an_error_naming_what_was_looked_for(tmp_path, nets):
    """A mistyped --root was a table of four empty columns and exit 0; it is one Error line and no table."""
    out = tmp_path / "t"
    args = ["reproduce", "table11", "--root", str(tmp_path), "--net-d", nets[0], "--net-e", nets[1], "-o", str(out)]
    result = CliRunner().invoke(cli, args + FAST)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: none of table11's datasets is under {tmp_path}")
    assert "VOC2007" in last and "256_ObjectCategories" in last
    assert not (out / "table11.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "not weights"])
def test_damaged_weights_are_refused_before_any_dataset_is_read(tmp_path, nets, damage, counted):
    """A damaged --net-e file was only noticed when its first extraction started (never, with no dataset)."""
    bad = tmp_path / "e.safetensors"
    data = open(nets[1], "rb").read()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello" * 100)
    make_voc2007(tmp_path / "data", n_trainval=8, n_test=8, seed=0, size=(64, 64))
    args = ["reproduce", "table11", "--root", str(tmp_path / "data"), "--net-d", nets[0], "--net-e", str(bad)]
    result = CliRunner().invoke(cli, args + ["-o", str(tmp_path / "t"), *FAST])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ") and str(bad) in result.output
    assert not any(counted)  # nothing extracted, not even net D's features


def test_a_missing_weight_file_is_one_error_line(tmp_path):
    result = CliRunner().invoke(
        cli, ["reproduce", "table11", "--root", str(tmp_path), "--net-d", "nope.safetensors", "--net-e", "random"]
    )
    assert result.exit_code == 1 and "Error: weight file 'nope.safetensors' not found" in result.output


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"key": "\xff"}'])
def test_a_damaged_finished_row_is_probed_again(tmp_path, text):
    """A row file that does not read back (nested past Python's recursion limit, not UTF-8) is no finished row."""
    from vggfeat.reproduce.tables import _reuse

    row = tmp_path / "row.json"
    row.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    assert _reuse(row, "key") is None
    row.write_text(json.dumps({"key": "key", "cell": {"ours": 1.5}}))
    assert _reuse(row, "key") == {"ours": 1.5}
