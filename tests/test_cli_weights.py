"""`vggfeat weights info|convert`: what a file or name holds, and its conversion to vggfeat's
safetensors with its preprocessing, written atomically."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.models import TORCHVISION, Preprocessing, count_parameters, load_model, read_weights
from vggfeat.utils.files import sha256_file

pytest.importorskip("torchvision")
X64 = torch.rand(2, 3, 64, 64)


def run(*args, code=0):
    result = CliRunner().invoke(cli, ["weights", *map(str, args)])
    assert result.exit_code == code, result.output
    return result


def test_info_of_a_vggfeat_file(tiny_model, tmp_path):
    model = tiny_model("vgg_e")
    path = vggfeat.save_weights(model, tmp_path / "e.safetensors")
    d = json.loads(run("info", path, "--json").stdout)
    assert (d["kind"], d["layout"], d["arch"], d["config"]) == ("file", "vggfeat", "vgg_e", "E")
    assert d["parameters"] == count_parameters(model) and d["num_classes"] == 10
    assert d["sha256"] == sha256_file(path) and d["options"]["fc6_kernel"] == 2
    assert d["preprocessing_from"] == "the file's metadata"
    text = run("info", path).stdout
    assert re.search(rf"^parameters +{count_parameters(model):,}$", text, re.M) and "config E, 10 classes" in text
    assert "RGB in [0, 255], mean (123.68, 116.779, 103.939)" in text


def test_info_of_a_name_in_the_cache(primed_torch_home):
    d = json.loads(run("info", "torchvision:vgg16", "--json").stdout)
    assert (d["kind"], d["layout"], d["arch"], d["file"]) == (
        "torchvision",
        "torchvision",
        "vgg_d",
        str(primed_torch_home),
    )
    assert (
        Preprocessing.from_dict(d["preprocessing"]) == TORCHVISION
        and d["preprocessing_from"] == "torchvision's convention"
    )
    assert d["sha256"] == sha256_file(primed_torch_home)
    assert d["parameters"] == sum(v.numel() for v in torch.load(primed_torch_home, weights_only=True).values())


def test_convert_a_name_gives_the_same_net_with_its_preprocessing(primed_torch_home, tmp_path):
    out = tmp_path / "vgg16.safetensors"
    text = run("convert", "torchvision:vgg16", out).stdout
    assert f"torchvision:vgg16 -> {out} (vgg_d" in text
    tensors, meta = read_weights(out)
    assert tuple(tensors["fc6.weight"].shape) == (32, 32, 2, 2)  # Sect. 3.2: fc6 stored as its conv
    assert meta["source"] == "torchvision:vgg16" and meta["source_sha256"] == sha256_file(primed_torch_home)
    converted, named = load_model(out), load_model("torchvision:vgg16")
    assert converted.preprocessing == TORCHVISION and converted.num_classes == TINY["num_classes"]
    with torch.inference_mode():
        torch.testing.assert_close(converted(X64), named(X64), rtol=0, atol=0)
    # OUT is never silently replaced; the name must say safetensors
    result = run("convert", "torchvision:vgg16", out, code=1)
    assert result.stderr.strip() == f"Error: {out} already exists; pass --overwrite to replace it"
    run("convert", "torchvision:vgg16", out, "--overwrite")
    result = run("convert", "torchvision:vgg16", tmp_path / "x.pth", code=1)
    assert "name it" in result.stderr and "x.safetensors" in result.stderr


def test_convert_a_torch_file_and_a_crash_leaves_no_out(tiny_model, tmp_path, monkeypatch):
    import safetensors.torch

    src = tmp_path / "d.pth"
    torch.save({"state_dict": tiny_model("vgg_d", seed=2).state_dict()}, src)
    out = tmp_path / "d.safetensors"

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    result = CliRunner().invoke(cli, ["weights", "convert", str(src), str(out)])
    assert str(result.exception) == "killed mid-write" and not out.exists()
    monkeypatch.undo()
    run("convert", src, out)
    with torch.inference_mode():
        torch.testing.assert_close(load_model(out)(X64), tiny_model("vgg_d", seed=2).eval()(X64))


def test_errors_are_one_line(offline_caches, tmp_path, tiny_model):
    result = run("info", "torchvision:vgg11", code=1)
    assert len(result.stderr.strip().splitlines()) == 1 and "vggfeat weights convert torchvision:vgg11" in result.stderr
    result = run("convert", "torchvision:vgg11", tmp_path / "a.safetensors", code=1)
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "a.safetensors").exists()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a weight file")
    result = run("info", junk, code=1)
    assert result.stderr.startswith(f"Error: {junk}: not a valid safetensors file")
