"""Late fusion of two nets (Appendix B, D & E) has one definition: `linear-probe --weights D --weights E` and the
D & E row of `reproduce table11` probe the same descriptor and give the same mAP; `--fusion-l2` (per-net L2
before stacking, or only the whole) changes it and is recorded in the reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import TINY

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.synthetic_voc import make_voc2007

FAST = ["--scales", "64", "--workers", "0", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generated VOC2007 tree and two tiny random nets whose fc7 differ 20x in scale (as two real nets' may),
    so per-net L2 before stacking changes the fused descriptor."""
    folder = tmp_path_factory.mktemp("fusion")
    make_voc2007(folder / "data", n_trainval=24, n_test=16, seed=4, size=(72, 64))
    d = vggfeat.save_weights(vggfeat.create_model("vgg_d", seed=0, init="glorot", **TINY), folder / "d.safetensors")
    e = vggfeat.create_model("vgg_e", seed=1, init="glorot", **TINY)
    with torch.no_grad():  # fc7 is ReLU(W x + b): scaling W and b scales fc7 (and leaves the net's ranking alone)
        e.fc7.weight.mul_(20)
        e.fc7.bias.mul_(20)
    vggfeat.save_weights(e, folder / "e.safetensors")
    return folder / "data", str(d), str(folder / "e.safetensors")


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def linear_probe(data, out, *extra):
    root, d, e = data
    text = invoke("linear-probe", "voc2007", "--root", root, "--weights", d, "--weights", e, "-o", out, *FAST, *extra)
    return json.loads((out / "linear-probe.json").read_text()), text


def reproduce_de(data, out, *extra):
    root, d, e = data
    text = invoke("reproduce", "table11", "--root", root, "--net-d", d, "--net-e", e, "-o", out, *FAST, *extra)
    table = json.loads((out / "table11.json").read_text())
    (de,) = [r["cells"]["voc2007"] for r in table["rows"] if r["row"] == "D&E"]
    return json.loads(open(de["report"]).read()), table, text


def test_linear_probe_and_reproduce_give_d_and_e_the_same_map(tmp_path, data):
    probe, text = linear_probe(data, tmp_path / "lp")
    de, table, table_text = reproduce_de(data, tmp_path / "t11")
    assert abs(probe["headline"] - de["headline"]) < 1e-6, (probe["headline"], de["headline"])
    # the default is per-net L2, recorded in the features section of both reports and in the table's settings
    assert probe["features"]["fusion_l2"] == de["features"]["fusion_l2"] == "per-net"
    assert table["settings"]["fusion_l2"] == "per-net"
    assert "fusion: per-net L2 before stacking" in (tmp_path / "lp" / "linear-probe.md").read_text()
    assert "fusion: per-net L2 before stacking" in text and "fusion_l2: per-net" in table_text
    assert "fusion_l2" in (tmp_path / "t11" / "table11.md").read_text()


def test_fusion_l2_whole_changes_the_descriptor_and_is_recorded(tmp_path, data):
    per_net, _ = linear_probe(data, tmp_path / "lp")
    whole, text = linear_probe(data, tmp_path / "lp", "--fusion-l2", "whole", "--overwrite")
    assert whole["features"]["fusion_l2"] == "whole" and "fusion: L2 of the stacked descriptor only" in text
    assert whole["headline"] != per_net["headline"]
    de, table, _ = reproduce_de(data, tmp_path / "t11", "--fusion-l2", "whole")
    assert abs(whole["headline"] - de["headline"]) < 1e-6 and table["settings"]["fusion_l2"] == "whole"
    assert de["features"]["fusion_l2"] == "whole"
    assert len(whole["features"]["stacked_from"]) == 2  # the report names both nets' stores


def test_a_store_of_two_nets_records_its_fusion_and_refuses_another(tmp_path, data):
    root, d, e = data
    store = tmp_path / "store"
    images = root / "VOCdevkit" / "VOC2007" / "JPEGImages"
    invoke("extract", images, "-o", store, "--weights", d, "--weights", e, *FAST[:4], "--quiet")
    args = ["linear-probe", "voc2007", "--root", root, "--features", store, "-o", tmp_path / "p", "--Cs", "1"]
    text = invoke(*args)
    report = json.loads((tmp_path / "p" / "linear-probe.json").read_text())
    assert report["features"]["fusion_l2"] == "whole" and "fusion: L2 of the stacked descriptor only" in text
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--fusion-l2", "per-net"])
    assert result.exit_code == 1 and "--fusion-l2 per-net but the store's nets were fused whole" in result.output


def test_fuse_nets_weighs_each_net_the_same_only_per_net():
    from vggfeat.features.protocol import fuse_nets

    a, b = np.array([[3.0, 4.0]], np.float32), np.array([[0.0, 50.0]], np.float32)
    per_net = fuse_nets([a, b], "per-net")
    np.testing.assert_allclose(per_net, [[0.6 / 2**0.5, 0.8 / 2**0.5, 0.0, 1 / 2**0.5]], rtol=1e-6)
    whole = fuse_nets([a, b], "whole")
    np.testing.assert_allclose(whole, np.concatenate([a, b], 1) / np.linalg.norm([3, 4, 0, 50]), rtol=1e-6)
    np.testing.assert_allclose(fuse_nets([a], "per-net"), fuse_nets([a], "whole"))  # one net: the same
