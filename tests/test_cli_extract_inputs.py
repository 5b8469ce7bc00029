"""`vggfeat extract` with inputs and settings that used to go wrong: a random net's seed, descriptors beyond
float16 or not finite, file names that are not UTF-8, symlinked subfolders."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY, store_paths, store_rows
from PIL import Image

import vggfeat
from vggfeat.cli.main import cli

FAST = ["--scales", "64", "--workers", "0", "--quiet"]


def _images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(folder / f"img{k}.png")
    return folder


def _extract(*args):
    return CliRunner().invoke(cli, ["extract", *map(str, args)])


def _one_error_line(r):
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 1 and len(errors) == 1, r.output
    return errors[0]


# a tiny timm net: a random VGG-A would be 133 M parameters to initialise per run
RANDOM = ["--model", "timm:test_resnet", "--weights", "random", "--scales", "64", "--workers", "0"]


def test_a_random_nets_seed_is_part_of_the_store(tmp_path):
    src, out = _images(tmp_path / "imgs", 3), tmp_path / "store"
    assert _extract(src, "-o", out, *RANDOM, "--quiet", "--seed", "0").exit_code == 0
    seed0 = store_rows(out)
    # before: the seed was not in the store's settings: "already complete", and seed 0's rows served for seed 1
    other = _extract(src, "-o", out, *RANDOM, "--quiet", "--seed", "1")
    assert "already complete" not in other.output
    assert "other settings" in _one_error_line(other) and "seed: 0 -> 1" in other.output
    assert _extract(src, "-o", out, *RANDOM, "--quiet", "--seed", "1", "--overwrite").exit_code == 0
    assert _extract(src, "-o", tmp_path / "fresh1", *RANDOM, "--quiet", "--seed", "1").exit_code == 0
    assert np.array_equal(store_rows(out), store_rows(tmp_path / "fresh1"))
    assert not np.allclose(store_rows(out), seed0)


def test_a_resumed_random_net_with_another_seed_does_not_mix_rows(tmp_path):
    src, out = _images(tmp_path / "imgs", 4), tmp_path / "store"
    first = _extract(src, "-o", out, *RANDOM, "--quiet", "--seed", "0", "--shard-size", "2")
    assert first.exit_code == 0
    (out / "manifest.json").unlink()  # as if killed before the end: an unfinished run of seed 0
    for record in sorted((out / "shards").glob("*.json"))[1:]:
        record.unlink()
    resumed = _extract(src, "-o", out, *RANDOM, "--quiet", "--seed", "1", "--shard-size", "2")
    assert "unfinished run with other settings" in _one_error_line(resumed) and "seed" in resumed.output


def _huge_weights(tmp_path, scale):
    net = vggfeat.create_model("vgg_a", seed=0, **{**TINY, "init": "glorot"})
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    return vggfeat.save_weights(net, tmp_path / f"huge{scale:g}.safetensors")


def test_float16_refuses_descriptors_beyond_its_range_in_one_line(tmp_path):
    src = _images(tmp_path / "imgs", 2)
    weights = _huge_weights(tmp_path, 8.0)
    ok = _extract(src, "-o", tmp_path / "f32", "--weights", weights, "--no-l2", *FAST)
    assert ok.exit_code == 0, ok.output
    assert np.abs(store_rows(tmp_path / "f32")).max() > 65504  # the premise: float16 cannot hold these
    r = _extract(src, "-o", tmp_path / "f16", "--weights", weights, "--no-l2", "--dtype", "float16", *FAST)
    # before: a numpy cast warning and a store of inf, exit 0
    error = _one_error_line(r)
    assert "beyond float16's range" in error and "--dtype float32" in error and "img0.png" in error
    assert "RuntimeWarning" not in r.output and not (tmp_path / "f16" / "emb").exists()
    status = CliRunner().invoke(cli, ["store", "status", str(tmp_path / "f16")])
    assert status.exit_code == 1 and "failed  000000:" in status.output and "float16" in status.output


def test_a_non_finite_descriptor_is_never_written(tmp_path):
    src = _images(tmp_path / "imgs", 2)
    net = vggfeat.create_model("vgg_a", seed=0, **{**TINY, "init": "glorot"})
    with torch.no_grad():  # finite weights whose fc7 overflows float32: 32 inputs of at least 1 times 1e38
        net.fc6.bias.fill_(1.0)
        net.fc7.weight.fill_(1e38)
    weights = vggfeat.save_weights(net, tmp_path / "overflow.safetensors")
    r = _extract(src, "-o", tmp_path / "s", "--weights", weights, *FAST)
    error = _one_error_line(r)
    assert "not finite" in error and "img0.png" in error
    assert not any((tmp_path / "s").rglob("*.npy"))


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_file_name_that_is_not_utf8_works(tmp_path):
    src = _images(tmp_path / "imgs", 2)
    latin1 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name, as old cameras and Windows shares write them
    (src / "img1.png").rename(src / latin1)
    out = tmp_path / "store"
    weights = _huge_weights(tmp_path, 1.0)
    r = _extract(src, "-o", out, "--weights", weights, *FAST)
    # before: UnicodeEncodeError in the store settings, a traceback
    assert r.exit_code == 0, r.output
    paths = store_paths(out)
    assert sorted(os.path.basename(p) for p in paths) == sorted([latin1, "img0.png"])
    assert all(os.path.isfile(p) for p in paths)  # the recorded path opens: the bytes are kept
    again = _extract(src, "-o", out, "--weights", weights, *FAST)
    assert "already complete" in again.output


def test_symlinked_subfolders_are_followed_once(tmp_path):
    src = _images(tmp_path / "imgs", 1)
    _images(tmp_path / "elsewhere", 2, seed=1)
    (src / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (src / "loop").symlink_to(src, target_is_directory=True)  # a cycle must not loop forever
    out = tmp_path / "store"
    r = _extract(src, "-o", out, "--weights", _huge_weights(tmp_path, 1.0), *FAST)
    assert r.exit_code == 0, r.output
    # before: the linked folder's images were skipped without a word
    names = [os.path.relpath(p, src) for p in store_paths(out)]
    assert names == ["img0.png", "linked/img0.png", "linked/img1.png"]
