"""Every error's advice works: an option a message tells the user to pass exists on the command that shows the
message, a `vggfeat ...` command it names exists with those options, and the advice of the CUDA-unavailable
error, followed, runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from helpers import COMPUTING

import vggfeat
from vggfeat.cli.main import cli
from vggfeat.data.synthetic import generate_synthetic

PACKAGE = Path(vggfeat.__file__).parent
# an option as messages name it; not a prefix such as --slurm-* nor a longer word
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])(?![\w*-])")
GONE = re.compile(r"--[a-z-]+(?: \{\})? is gone")  # a refused old option, named as such
COMMAND = re.compile(r"`vggfeat ([a-z-]+)(?: ([a-z]+))?([^`]*)`")
PROBES = ("linear-probe", "knn-probe", "reproduce")
# where a module's messages are shown (longest prefix wins): each option they name must exist on every one of
# these commands. A module not listed here is shared: its options must exist on some command.
SHOWN_BY = {
    "utils/device.py": COMPUTING,  # resolve_device: "use --device cpu or auto"
    "config.py": ("train",),
    "train/": ("train",),
    "data/stats.py": ("mean-rgb",),
    "data/synthetic.py": ("train",),
    "data/folder.py": ("evaluate",),
    "demo/": ("demo",),
    "evaluate/": ("evaluate",),
    "features/extract.py": ("extract",),
    "features/launch.py": ("extract",),
    "features/shard_plan.py": ("extract",),
    "index/": ("index build",),
    "index/gpu.py": ("index build", "index search"),
    "benchmarks/": PROBES,
    "reproduce/": ("reproduce",),
    "models/convert.py": ("weights convert",),
    "cli/train.py": ("train",),
    "cli/demo.py": ("demo",),
    "cli/mean_rgb.py": ("mean-rgb",),
    "cli/evaluate.py": ("evaluate",),
    "cli/extract.py": ("extract",),
}


def _commands(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    out = {}
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        out[f"{prefix} {name}".strip()] = cmd
        if isinstance(cmd, click.Group):
            out.update(_commands(cmd, f"{prefix} {name}".strip()))
    return out


COMMANDS = _commands()


def _options(path: str) -> set[str]:
    """The options a user can see on command `path` (hidden ones are on their way out: no advice names them)."""
    cmd = COMMANDS[path]
    params = cmd.get_params(click.Context(cmd))  # --help included
    return {o for p in params if isinstance(p, click.Option) and not p.hidden for o in (*p.opts, *p.secondary_opts)}


def _messages(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string of a module but its docstrings; an f-string's fields read as {}."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "option":
            skip.update(id(a) for a in node.args)  # an option's own names, not a message
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            out.append((node.lineno, node.value))
    return out


def _shown_by(rel: str) -> tuple[str, ...] | None:
    keys = [k for k in SHOWN_BY if rel == k or (k.endswith("/") and rel.startswith(k))]
    return SHOWN_BY[max(keys, key=len)] if keys else None


def test_every_option_and_command_that_advice_names_exists():
    everywhere = set().union(*(_options(p) for p in COMMANDS))
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        shown_by = _shown_by(rel)
        for line, text in _messages(path):
            for cmd, sub, rest in COMMAND.findall(text):  # `vggfeat CMD [SUB] ... --opt`
                name = f"{cmd} {sub}" if f"{cmd} {sub}" in COMMANDS else cmd
                if name not in COMMANDS:
                    wrong.append(f"{rel}:{line}: `vggfeat {cmd}` is no command")
                    continue
                wrong += [
                    f"{rel}:{line}: `vggfeat {name}` has no {o}"
                    for o in OPTION.findall(rest)
                    if o not in _options(name)
                ]
            bare = GONE.sub("", COMMAND.sub("", text))
            for opt in OPTION.findall(bare):
                if shown_by is None:
                    if opt not in everywhere:
                        wrong.append(f"{rel}:{line}: no command has {opt}")
                else:
                    wrong += [f"{rel}:{line}: {c} has no {opt}" for c in shown_by if opt not in _options(c)]
    assert wrong == [], "\n".join(wrong)


def test_the_advice_of_a_missing_gpu_names_an_option_train_has_and_following_it_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    root = generate_synthetic(tmp_path / "d", classes=10, per_class=4, seed=0)  # smoke's 10 classes, fewer images
    tiny = ["--set", "optim.epochs=1", "--data-root", str(root)]
    res = CliRunner().invoke(
        cli, ["train", "smoke", "--set", "runtime.device=cuda", *tiny, "--out", str(tmp_path / "a")]
    )
    assert res.exit_code in (1, 2) and "torch sees no CUDA GPU" in res.output, res.output
    advice = re.search(r"use (--[\w-]+) (\w+)", res.output)
    assert advice is not None and advice.groups() == ("--device", "cpu"), res.output
    res = CliRunner().invoke(cli, ["train", "smoke", *advice.groups(), *tiny, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "model.safetensors").is_file() and not (tmp_path / "a").exists()


def test_the_advice_of_a_missing_gpu_works_on_the_commands_that_read_images(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = generate_synthetic(tmp_path / "d", classes=3, per_class=2, seed=0)
    weights = vggfeat.save_weights(tiny_model("vgg_a", num_classes=3), tmp_path / "a.safetensors")
    for args in (
        ["mean-rgb", str(root), "--refresh"],
        ["evaluate", "--weights", str(weights), "--data-root", str(root), "--scales", "64", "--quiet"],
        ["extract", str(root / "val"), "-o", str(tmp_path / "s"), "--weights", str(weights), "--scales", "64"],
    ):
        res = CliRunner().invoke(cli, [*args, "--device", "cuda"])
        assert res.exit_code in (1, 2) and "use --device cpu" in res.output, (args, res.output)
        res = CliRunner().invoke(cli, [*args, "--device", "cpu"])
        assert res.exit_code == 0, (args, res.output)


@pytest.mark.parametrize("path", COMPUTING)
def test_device_advice_is_an_option_of_every_command_that_computes(path):
    assert "--device" in _options(path)
