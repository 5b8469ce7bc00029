"""Caffe .caffemodel files (vggfeat/models/caffe.py), written by our own test-side writer (caffe_wire.py)."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from caffe_wire import caffe_layers, key, layer, net_pieces, string, submessage, varint, write_caffemodel
from click.testing import CliRunner
from helpers import TINY, store_rows
from PIL import Image

import vggfeat
from vggfeat.models import CAFFE, PAPER, Preprocessing, WeightsError, load_model, read_weights
from vggfeat.models.caffe import parse_caffemodel, read_caffemodel


def tiny(name="vgg_d", seed=0):
    """A tiny net whose activations survive its depth (Glorot) and whose biases are not all zero."""
    model = vggfeat.create_model(name, seed=seed, init="glorot", **TINY).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name_, param in model.named_parameters():
            if name_.endswith(".bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def state_of(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def write(path, model, *, bgr=True, **kwargs):
    return write_caffemodel(path, net_pieces(caffe_layers(state_of(model), bgr=bgr), **kwargs))


@pytest.mark.parametrize(
    "fmt, legacy, packed, double",
    [
        ("V1", True, True, False),  # the 2014 release: V1 layers, num/channels/height/width, packed floats
        ("V1", False, False, False),
        ("V2", False, True, False),  # today's Caffe: `layer`, `shape`
        ("V2", True, False, False),
        ("V2", False, True, True),  # double_data
        ("V0", True, True, False),
    ],
)
def test_reader_gives_back_every_blob_exactly(tmp_path, fmt, legacy, packed, double):
    model = tiny()
    layers = caffe_layers(state_of(model), bgr=False)
    path = write(tmp_path / "net.caffemodel", model, bgr=False, fmt=fmt, legacy=legacy, packed=packed, double=double)
    net = parse_caffemodel(path)
    assert net.name == "VGG_ILSVRC_16_layers"
    assert net.format == ("V2 layer" if fmt == "V2" else "V1 layers")
    weighted = [la for la in net.layers if la.blobs]
    assert [la.name for la in weighted] == [name for name, _, _ in layers]
    assert len(net.layers) == 2 * len(layers)  # a ReLU after each weighted layer, fc8 then Softmax
    for got, (name, type_, arrays) in zip(weighted, layers, strict=True):
        assert got.type == type_, name
        for array, read in zip(arrays, got.blobs, strict=True):
            assert read.dtype == np.float32
            expected = array.reshape((1,) * (4 - array.ndim) + array.shape) if legacy else array
            np.testing.assert_array_equal(read, expected)  # bit-exact, shape included
    tensors, meta = read_weights(path)
    assert set(tensors) == set(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(tensors[name], value), name  # fc6 (32, 128) back in the 2x2 conv layout
    assert meta["preprocessing"] == CAFFE.to_dict()


def test_fc6_inner_product_is_the_c_order_flattening_of_pool5(tmp_path):
    # Caffe's InnerProduct multiplies the C-order flattening of pool5 (C, H, W): the loaded 2x2 conv must agree
    path = write(tmp_path / "net.caffemodel", tiny())
    fc6 = next(la for la in parse_caffemodel(path).layers if la.name == "fc6")
    weight, bias = (torch.from_numpy(b) for b in fc6.blobs)
    assert tuple(weight.shape) == (1, 1, 32, 128)  # legacy dims: num 1, channels 1, height out, width in
    pool5 = torch.randn(1, 32, 2, 2)
    with torch.no_grad():
        conv = load_model(path).fc6(pool5)[0, :, 0, 0]
    inner_product = weight[0, 0] @ pool5.reshape(-1) + bias.reshape(-1)
    torch.testing.assert_close(conv, inner_product, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg_d", "vgg_e", "vgg_c"])
def test_caffe_net_gives_the_original_nets_outputs(tmp_path, name):
    """A net trained on BGR 0-255 minus the mean pixel (Caffe) is the RGB net with conv1_1's inputs reversed:
    loaded with its Caffe preprocessing it must give the original's outputs on the same images."""
    original = tiny(name)
    original.preprocessing = PAPER  # RGB 0-255 minus the mean RGB, the same mean as Caffe's BGR pixel
    path = write(tmp_path / "net.caffemodel", original, bgr=True)
    loaded = load_model(path)
    assert loaded.arch == name and loaded.config == original.config
    assert loaded.options == original.options
    assert loaded.preprocessing == CAFFE
    assert tuple(loaded.fc6.weight.shape) == (32, 32, 2, 2)
    torch.testing.assert_close(loaded.conv1_1.weight, original.conv1_1.weight.flip(1))
    x = torch.rand(2, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded(CAFFE.apply(x)), original(PAPER.apply(x)), rtol=1e-4, atol=1e-4)  # logits
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for _ in range(2)]
    kw = dict(scales=(64, 80), l2=False, device="cpu")
    got, expected = vggfeat.extract_features(loaded, images, **kw), vggfeat.extract_features(original, images, **kw)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected).max() > 1e-3  # not a trivially zero descriptor


def test_load_weights_and_create_model_read_caffemodels(tmp_path):
    original = tiny("vgg_b")
    path = write(tmp_path / "b.caffemodel", original, fmt="V2", legacy=False)
    model = vggfeat.create_model("vgg_b", weights=path, **TINY)
    assert model.preprocessing == CAFFE
    assert torch.equal(model.fc6.weight, original.fc6.weight)
    other = vggfeat.load_weights(tiny("vgg_b", seed=1), path)
    assert torch.equal(other.conv5_2.bias, original.conv5_2.bias)
    with pytest.raises(WeightsError, match="conv layers|do not fit"):
        vggfeat.load_weights(tiny("vgg_d"), path)  # B weights into a D


def test_renamed_caffemodel_is_recognised_by_its_content(tmp_path):
    path = write(tmp_path / "net.caffemodel", tiny())
    renamed = tmp_path / "VGG_ILSVRC_16_layers.bin"
    shutil.copy(path, renamed)
    assert load_model(renamed).preprocessing == CAFFE


def test_weights_info_and_convert_read_caffemodels(tmp_path):
    from vggfeat.cli.main import cli

    path = write(tmp_path / "VGG_ILSVRC_16_layers.caffemodel", tiny())
    result = CliRunner().invoke(cli, ["weights", "info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["arch"], info["config"], info["options"]["fc6_kernel"]) == ("vgg_d", "D", 2)
    assert Preprocessing.from_dict(info["preprocessing"]) == CAFFE
    assert info["metadata"]["format"] == "caffe" and info["metadata"]["caffe_format"] == "V1 layers"
    out = tmp_path / "vgg16-caffe.safetensors"
    result = CliRunner().invoke(cli, ["weights", "convert", str(path), str(out)])
    assert result.exit_code == 0, result.output
    again = load_model(out)
    assert again.preprocessing == CAFFE
    assert torch.equal(again.fc6.weight, load_model(path).fc6.weight)


def test_unpacked_run_stops_at_the_next_field(tmp_path):
    # floats one key each, then the `diff` field (6) and a legacy dim after them: the run must end exactly
    values = np.arange(6, dtype=np.float32) / 7
    records = b"".join(key(5, 5) + v.tobytes() for v in values)
    diff = key(6, 2) + varint(8) + np.ones(2, "<f4").tobytes()
    dims = b"".join(key(n, 0) + varint(d) for n, d in zip((1, 2, 3, 4), (1, 1, 2, 3), strict=True))
    body = [records + diff + dims]
    pieces = [string(1, "n")] + submessage(100, [string(1, "x"), string(2, "Data")] + submessage(7, body))
    net = parse_caffemodel(write_caffemodel(tmp_path / "x.caffemodel", pieces))
    np.testing.assert_array_equal(net.layers[0].blobs[0], values.reshape(1, 1, 2, 3))


def good_file(tmp_path):
    return write(tmp_path / "good.caffemodel", tiny())


@pytest.mark.parametrize("cut", [1, 7, 100, 0.5, -1])
def test_truncated_file_is_one_weights_error_naming_it(tmp_path, cut):
    data = good_file(tmp_path).read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut if cut > 0 else len(data) + cut
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[:n])
    with pytest.raises(WeightsError, match="truncated or damaged|not a .caffemodel") as err:
        load_model(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_one_weights_error(tmp_path, seed):
    path = tmp_path / "junk.caffemodel"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(WeightsError) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_not_a_vgg_names_its_layers(tmp_path):
    # an AlexNet-like Caffe model: conv1 ... conv5 and fc6 ... fc8
    rng = np.random.default_rng(0)
    layers = [(f"conv{i}", "Convolution", [rng.random((4, 3, 3, 3), "f4"), rng.random(4, "f4")]) for i in range(1, 6)]
    layers += [(f"fc{i}", "InnerProduct", [rng.random((4, 4), "f4"), rng.random(4, "f4")]) for i in (6, 7, 8)]
    path = write_caffemodel(tmp_path / "alexnet.caffemodel", net_pieces(layers, name="CaffeNet"))
    with pytest.raises(WeightsError, match="not one of the paper's VGG nets.*conv1, conv2") as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_incomplete_or_inconsistent_vgg(tmp_path):
    layers = caffe_layers(state_of(tiny()))
    no_fc8 = write_caffemodel(tmp_path / "no_fc8.caffemodel", net_pieces(layers[:-1]))
    with pytest.raises(WeightsError, match="lacks fc8"):
        read_caffemodel(no_fc8)
    name, type_, (weight, bias) = layers[-3]  # fc6 with a row missing from its inputs
    bad = layers[:-3] + [(name, type_, [weight[:, :-1], bias])] + layers[-2:]
    with pytest.raises(WeightsError, match="fc6 takes 127 inputs"):
        read_caffemodel(write_caffemodel(tmp_path / "fc6.caffemodel", net_pieces(bad)))
    # a blob whose dims do not match its values
    shape_5 = submessage(7, [key(1, 2) + varint(1) + varint(5)])  # BlobShape dims (5,)
    data_32 = [key(5, 2) + varint(bias.nbytes), bias.astype("<f4")]
    pieces = [string(1, "n")] + layer("conv1_1", "Convolution", [shape_5 + data_32] * 2, "V2")
    with pytest.raises(WeightsError, match="holds 32 values but its shape is"):
        read_caffemodel(write_caffemodel(tmp_path / "dims.caffemodel", pieces))


def test_cli_extract_with_a_caffemodel(tmp_path):
    from vggfeat.cli.main import cli

    original = tiny()
    original.preprocessing = PAPER
    path = write(tmp_path / "net.caffemodel", original)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(2)]
    (tmp_path / "imgs").mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "imgs" / f"img{k}.png")
    out = tmp_path / "store"
    args = ["extract", str(tmp_path / "imgs"), "-o", str(out), "--weights", str(path), "--scales", "64"]
    result = CliRunner().invoke(cli, [*args, "--no-l2", "--workers", "0", "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    expected = vggfeat.extract_features(original, images, scales=(64,), l2=False, device="cpu")
    np.testing.assert_allclose(store_rows(out), expected, rtol=1e-4, atol=1e-4)


def test_load_model_takes_the_read_arrays_as_parameters(tmp_path):
    # one copy of the weights in memory: the parameters are the arrays the reader filled, trainable as usual
    original = tiny()
    path = write(tmp_path / "net.caffemodel", original, bgr=False)
    model = load_model(path)
    for name, param in model.named_parameters():
        assert param.device.type == "cpu" and param.requires_grad and param.is_contiguous(), name
        assert torch.equal(param, original.state_dict()[name]), name
    model.train()
    model(torch.rand(1, 3, 64, 64)).sum().backward()
    assert model.fc6.weight.grad is not None and model.fc6.weight.grad.shape == (32, 32, 2, 2)


def test_extraction_opens_a_caffemodel_once(tmp_path, monkeypatch):
    """The manifest's sha256 and the tensors come from one open of the file, as for safetensors and torch files:
    the reader parses the map the hash was computed from instead of opening the file again."""
    from helpers import count_opens

    from vggfeat.features.extract import extract_to_store
    from vggfeat.utils.files import sha256_file

    path = write(tmp_path / "net.caffemodel", tiny())
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "imgs" / "a.png")
    opens = count_opens(monkeypatch, path)
    store = extract_to_store(
        [tmp_path / "imgs"], tmp_path / "out", models=[("auto", str(path))], scales=(64,), workers=0, progress=False
    )
    monkeypatch.undo()
    assert len(opens) == 1, opens
    assert store.manifest["models"][0]["weights_sha256"] == sha256_file(path)
