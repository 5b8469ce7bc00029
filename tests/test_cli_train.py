"""The train, evaluate and mean-rgb commands: instant --help, usage errors, results equal the library's."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.folder import scan_folder
from vggfeat.data.stats import pixel_stats
from vggfeat.data.synthetic import generate_synthetic
from vggfeat.evaluate import evaluate_nets


def test_help_and_bad_recipe_key():
    r = CliRunner()
    for cmd in ("train", "evaluate", "mean-rgb"):
        assert r.invoke(cli, [cmd, "--help"]).exit_code == 0
    res = r.invoke(cli, ["train", "recipes/train/smoke.yaml", "--set", "optim.lrr=1"])
    assert res.exit_code == 2 and "did you mean 'lr'" in res.output


def test_mean_rgb_and_evaluate(tmp_path, tiny_model):
    root = generate_synthetic(tmp_path / "d", classes=3, per_class=4, seed=2)
    res = CliRunner().invoke(cli, ["mean-rgb", str(root)])
    assert res.exit_code == 0, res.output
    cached = json.loads((root / "mean_rgb.json").read_text())
    assert cached["mean"] == pytest.approx(pixel_stats(scan_folder(root / "train").paths)["mean"])
    nets = [tiny_model("vgg_a", seed=1, num_classes=3), tiny_model("vgg_d", seed=2, num_classes=3)]
    files = [vggfeat.save_weights(n, tmp_path / f"n{i}.safetensors") for i, n in enumerate(nets)]
    res = CliRunner().invoke(cli, ["evaluate", "--weights", str(files[0]), "--weights", str(files[1]), "--data-root",
                                   str(root), "--protocol", "both", "--scales", "64,96", "--json", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    want = evaluate_nets([vggfeat.load_model(f) for f in files], scan_folder(root / "val"), protocols=["both"], scales=(64, 96))
    assert [r["net"] for r in rows] == [str(files[0]), str(files[1]), "fusion"]  # nets named by path
    assert [(r["top1_err"], r["top5_err"]) for r in rows] == [(r["top1_err"], r["top5_err"]) for r in want]
