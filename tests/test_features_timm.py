"""timm backbones as descriptor nets: a timm VGG's 4096-wide pre-logits, timm's feature points as --layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY, store_rows
from PIL import Image, ImageOps

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.errors import LayerError, VggfeatError
from vggfeat.features.nets import timm_layers

timm = pytest.importorskip("timm")
FAST = ["--scales", "64", "--workers", "0", "--quiet", "--device", "cpu"]


def images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 80 + 16 * k, 3), dtype=np.uint8) for k in range(n)]


def write_images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images(n)):
        Image.fromarray(image).save(folder / f"img{k}.png")
    return folder


def manual(model, image, fn):
    """Flip-averaged descriptor at Q = 64 (the short side is already 64), the way timm normalises."""
    cfg = model.pretrained_cfg
    out = []
    for view in (Image.fromarray(image), ImageOps.mirror(Image.fromarray(image))):
        x = torch.from_numpy(np.array(view)).permute(2, 0, 1)[None].float() / 255
        x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            out.append(fn(x)[0].numpy())
    return (out[0] + out[1]) / 2


def pre_logits(model):
    return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)


def test_timm_vgg11_gives_its_4096_wide_pre_logits():
    # num_features is pool5's 512, the pre-logits (fc7) are head_hidden_size = 4096 wide
    torch.manual_seed(0)
    model = timm.create_model("vgg11", pretrained=False, num_classes=0).eval()
    assert (model.num_features, model.head_hidden_size) == (512, 4096)
    got = vggfeat.extract_features(model, images(), scales=(64,), l2=False, device="cpu")
    assert got.shape == (2, 4096)
    np.testing.assert_allclose(got[1], manual(model, images()[1], pre_logits(model)), rtol=1e-4, atol=1e-5)


def test_timm_vgg16_pre_logits_and_an_intermediate_stage():
    torch.manual_seed(0)
    # mlp_ratio shrinks fc6 (the hidden layer of timm's ConvMlp) to keep the test fast; fc7 stays 4096 wide
    model = timm.create_model("vgg16", pretrained=False, num_classes=0, mlp_ratio=1 / 64).eval()
    assert vggfeat.extract_features(model, images(1), scales=(64,), l2=False).shape == (1, 4096)
    stage = vggfeat.extract_features(model, images(), layer="features.22", scales=(64,), l2=False)
    assert stage.shape == (2, 512)  # features.22: conv4_3 after its ReLU, before pool4
    by_index = vggfeat.extract_features(model, images(), layer="3", scales=(64,), l2=False)
    np.testing.assert_array_equal(stage, by_index)

    def conv4_3(x):
        return model.features[:23](x).mean(dim=(2, 3))

    np.testing.assert_allclose(stage[0], manual(model, images()[0], conv4_3), rtol=1e-4, atol=1e-5)


def test_timm_normalisation_is_timms_own_data_config():
    from timm.data import resolve_model_data_config

    from vggfeat.features.nets import TimmFeatureNet

    torch.manual_seed(0)
    own = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}  # a net trained on inputs normalised its own way
    for overlay in (own, None):
        model = timm.create_model("test_resnet", pretrained=False, num_classes=0, pretrained_cfg_overlay=overlay)
        cfg, pre = resolve_model_data_config(model), TimmFeatureNet(model).preprocessing
        assert (pre.mean, pre.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
        assert pre.value_range == 1.0 and pre.channel_order == "RGB"
        assert (pre.mean, pre.std) == (own["mean"], own["std"]) if overlay else pre.mean != own["mean"]


def test_resnet_layers_and_refused_names():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    assert timm_layers(model)[:2] == ["fc7", "pre_logits"] and "layer2" in timm_layers(model)
    fc7 = vggfeat.extract_features(model, images(), scales=(64,), l2=False)
    np.testing.assert_array_equal(
        fc7, vggfeat.extract_features(model, images(), layer="pre_logits", scales=(64,), l2=False)
    )
    layer2 = vggfeat.extract_features(model, images(), layer="layer2", scales=(64,), l2=False)
    assert layer2.shape[1] == model.feature_info[2]["num_chs"] and not np.allclose(layer2[:, :8], fc7[:, :8])
    # "²" passes str.isdigit() but not int(); int() refuses 5,000 digits: both were ValueError tracebacks
    for bad in ("banana", "pool5", "conv5_3", str(len(model.feature_info)), "²", "1" + "0" * 5000):
        with pytest.raises(LayerError, match=r"unknown layer .* for timm model test_resnet; valid: fc7, pre_logits, 0"):
            vggfeat.extract_features(model, images(1), layer=bad, scales=(64,))
    assert issubclass(LayerError, VggfeatError) and issubclass(LayerError, ValueError)


def test_vgg_layer_errors_are_layer_errors_too():
    model = vggfeat.create_model("vgg_a", **TINY)
    with pytest.raises(LayerError, match="valid: conv1_1"):
        vggfeat.extract_features(model, images(1), layer="banana", scales=(64,))


def test_cli_timm_layer_choices_and_no_glorot_claim(tmp_path):
    src = write_images(tmp_path / "imgs")
    runner = CliRunner()
    bad = runner.invoke(
        cli,
        [
            "extract",
            str(src),
            "-o",
            str(tmp_path / "bad"),
            "--model",
            "timm:test_resnet",
            "--weights",
            "random",
            "--layer",
            "banana",
            *FAST,
        ],  # fmt: skip
    )
    assert bad.exit_code == 1, bad.output
    assert "Error: unknown layer 'banana' for timm model test_resnet; valid: fc7, pre_logits" in bad.output
    assert "layer2" in bad.output and not (tmp_path / "bad" / "emb").exists()
    ok = runner.invoke(
        cli,
        [
            "extract",
            str(src),
            "-o",
            str(tmp_path / "ok"),
            "--model",
            "timm:test_resnet",
            "--weights",
            "random",
            "--layer",
            "layer2",
            *FAST,
        ],  # fmt: skip
    )
    assert ok.exit_code == 0, ok.output
    assert "timm's own init" in ok.output and "Glorot" not in ok.output
    features = store_rows(tmp_path / "ok")
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    assert features.shape == (2, model.feature_info[2]["num_chs"])
    help_text = runner.invoke(cli, ["extract", "--help"]).output
    assert "pre_logits" in help_text and "forward_intermediates" in help_text


@pytest.mark.slow
def test_cli_extract_with_a_timm_vgg11_state_dict(tmp_path):
    # extract from a full-size timm vgg11 state dict file (about 530 MB), as a user of timm weights would
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("vgg11", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "vgg11.safetensors"))
    src = write_images(tmp_path / "imgs")
    result = CliRunner().invoke(
        cli,
        [
            "extract",
            str(src),
            "-o",
            str(tmp_path / "store"),
            "--model",
            "timm:vgg11",
            "--weights",
            str(tmp_path / "vgg11.safetensors"),
            "--no-l2",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    features = store_rows(tmp_path / "store")
    net.reset_classifier(0)
    expected = vggfeat.extract_features(
        net.eval(), [Image.open(p) for p in sorted(src.glob("*.png"))], scales=(64,), l2=False, device="cpu"
    )
    assert features.shape == (2, 4096)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
