"""`vggfeat train` refuses user mistakes with one clear line before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vggfeat.cli.main import cli
from vggfeat.errors import VggfeatError
from vggfeat.train.loop import RunExistsError, check_run_folder

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "train" / "smoke.yaml"


def test_train_refuses_a_folder_holding_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt-e002-s00000010.pt").write_bytes(b"precious")
    res = CliRunner().invoke(cli, ["train", "smoke", "--out", str(run), "--data-root", str(tmp_path / "d")])
    assert res.exit_code == 1, res.output
    assert f"{run} already holds a run (epoch 2 of 20); pass --resume to continue it or --overwrite" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "d").exists()  # refused before any work
    assert (run / "ckpt-e002-s00000010.pt").read_bytes() == b"precious"
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "model.safetensors").write_bytes(b"x")  # a finished run
    res = CliRunner().invoke(cli, ["train", "smoke", "--out", str(run2), "--set", "optim.epochs=5"])
    assert res.exit_code == 1 and "already holds a run (epoch 5 of 5)" in res.output, res.output
    assert "--overwrite" in CliRunner().invoke(cli, ["train", "--help"]).output


def test_overwrite_clears_only_the_run_files(tmp_path):
    (tmp_path / "ckpt-e001-s00000004.pt").write_bytes(b"a")
    # best.safetensors too: an old run's best weights must not stand beside a new run's until its first epoch ends
    for name in ("model.safetensors", "best.safetensors", "metrics.jsonl", "best.pt", "last.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    try:
        check_run_folder(tmp_path, 3, resume=False, overwrite=False)
        raise AssertionError("not refused")
    except RunExistsError as e:
        assert isinstance(e, VggfeatError) and "(epoch 1 of 3)" in str(e)
    check_run_folder(tmp_path, 3, resume=True, overwrite=False)  # --resume continues it
    check_run_folder(tmp_path, 3, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    check_run_folder(tmp_path, 3, resume=False, overwrite=False)  # now an empty run folder: fine


def _train_cli(tmp_path, text: str, *sets: str, name: str = "r.yaml"):
    recipe = tmp_path / name
    recipe.write_text(text)
    args = ["train", str(recipe), "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "d")]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(cli, args)


TINY = "base: {smoke}\nname: tiny\n"


@pytest.mark.parametrize(
    "setting, words",
    [
        ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
        ("optim.lr=-0.01", "optim.lr must be > 0, got -0.01"),
        ("optim.batch_size=0", "optim.batch_size must be > 0, got 0"),
        ("optim.per_device_batch=0", "optim.per_device_batch must be > 0, got 0"),
        ("checkpoint.every_steps=0", "checkpoint.every_steps must be > 0, got 0"),
        ("model.width_mult=0", "model.width_mult must be > 0, got 0.0"),
        ("optim.batch_size=24", "optim.batch_size=24 is not a multiple of optim.per_device_batch"),
    ],
)
def test_bad_recipe_values_are_one_line_before_any_work(tmp_path, setting, words):
    res = _train_cli(tmp_path, TINY.format(smoke=SMOKE), setting)
    assert res.exit_code in (1, 2) and words in res.output, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # a clean exit, not ZeroDivisionError & co
    assert not (tmp_path / "d").exists() and not (tmp_path / "run").exists()  # nothing generated, nothing written


def test_bad_recipe_files_are_one_line(tmp_path):
    res = _train_cli(tmp_path, "")
    assert res.exit_code == 2 and "r.yaml: the file is empty" in res.output, res.output
    res = _train_cli(tmp_path, "name: x\noptim:\n  lr: [0.1\n  epochs: 2\n")
    assert res.exit_code == 2 and "r.yaml, line 4, column" in res.output and "not valid YAML" in res.output, res.output
    res = _train_cli(tmp_path, "base: r.yaml\nname: x\n")
    assert res.exit_code == 2 and "'base:' makes a loop" in res.output, res.output
    res = _train_cli(tmp_path, "base: nowhere.yaml\nname: x\n")
    assert res.exit_code == 2 and "base: nowhere.yaml not found" in res.output, res.output
    assert not (tmp_path / "d").exists()


def test_a_recipe_of_ones_own_builds_on_a_shipped_one_by_name(tmp_path):
    """`base: smoke` (or `_imagenet.yaml`) in a recipe outside the checkout names the shipped recipe, as
    `vggfeat train smoke` does; before, it was 'base: smoke not found'."""
    res = _train_cli(tmp_path, "base: smoke\nname: mine\n", "optim.lr=0")
    assert res.exit_code == 2 and "optim.lr must be > 0, got 0.0" in res.output, res.output  # smoke's settings
    res = _train_cli(tmp_path, "base: _imagenet.yaml\nname: mine\n", "optim.lr=0")
    assert res.exit_code == 2 and "optim.lr must be > 0, got 0.0" in res.output, res.output
    res = _train_cli(tmp_path, "base: smok\nname: mine\n")
    assert res.exit_code == 2 and "base: smok not found" in res.output and "smoke" in res.output, res.output
    assert not (tmp_path / "d").exists() and not (tmp_path / "run").exists()


def test_train_never_generates_its_dataset(tmp_path):
    # the smoke recipe trains on data.root like any recipe: a missing dataset is named, nothing is written there
    res = CliRunner().invoke(
        cli, ["train", "smoke", "--out", str(tmp_path / "run"), "--data-root", str(tmp_path / "d")]
    )
    assert res.exit_code == 1 and f"--data-root {tmp_path / 'd'} does not exist" in res.output, res.output
    assert "vggfeat synthetic" in res.output  # how to make one
    assert not (tmp_path / "d").exists()
