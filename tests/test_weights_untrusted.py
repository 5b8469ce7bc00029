"""Untrusted weight files through the commands users run: every file ends in a net or one Error line, in time
and memory bounded by its size; non-finite values, zero-sized layers and nets far larger than the file are refused
before anything is allocated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_wire import caffe_layers, key, net_pieces, string, submessage, varint, write_caffemodel
from click.testing import CliRunner
from helpers import TINY, prime_hf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.models import read_weights

TESTS = Path(__file__).resolve().parent


def run(*args: object, code: int = 1):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    if code in (1, 2):  # one Error line, last (after notes such as the one --weights random prints)
        lines = result.stderr.strip().splitlines()
        assert [ln for ln in lines if ln.startswith("Error: ")] == lines[-1:], result.output
        assert "Traceback" not in result.output
    return result


def in_subprocess(script: str, timeout: float) -> dict:
    """Run `script` in a fresh Python (a hang or a blowup fails the test instead of stalling the suite); it
    prints one JSON object last."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish within {timeout} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def safe_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def state_of(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def write_caffe(path: Path, state: dict[str, np.ndarray]) -> Path:
    return write_caffemodel(path, net_pieces(caffe_layers(state)))


# -- reading in bounded time ------------------------------------------------------------------------------------


def test_float_fields_with_the_other_fixed_width_are_one_error_not_a_hang(tmp_path):
    # float data (field 5) as a 64-bit value, double data (field 8) as a 32-bit one: runs of zero values
    files = {
        "f5w1.caffemodel": bytes([0x12, 11, 0x32, 9, key(5, 1)[0]]) + bytes(8),
        "f8w5.caffemodel": bytes([0x12, 7, 0x32, 5, key(8, 5)[0]]) + bytes(4),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    results = in_subprocess(
        f"""
        import json
        from click.testing import CliRunner
        from vggfeat.cli.main import cli
        out = {{}}
        for name in {sorted(files)!r}:
            r = CliRunner().invoke(cli, ["weights", "info", {str(tmp_path)!r} + "/" + name])
            out[name] = [r.exit_code, r.output]
        print(json.dumps(out))
        """,
        timeout=60,
    )
    for name, (code, output) in results.items():
        assert code == 1 and output.count("\n") == 1, output
        assert output.startswith(f"Error: {tmp_path / name}: not a readable Caffe model") and "wire type" in output


def unpacked_runs_of_one(path: Path, n: int) -> Path:
    """A blob whose n floats each stand alone: one (key, float) record, then a legacy dim, n times."""
    record = key(5, 5) + np.float32(0.5).tobytes() + key(1, 0) + varint(1)
    body = [string(1, "conv1_1"), string(2, "Convolution"), *submessage(7, [record * n])]
    return write_caffemodel(path, submessage(100, body))


def test_unpacked_runs_cost_time_linear_in_the_file(tmp_path):
    small, big = (
        unpacked_runs_of_one(tmp_path / "s.caffemodel", 10_000),
        unpacked_runs_of_one(tmp_path / "b.caffemodel", 80_000),
    )
    times = in_subprocess(
        f"""
        import json, time
        from vggfeat.errors import WeightsError
        from vggfeat.models import read_weights
        out = {{}}
        for path in ({str(small)!r}, {str(big)!r}):
            best = 1e9
            for _ in range(2):
                start = time.perf_counter()
                try:
                    read_weights(path)
                except WeightsError as e:
                    assert "holds no Caffe layers" not in str(e)
                best = min(best, time.perf_counter() - start)
            out[path] = best
        print(json.dumps(out))
        """,
        timeout=90,
    )
    ratio = times[str(big)] / times[str(small)]
    assert ratio < 24, times  # 8x the bytes: 8x the time when linear, 64x when quadratic


def test_many_empty_layers_are_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "layers.caffemodel"
    path.write_bytes(b"\x12\x00" * 300_000)  # 300,000 empty layers in 600 kB
    result = run("weights", "info", path)
    assert "more than 10,000 layers" in result.stderr and str(path) in result.stderr


# -- numbers that cannot be numbers -----------------------------------------------------------------------------


def poisoned(tiny_model, value: float, name: str = "conv1_1.weight") -> dict[str, np.ndarray]:
    state = state_of(tiny_model("vgg_d"))
    state[name].reshape(-1)[3] = value
    return state


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_in_every_format(tiny_model, tmp_path, value):
    caffe = write_caffe(tmp_path / "nan.caffemodel", poisoned(tiny_model, value))
    result = run("weights", "info", caffe)
    assert f"{caffe}: tensor conv1_1.weight holds 1 non-finite value" in result.stderr
    state = {k: torch.from_numpy(v) for k, v in poisoned(tiny_model, value, "fc7.bias").items()}
    safetensors = tmp_path / "nan.safetensors"
    save_file(state, str(safetensors))
    assert f"{safetensors}: tensor fc7.bias holds 1 non-finite value" in run("weights", "info", safetensors).stderr
    pth = tmp_path / "nan.pth"
    torch.save({"state_dict": state}, pth)
    assert f"{pth}: tensor fc7.bias holds 1 non-finite value" in run("weights", "info", pth).stderr
    out = tmp_path / "store"
    extract = [
        "extract",
        one_image(tmp_path),
        "-o",
        out,
        "--scales",
        "64",
        "--workers",
        "0",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert "non-finite" in run(*extract, "--weights", caffe).stderr and not (out / "emb").exists()


@pytest.mark.parametrize("field, value", [("mean", float("nan")), ("std", float("inf")), ("value_range", float("inf"))])
def test_non_finite_preprocessing_metadata_is_one_error(tiny_model, tmp_path, field, value):
    path = vggfeat.save_weights(tiny_model(), tmp_path / "w.safetensors")
    meta = safe_metadata(path)
    pre = json.loads(meta["preprocessing"])
    pre[field] = [value, 1.0, 1.0] if field != "value_range" else value
    meta["preprocessing"] = json.dumps(pre)  # what a careless writer makes: `NaN` in the metadata's JSON
    save_file(load_file(str(path)), str(path), metadata=meta)
    for args in (("weights", "info", path), ("weights", "info", "--json", path)):
        err = run(*args).stderr  # never `"mean": [NaN, ...]` printed as if it were JSON
        assert f"{path}: metadata 'preprocessing' is not usable (" in err and "must be finite numbers" in err, err


@pytest.mark.parametrize("key", ["preprocessing", "options"])
def test_metadata_json_nested_past_the_recursion_limit_is_one_error(tiny_model, tmp_path, key):
    path = vggfeat.save_weights(tiny_model(), tmp_path / "w.safetensors")
    meta = safe_metadata(path)
    meta[key] = "[" * 100_000
    save_file(load_file(str(path)), str(path), metadata=meta)
    for args in (("weights", "info", path), ("weights", "convert", path, tmp_path / "out.safetensors")):
        err = run(*args).stderr
        assert err.startswith(f"Error: {path}: metadata {key!r} is not valid JSON (nested "), err


def test_doubles_beyond_float32_are_refused_without_a_warning(tiny_model, tmp_path):
    layers = caffe_layers(state_of(tiny_model("vgg_d")))
    name, type_, (weight, bias) = layers[3]
    weight = weight.astype(np.float64)
    weight.reshape(-1)[0] = 1e300  # a double-precision net's value that float32 cannot hold
    layers[3] = (name, type_, [weight, bias])
    path = write_caffemodel(tmp_path / "big.caffemodel", net_pieces(layers, double=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's cast warning would be a second line
        result = run("weights", "info", path)
    assert f"{path}: tensor {name}.weight holds 1 non-finite value" in result.stderr


def test_non_finite_weights_in_the_library_caches_are_refused(tiny_model, offline_caches):
    from conftest import tiny_torchvision_vgg, torchvision_cache_file

    tv = tiny_torchvision_vgg("vgg16").state_dict()
    tv["classifier.0.weight"][0, 0] = float("nan")
    cached = torchvision_cache_file("vgg16")
    cached.parent.mkdir(parents=True)
    torch.save(tv, cached)
    result = run("weights", "info", "torchvision:vgg16")
    assert "tensor classifier.0.weight holds 1 non-finite value" in result.stderr and str(cached) in result.stderr
    state = {k: torch.from_numpy(v) for k, v in poisoned(tiny_model, float("-inf")).items()}
    hub = prime_hf(offline_caches / "hf-home" / "hub", "timm/vgg16.tv_in1k", state)
    result = run("weights", "info", "timm:vgg16.tv_in1k")
    assert f"{hub}: tensor conv1_1.weight holds 1 non-finite value" in result.stderr


# -- safetensors headers ----------------------------------------------------------------------------------------


def safetensors_bytes(header: object, data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return len(raw).to_bytes(8, "little") + raw + data


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header, data",
    [
        ("[" * 200_000, b""),  # nested past Python's recursion limit
        ('{"a":' * 100_000 + "1" + "}" * 100_000, b""),
        ({"__metadata__": ["a", "b"], "w": F32}, bytes(8)),
        ({"__metadata__": {"a": {"b": 1}}, "w": F32}, bytes(8)),
        ({"__metadata__": [], "w": F32}, bytes(8)),
        ({"__metadata__": "text", "w": F32}, bytes(8)),
        ({"w": {**F32, "shape": [-2, -1]}}, bytes(8)),
        ({"w": {**F32, "shape": [3]}}, bytes(8)),  # 12 bytes of data for 8 bytes in the file
        ({"w": {**F32, "shape": [2**62, 2**62]}}, bytes(8)),
        ({"w": {**F32, "shape": [1.5e400]}}, bytes(8)),
        ({"w": {**F32, "shape": [True, 2]}}, bytes(8)),
        ({"w": {**F32, "shape": [2] * 100_000}}, bytes(8)),
        ({"w": {**F32, "data_offsets": [8, 16]}}, bytes(8)),  # beyond the data
        ({"w": {**F32, "data_offsets": [-8, 0]}}, bytes(8)),
        ({"w": {**F32, "data_offsets": [0.0, 8.0]}}, bytes(8)),
        ({"w": {**F32, "data_offsets": [0, 8, 9]}}, bytes(8)),
        ({"w": {**F32, "dtype": ["F32"]}}, bytes(8)),
        ({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)),
        ({"w": [1, 2]}, bytes(8)),
    ],
)
def test_bad_safetensors_headers_are_one_error(tmp_path, header, data):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    assert run("weights", "info", path).stderr.startswith(f"Error: {path}: not a valid safetensors file")


# -- nets far larger than their file ----------------------------------------------------------------------------


def test_metadata_asking_for_a_huge_net_is_refused_before_allocating(tiny_model, tmp_path):
    path = vggfeat.save_weights(tiny_model("vgg_d"), tmp_path / "tiny.safetensors")
    huge = tmp_path / "huge.safetensors"
    options = {**TINY, "width_mult": 16, "fc_dim": 65536, "fc6_kernel": 32}
    tensors = {k: v.clone() for k, v in read_weights(path)[0].items()}
    save_file(tensors, str(huge), metadata={"arch": "vgg_d", "options": json.dumps(options), "format": "vggfeat"})
    calls = []
    real_empty = torch.nn.Module.to_empty
    torch.nn.Module.to_empty = lambda self, *a, **k: calls.append(1) or real_empty(self, *a, **k)
    try:
        result = run("weights", "convert", huge, tmp_path / "out.safetensors")
    finally:
        torch.nn.Module.to_empty = real_empty
    assert "do not fit" in result.stderr and "fc6.weight" in result.stderr and not calls
    assert not (tmp_path / "out.safetensors").exists()


def test_train_refuses_a_net_far_beyond_the_largest_vgg(tmp_path):
    smoke = TESTS.parent / "recipes" / "train" / "smoke.yaml"
    args = ["train", smoke, "--out", tmp_path / "run", "--data-root", tmp_path / "d", "--set", "model.width_mult=200"]
    result = run(*args, code=2)  # a recipe error is a usage error
    assert "parameters" in result.stderr and "model.width_mult" in result.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_train_init_from_non_finite_weights_is_refused(tiny_model, tmp_path, suffix):
    from vggfeat.errors import WeightsError
    from vggfeat.train.loop import build_model
    from vggfeat.train.recipe import load_recipe

    smoke = TESTS.parent / "recipes" / "train" / "smoke.yaml"
    path = tmp_path / f"a{suffix}"
    recipe = load_recipe(smoke, [f"model.init_from={path}", "model.init_layers=all", "model.name=vgg_a"])
    m = recipe.model
    model = vggfeat.create_model(
        "vgg_a",
        num_classes=TINY["num_classes"],
        width_mult=m.width_mult,
        fc_dim=m.fc_dim,
        fc6_kernel=m.fc6_kernel,
        seed=3,
    )

    def save() -> None:
        if suffix == ".pt":
            torch.save({"model": model.state_dict()}, path)
        else:
            vggfeat.save_weights(model, path)

    save()
    built = build_model(recipe, TINY["num_classes"]).state_dict()
    assert all(torch.equal(built[k], v) for k, v in model.state_dict().items())  # finite weights load as they are
    with torch.no_grad():
        model.fc7.bias[1] = float("nan")
    save()
    with pytest.raises(WeightsError, match="tensor fc7.bias holds 1 non-finite value"):
        build_model(recipe, TINY["num_classes"])


def _checkpoint_bytes(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "case",
    ["cut short", "empty", "a plain tensor", "no model entry", "a list as model", "model of strings", "not a zip"],
)
def test_train_init_from_a_checkpoint_that_is_not_one_is_one_line(tmp_path, case):
    """model.init_from naming a .pt that is damaged or holds something other than a checkpoint's weights: a
    WeightsError naming the file, not torch's RuntimeError or an IndexError from the code that reads it."""
    from vggfeat.errors import WeightsError
    from vggfeat.train.loop import build_model
    from vggfeat.train.recipe import load_recipe

    path = tmp_path / "init.pt"
    whole = _checkpoint_bytes({"model": {}, "x": torch.zeros(1000)})
    path.write_bytes(
        {
            "cut short": whole[: len(whole) // 2],
            "empty": b"",
            "a plain tensor": _checkpoint_bytes(torch.zeros(3)),
            "no model entry": _checkpoint_bytes({"weights": {"fc8.bias": torch.zeros(3)}}),
            "a list as model": _checkpoint_bytes({"model": [torch.zeros(3)]}),
            "model of strings": _checkpoint_bytes({"model": {"fc8.bias": "zeros"}}),
            "not a zip": b"PK\x03\x04" + b"\0" * 100,
        }[case]
    )
    smoke = TESTS.parent / "recipes" / "train" / "smoke.yaml"
    recipe = load_recipe(smoke, [f"model.init_from={path}", "model.init_layers=all", "model.name=vgg_a"])
    with pytest.raises(WeightsError) as e:
        build_model(recipe, TINY["num_classes"])
    what = 'not a training checkpoint (no "model" entry of named tensors)'
    if case in ("cut short", "empty", "not a zip"):
        what = "truncated or corrupt, torch cannot load it"
    assert str(e.value).startswith(f"{path}: {what}") and "\n" not in str(e.value), str(e.value)


def test_create_model_refuses_absurd_sizes_but_builds_them_on_meta():
    with pytest.raises(vggfeat.errors.InputError, match="parameters"):
        vggfeat.create_model("vgg_d", fc_dim=65536, fc6_kernel=32)
    assert vggfeat.create_model("vgg_d", fc_dim=65536, fc6_kernel=32, device="meta").fc6.weight.is_meta


# -- tracebacks that are one Error line -------------------------------------------------------------------------


def test_zero_sized_caffe_layers_are_one_error(tiny_model, tmp_path):
    state = state_of(tiny_model("vgg_d"))
    state["conv5_3.weight"], state["conv5_3.bias"] = state["conv5_3.weight"][:0], state["conv5_3.bias"][:0]
    path = write_caffe(tmp_path / "zero.caffemodel", state)
    assert "conv5_3" in run("weights", "info", path).stderr
    state = state_of(tiny_model("vgg_d"))
    state["fc6.weight"] = state["fc6.weight"][:, :0]  # fc6 with no inputs
    path = write_caffe(tmp_path / "fc6.caffemodel", state)
    assert "fc6" in run("weights", "info", path).stderr


def test_a_state_dict_with_an_empty_fc8_is_one_error(tiny_model, tmp_path):
    state = tiny_model("vgg_d").state_dict()
    state["fc8.weight"], state["fc8.bias"] = state["fc8.weight"][:0], state["fc8.bias"][:0]
    path = tmp_path / "fc8.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert "fc8.weight" in run("weights", "info", path).stderr


def test_unknown_timm_tags_and_nets_are_one_error(offline_caches, tmp_path):
    result = run("weights", "info", "timm:vgg16.nosuchtag")
    assert "nosuchtag" in result.stderr and "timm:vgg16.tv_in1k" in result.stderr
    extract = ["extract", one_image(tmp_path), "-o", tmp_path / "o", "--scales", "64", "--workers", "0", "--quiet"]
    for weights in ([], ["--weights", "random"]):
        result = run(*extract, "--model", "timm:nosuchnet", *weights)
        assert "nosuchnet" in result.stderr and "timm" in result.stderr


def test_a_fifo_as_weights_is_named_and_never_read(tmp_path):
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)  # a read would block forever
    assert "not a regular file" in run("weights", "info", fifo).stderr
    with pytest.raises(vggfeat.errors.WeightsError, match="not a regular file"):
        read_weights(fifo)  # train's model.init_from reads a path directly


def test_timm_weights_of_other_shapes_are_one_error(tmp_path):
    import timm

    state = timm.create_model("test_resnet").state_dict()
    state["conv1.0.weight"] = torch.zeros(8, 3, 3, 3)  # another width of stem
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    extract = ["extract", one_image(tmp_path), "-o", tmp_path / "o", "--scales", "64", "--workers", "0", "--quiet"]
    result = run(*extract, "--model", "timm:test_resnet", "--weights", path)
    assert "does not fit timm model 'test_resnet'" in result.stderr and "conv1.0.weight (8, 3, 3, 3)" in result.stderr


def test_an_empty_weights_value_is_named(tmp_path):
    for args in (["weights", "info", ""], ["extract", one_image(tmp_path), "-o", tmp_path / "o", "--weights", ""]):
        result = run(*args)
        assert "empty" in result.stderr and "is a folder" not in result.stderr


def one_image(tmp_path: Path) -> Path:
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / "a.png")
    return images


def test_advice_for_a_timm_net_that_is_not_a_vgg_can_be_followed(offline_caches, tmp_path, monkeypatch):
    import re

    import huggingface_hub
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    extract = ["extract", one_image(tmp_path), "--scales", "64", "--workers", "0", "--quiet", "--device", "cpu"]
    net = ["--model", "timm:test_resnet"]
    result = run(*extract, "-o", tmp_path / "o", *net)  # downloads off
    assert (
        "weights convert" not in result.stderr and "timm.create_model('test_resnet', pretrained=True)" in result.stderr
    )
    folder = Path(re.search(r"it belongs at (\S+)/snapshots/", result.stderr).group(1))
    with monkeypatch.context() as m:  # no network, downloads on: the hub cannot be reached
        m.setenv("VGGFEAT_OFFLINE", "0")
        m.setenv("HF_HUB_OFFLINE", "0")
        m.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

        def unreachable(*args, **kwargs):
            raise LocalEntryNotFoundError("cannot reach the hub and the file is not in the local cache")

        m.setattr(huggingface_hub, "hf_hub_download", unreachable)
        result = run(*extract, "-o", tmp_path / "o", *net)
        assert "not in the repo" not in result.stderr and "weights convert" not in result.stderr
        assert "could not reach the Hugging Face hub" in result.stderr and str(folder) in result.stderr
    # the advice followed: timm's file in the folder named, the same command works offline
    torch.manual_seed(0)
    prime_hf(
        folder.parent,
        folder.name.removeprefix("models--").replace("--", "/"),
        timm.create_model("test_resnet").state_dict(),
    )
    run(*extract, "-o", tmp_path / "o", *net, code=0)
    assert (tmp_path / "o" / "emb" / "000000.npy").exists()
