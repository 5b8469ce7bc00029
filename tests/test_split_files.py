"""Split files written by the seeded benchmarks (folder, Caltech) round-trip any legal file name:
before, a name with a newline wrote a line that the next run could not read, so the first probe worked and
every rerun failed."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TINY
from PIL import Image

import vggfeat
from vggfeat.benchmarks.registry import load_benchmark
from vggfeat.cli.main import cli

ODD = ["new\nline.png", " lead.png", "trail .png", "#hash.png", "[bracket.png", "back\\slash.png", "form\x0cfeed.png"]
if sys.platform != "darwin":  # macOS file systems refuse names that are not UTF-8
    ODD.append(os.fsdecode(b"latin\xe9.png"))


def _dataset(root, names_a, n_b=4):
    rng = np.random.default_rng(0)
    for cls, names in (("a", names_a), ("b", [f"b{i}.png" for i in range(n_b)])):
        (root / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 255, (64, 72, 3), dtype=np.uint8)).save(root / cls / name, format="PNG")
    return root


def test_odd_file_names_round_trip_through_split_files(tmp_path):
    data = _dataset(tmp_path / "data", ["plain.png", *ODD])
    sdir = tmp_path / "splits"
    first = load_benchmark("folder", data, splits=2, splits_dir=sdir, test_fraction=0.3)
    again = load_benchmark("folder", data, splits=2, splits_dir=sdir, test_fraction=0.3)  # read back
    for a, b in zip(first, again, strict=True):
        assert a.train_paths == b.train_paths and a.test_paths == b.test_paths
        assert np.array_equal(a.train_labels, b.train_labels) and np.array_equal(a.test_labels, b.test_labels)
    names = {os.path.basename(p) for p in first[0].train_paths + first[0].test_paths}
    assert set(ODD) <= names
    lines = []
    for part in ("train", "test"):
        lines += (sdir / f"folder_split0_{part}.txt").read_text(encoding="utf-8").splitlines()
    assert "a/plain.png 0" in lines  # a name the plain form holds stays human-readable
    json_lines = [ln for ln in lines if ln.startswith("[")]
    # names a plain line cannot hold (newline, form feed, backslash, bytes that are not UTF-8) are JSON lines;
    # edge spaces, # and [ sit inside "a/NAME", where a plain line keeps them
    unprintable = [n for n in ODD if "\\" in n or not n.isprintable()]
    assert len(json_lines) == len(unprintable) >= 3 and all(ln.isascii() for ln in json_lines)


def test_old_plain_split_files_still_read(tmp_path):
    data = _dataset(tmp_path / "data", ["x.png", "[old.png", "y.png"])
    sdir = tmp_path / "splits"
    sdir.mkdir()
    (sdir / "folder_split0_train.txt").write_text("# written by vggfeat 0.1.0\na/x.png 0\na/[old.png 0\nb/b0.png 1\r\n")
    (sdir / "folder_split0_test.txt").write_text("a/y.png a\nb/b1.png b\n")
    (split,) = load_benchmark("folder", data, splits=1, splits_dir=sdir)
    assert [os.path.basename(p) for p in split.train_paths] == ["x.png", "[old.png", "b0.png"]
    assert split.test_labels.tolist() == [0, 1]


def test_linear_probe_reruns_on_a_folder_with_a_newline_in_a_file_name(tmp_path):
    data = _dataset(tmp_path / "data", ["a0.png", "a1.png", "a\n2.png", "a3.png"])
    w = vggfeat.save_weights(
        vggfeat.create_model("vgg_a", seed=0, **TINY),
        tmp_path / "w.safetensors",
    )
    store, out = tmp_path / "store", tmp_path / "out"
    r = CliRunner().invoke(cli, ["extract", str(data), "-o", str(store), "--weights", str(w), "--scales", "64"])
    assert r.exit_code == 0, r.output
    argv = ["linear-probe", "folder", "--root", str(data), "--features", str(store), "-o", str(out), "--Cs", "1"]
    for run in range(2):  # the second run reads the split files the first wrote
        r = CliRunner().invoke(cli, [*argv, "--splits", "2"])
        assert r.exit_code == 0, f"run {run + 1}: {r.output}"
    assert any(
        line.startswith('["a/a\\n2.png"')
        for line in (out / "splits" / "folder_split0_train.txt").read_text().splitlines()
        + (out / "splits" / "folder_split0_test.txt").read_text().splitlines()
    )


@pytest.mark.parametrize(
    "line",
    [
        '["a/x.png"]',
        '["a/x.png", 0, 1]',
        "[1, 0]",
        "[" * 100_000,  # nested past Python's recursion limit
        "a/x.png \u00b2",  # str.isdigit() is True, int() refuses it
        "a/x.png " + "1" * 5000,  # digits beyond int()'s limit
    ],
)
def test_malformed_json_lines_are_named(tmp_path, line):
    from vggfeat.benchmarks.base import DatasetError

    data = _dataset(tmp_path / "data", ["x.png", "y.png"])
    sdir = tmp_path / "splits"
    sdir.mkdir()
    (sdir / "folder_split0_train.txt").write_text(f"{line}\nb/b0.png 1\n")
    (sdir / "folder_split0_test.txt").write_text("a/y.png 0\nb/b1.png 1\n")
    with pytest.raises(DatasetError, match=r"folder_split0_train\.txt, line 1") as e:
        load_benchmark("folder", data, splits=1, splits_dir=sdir)
    assert len(str(e.value)) < 400  # the line is shown shortened


def test_split_files_of_an_older_vggfeat_are_checked_by_the_seed_in_their_header(tmp_path):
    """Files written before the JSON record existed name their seed and rule in the first line: another seed is
    refused there too (the seed-0 lists were reused while the report said seed 1)."""
    data = _dataset(tmp_path / "data", ["x.png", "y.png", "z.png"])
    sdir = tmp_path / "splits"
    sdir.mkdir()
    header = f"# vggfeat folder split 0 {{}}: seed 0, test fraction 0.3, test cap None; dataset folder {data}\n"
    (sdir / "folder_split0_train.txt").write_text(header.format("train") + "a/x.png 0\na/y.png 0\nb/b0.png 1\n")
    (sdir / "folder_split0_test.txt").write_text(header.format("test") + "a/z.png 0\nb/b1.png 1\n")
    (split,) = load_benchmark("folder", data, splits=1, splits_dir=sdir)  # seed 0: read as written
    assert split.test_labels.tolist() == [0, 1]
    with pytest.raises(vggfeat.errors.DatasetError, match="drawn with seed 0, not seed 1"):
        load_benchmark("folder", data, seed=1, splits=1, splits_dir=sdir)


def test_a_seed_of_thousands_of_digits_in_an_old_header_is_named(tmp_path):
    data = _dataset(tmp_path / "data", ["x.png", "y.png"])
    sdir = tmp_path / "splits"
    sdir.mkdir()
    seed = "9" * 5000  # the header's pattern matches it; int() refuses it
    header = f"# vggfeat folder split 0 {{}}: seed {seed}, test fraction 0.3, test cap None; dataset folder {data}\n"
    (sdir / "folder_split0_train.txt").write_text(header.format("train") + "a/x.png 0\nb/b0.png 1\n")
    (sdir / "folder_split0_test.txt").write_text(header.format("test") + "a/y.png 0\nb/b1.png 1\n")
    with pytest.raises(vggfeat.errors.DatasetError, match=r"folder_split0_train\.txt, line 1: ") as e:
        load_benchmark("folder", data, splits=1, splits_dir=sdir)
    assert len(str(e.value)) < 400
