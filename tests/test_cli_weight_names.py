"""`--weights NAME` on every command that computes features: torchvision:vgg16 from a primed
torch.hub cache, recorded by name in manifests, the same descriptors as the file itself; offline without the
file, one `Error:` line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vggfeat.cli.main import cli
from vggfeat.features.store import load_store

pytest.importorskip("torchvision")
FAST = ["--scales", "64", "--workers", "0", "--quiet", "--device", "cpu"]


def _images(folder, n=3):
    folder.mkdir()
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, (64 + 8 * i, 72, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def run(*args, code=0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_extract_and_index_search_by_name(primed_torch_home, tmp_path):
    imgs = _images(tmp_path / "imgs")
    run("extract", imgs, "-o", tmp_path / "named", "--weights", "torchvision:vgg16", *FAST)
    run("extract", imgs, "-o", tmp_path / "file", "--weights", primed_torch_home, *FAST)
    named, by_file = load_store(tmp_path / "named"), load_store(tmp_path / "file")
    np.testing.assert_array_equal(named.features[:], by_file.features[:])
    (model,) = named.manifest["models"]
    assert model["weights"] == "torchvision:vgg16"  # the portable name, not this machine's cache path
    assert model["weights_sha256"] == by_file.manifest["models"][0]["weights_sha256"]
    run("index", "build", tmp_path / "named", "-o", tmp_path / "idx")
    out = run("index", "search", tmp_path / "idx", imgs / "1.png", "-k", "1", "--device", "cpu").output
    assert out.splitlines()[1].split()[1:] == ["1.0000", str(imgs / "1.png")]  # re-described through the name


def test_evaluate_accepts_a_name(primed_torch_home, tmp_path):
    root = tmp_path / "data"
    for c in ("n00", "n01"):
        (root / "val" / c).mkdir(parents=True)
        Image.new("RGB", (70, 80), (10, 200, 30)).save(root / "val" / c / "a.png")
    (tmp_path / "classes.txt").write_text("\n".join(f"n{i:02d}" for i in range(10)))
    args = ["evaluate", "--data-root", root, "--classes", tmp_path / "classes.txt", "--scales", "64", "--json"]
    rows = json.loads(run(*args, "--weights", "torchvision:vgg16", "--device", "cpu", "--quiet").stdout)
    assert [r["net"] for r in rows] == ["torchvision:vgg16"]
    by_file = json.loads(run(*args, "--weights", primed_torch_home, "--device", "cpu", "--quiet").stdout)
    assert rows[0]["top1_err"] == by_file[0]["top1_err"] and rows[0]["top5_err"] == by_file[0]["top5_err"]


def test_linear_probe_accepts_a_name(primed_torch_home, tmp_path):
    from vggfeat.data.synthetic_voc import make_voc2007

    make_voc2007(tmp_path / "voc", n_trainval=20, n_test=20, seed=0)
    out = tmp_path / "out"
    run("linear-probe", "voc2007", "--root", tmp_path / "voc", "-o", out, "--weights", "torchvision:vgg16", *FAST)
    (store,) = (out / "features").iterdir()
    assert json.loads((store / "manifest.json").read_text())["models"][0]["weights"] == "torchvision:vgg16"


@pytest.mark.parametrize("command", ["extract", "evaluate"])
def test_offline_without_cache_is_one_error_line(offline_caches, tmp_path, command):
    imgs = _images(tmp_path / "imgs", 1)
    if command == "extract":
        args = ["extract", imgs, "-o", tmp_path / "o", "--weights", "torchvision:vgg13", *FAST]
    else:
        args = ["evaluate", "--data-root", tmp_path, "--weights", "torchvision:vgg13", "--device", "cpu"]
    result = run(*args, code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: torchvision:vgg13: vgg13-")
    assert "hub/checkpoints/vgg13-" in lines[0] and "vggfeat weights convert torchvision:vgg13" in lines[0]


# without --weights, commands that compute features use net D with torchvision's ImageNet weights


def test_extract_without_weights_uses_the_default_pretrained_net(primed_torch_home, tmp_path):
    imgs = _images(tmp_path / "imgs")
    result = run("extract", imgs, "-o", tmp_path / "default", *FAST)
    assert "weights: torchvision:vgg16 (the default" in result.stderr and "random" not in result.stderr.lower()
    run("extract", imgs, "-o", tmp_path / "named", "--weights", "torchvision:vgg16", *FAST)
    default, named = load_store(tmp_path / "default"), load_store(tmp_path / "named")
    assert default.manifest["models"] == named.manifest["models"]
    assert default.manifest["models"][0]["weights"] == "torchvision:vgg16"
    np.testing.assert_array_equal(default.features[:], named.features[:])
    # random only when asked, recorded as such: test_features_store.py::test_random_weights_only_when_asked_and_said


def test_evaluate_and_probe_without_weights_use_the_default(primed_torch_home, tmp_path):
    from vggfeat.data.synthetic_voc import make_voc2007

    root = tmp_path / "data"
    for c in ("n00", "n01"):
        (root / "val" / c).mkdir(parents=True)
        Image.new("RGB", (70, 80), (10, 200, 30)).save(root / "val" / c / "a.png")
    (tmp_path / "classes.txt").write_text("\n".join(f"n{i:02d}" for i in range(10)))
    args = ["evaluate", "--data-root", root, "--classes", tmp_path / "classes.txt", "--scales", "64", "--json"]
    rows = json.loads(run(*args, "--device", "cpu", "--quiet").stdout)
    assert [r["net"] for r in rows] == ["torchvision:vgg16"]
    make_voc2007(tmp_path / "voc", n_trainval=20, n_test=20, seed=0)
    out = tmp_path / "out"
    run("linear-probe", "voc2007", "--root", tmp_path / "voc", "-o", out, *FAST)
    (store,) = (out / "features").iterdir()
    assert json.loads((store / "manifest.json").read_text())["models"][0]["weights"] == "torchvision:vgg16"


@pytest.mark.parametrize("command", ["extract", "evaluate", "linear-probe"])
def test_default_offline_without_cache_is_one_error_line(offline_caches, tmp_path, command):
    imgs = _images(tmp_path / "imgs", 1)
    if command == "extract":
        args = ["extract", imgs, "-o", tmp_path / "o", *FAST]
    elif command == "evaluate":
        args = ["evaluate", "--data-root", tmp_path, "--device", "cpu"]
    else:
        from vggfeat.data.synthetic_voc import make_voc2007

        make_voc2007(tmp_path / "voc", n_trainval=4, n_test=4, seed=0)
        args = ["linear-probe", "voc2007", "--root", tmp_path / "voc", "-o", tmp_path / "out", *FAST]
    result = run(*args, code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: torchvision:vgg16: vgg16-397923af.pth is not in"), lines
    assert str(offline_caches / "torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth") in lines[0]
    assert "vggfeat weights convert torchvision:vgg16 vgg16.safetensors" in lines[0]
    assert not (tmp_path / "o").exists()


def test_nets_without_torchvision_weights_need_explicit_weights(offline_caches, tmp_path):
    result = run("extract", _images(tmp_path / "imgs", 1), "-o", tmp_path / "o", "--model", "vgg_c", *FAST, code=1)
    assert "no pretrained weights for vgg_c" in result.stderr and "--weights random" in result.stderr
