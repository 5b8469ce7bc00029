"""The commands' options are consistent: every option has help, --device is one shared definition on every
command that computes, --batch-size/--workers wherever images are read, and train's shorthands of --set."""

from __future__ import annotations

import click
import pytest
import yaml
from click.testing import CliRunner
from helpers import COMPUTING

from vggfeat import defaults
from vggfeat.cli import params
from vggfeat.cli.main import cli

READING_IMAGES = ("evaluate", "index search", "mean-rgb", "extract", "linear-probe", "knn-probe", "reproduce")


def walk(group: click.Group, prefix: str = ""):
    """(path, command) of every command under `group`, subgroups (index, weights, store) included."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        path = f"{prefix} {name}".strip()
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from walk(cmd, path)


COMMANDS = dict(walk(cli))


def option(path: str, name: str) -> click.Option | None:
    return next((p for p in COMMANDS[path].params if isinstance(p, click.Option) and name in p.opts), None)


def test_the_walk_reaches_every_command_and_subcommand():
    assert {"train", "demo", "index build", "index search", "index info", "weights info", "store status"} <= set(
        COMMANDS
    )


def test_every_option_of_every_command_has_help():
    missing = [
        f"{path}: {'/'.join(p.opts)}"
        for path, cmd in [("", cli), *COMMANDS.items()]
        for p in cmd.params
        if isinstance(p, click.Option) and "--help" not in p.opts and not (p.help or "").strip()
    ]
    assert missing == [], "\n".join(missing)


@pytest.mark.parametrize("path", COMPUTING)
def test_device_is_one_shared_option_on_every_command_that_computes(path):
    opt = option(path, "--device")
    assert opt is not None, f"{path} has no --device"
    assert opt.type is params.DEVICE and opt.help.startswith(params.DEVICE_HELP), (path, opt.help)


def test_a_bad_device_is_a_usage_error_before_any_work(tmp_path):
    for args in (["mean-rgb", str(tmp_path)], ["demo", "--out", str(tmp_path / "o")], ["train", "smoke"]):
        res = CliRunner().invoke(cli, [*args, "--device", "gpu"])
        assert res.exit_code == 2 and "'gpu'" in res.output and "auto, cpu, cuda or cuda:N" in res.output, res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", READING_IMAGES)
def test_commands_reading_images_take_batch_size_and_workers_with_the_shared_defaults(path):
    batch, workers = option(path, "--batch-size"), option(path, "--workers")
    assert batch is not None and workers is not None, path
    assert (batch.default, workers.default) == (defaults.BATCH_SIZE, defaults.WORKERS), path


def test_index_build_takes_device_not_gpu():
    build = COMMANDS["index build"]
    visible = [o for p in build.params if isinstance(p, click.Option) and not p.hidden for o in p.opts]
    assert "--device" in visible and "--gpu" not in visible and "--no-gpu" not in visible


def _train(*args: str):
    return CliRunner().invoke(cli, ["train", "smoke", *args])


def test_train_shorthands_set_the_recipe_keys_and_print_recipe_prints_it(tmp_path):
    res = _train(
        "--epochs", "3", "--batch-size", "32", "--lr", "0.02", "--seed", "5", "--device", "cpu", "--workers", "1",
        "--out", str(tmp_path / "run"), "--print-recipe",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = yaml.safe_load(res.output)
    assert r["name"] == "smoke" and r["seed"] == 5 and r["runtime"]["device"] == "cpu"
    assert (r["optim"]["epochs"], r["optim"]["batch_size"], r["optim"]["lr"]) == (3, 32, 0.02)
    assert r["data"]["workers"] == 1 and r["model"]["name"] == "vgg_a"  # the rest is smoke's
    assert not (tmp_path / "run").exists()  # printed, not trained
    res = _train("--print-recipe", "--data-root", str(tmp_path / "d"))
    assert res.exit_code == 0 and yaml.safe_load(res.output)["data"]["root"] == str(tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_shorthand_and_a_set_of_the_same_key_are_refused():
    res = _train("--epochs", "3", "--set", "optim.epochs=4", "--print-recipe")
    assert res.exit_code == 2 and "--epochs" in res.output and "optim.epochs" in res.output, res.output
    res = _train("--device", "cpu", "--set", "runtime.device=cuda", "--print-recipe")
    assert res.exit_code == 2 and "--device" in res.output and "runtime.device" in res.output, res.output


def test_train_help_says_where_the_keys_are():
    text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    for words in ("--print-recipe", "--epochs", "optim.epochs", "--lr", "optim.lr", "runtime.device", "--seed"):
        assert words in text, words


@pytest.mark.parametrize(
    "setting, key",
    [
        ("device=cuda", "runtime.device"),
        ("lr=0.1", "optim.lr"),
        ("optim.lrr=1", "optim.lr"),
        ("wrkers=2", "data.workers"),
    ],
)
def test_an_unknown_set_key_suggests_the_full_dotted_key(setting, key):
    res = _train("--set", setting, "--print-recipe")
    assert res.exit_code == 2 and f"did you mean {key!r}?" in res.output, res.output


def test_demo_takes_batch_size_and_workers_with_its_own_defaults(monkeypatch, tmp_path):
    """The demo reads images too; its defaults are its config's (small images batch well, no loader process)."""
    from vggfeat.demo import pipeline
    from vggfeat.demo.config import DEMO_BATCH_SIZE, DEMO_WORKERS

    params = {p.name: p.default for p in COMMANDS["demo"].params}
    assert (params["batch_size"], params["workers"]) == (DEMO_BATCH_SIZE, DEMO_WORKERS)
    seen = {}

    def fake_run_demo(out, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before any work: the resume line repeats the options given

    monkeypatch.setattr(pipeline, "run_demo", fake_run_demo)
    res = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path), "--batch-size", "8", "--workers", "1"])
    assert res.exit_code == 130 and (seen["batch_size"], seen["workers"]) == (8, 1), res.output
    assert "--batch-size 8 --workers 1" in res.output
