"""The README is run, not just read: its tour - every sh and console block and every python block, in order,
in one folder - runs with narrow stand-ins for the weights and datasets it names (slow); by default every
```python block executes and every `vggfeat ...` command it shows parses as that command's real options."""

from __future__ import annotations

import shlex
import socket
import subprocess
import time

import click
import pytest
import torch
from caffe_wire import caffe_layers, net_pieces, write_caffemodel
from helpers import TINY
from readme_tour import (
    REPO,
    STANDIN,
    SUBSTITUTIONS,
    block_commands,
    build_datasets,
    build_inputs,
    build_weights,
    code_blocks,
    markers,
    shell_blocks,
    shims,
    strip_comment,
    substitute,
    torchvision_layout,
    tour_env,
)

import vggfeat
import vggfeat.models
from vggfeat.cli.main import cli

# Narrow stand-in for a full-size net: 1/16 of the widths and a 32-wide fc, but the paper's 7x7 fc6 and 1000
# classes, so the tour's shapes (spatial size of the dense maps, number of classes) are the real ones.
SMALL = {k: TINY[k] for k in ("width_mult", "fc_dim")}
# Blocks marked `<!-- not run by tests/test_readme.py: WHY -->`: installs (network), ImageNet training, SLURM.
NOT_RUN_COUNT = 6


@pytest.fixture
def tour_folder(tmp_path, monkeypatch):
    """A working folder holding narrow stand-ins for the weight files the README loads."""
    real_create = vggfeat.models.create_model

    def create_small(name, **kwargs):
        return real_create(name, **{**SMALL, **kwargs})

    monkeypatch.setattr(vggfeat.models, "create_model", create_small)
    monkeypatch.chdir(tmp_path)
    state = torchvision_layout(create_small("vgg16", seed=1, init="glorot"))
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    # torchvision:vgg16 from torch.hub's cache, offline (tests never download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("VGGFEAT_OFFLINE", "1")
    (tmp_path / "torch-home" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "torch-home" / "hub" / "checkpoints" / "vgg16-397923af.pth")
    # the authors' Caffe release as the 2014 files are laid out (V1 layers, BGR conv1_1), narrow
    caffe_d = {k: v.numpy() for k, v in create_small("vgg16", seed=2, init="glorot").state_dict().items()}
    write_caffemodel(tmp_path / "VGG_ILSVRC_16_layers.caffemodel", net_pieces(caffe_layers(caffe_d), fmt="V1"))
    return tmp_path


PYTHON_BLOCKS = [(b.line, b.code) for b in code_blocks("python")]


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"line{line}" for line, _ in PYTHON_BLOCKS])
def test_python_blocks_run(tour_folder, line, code):
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
    if "caffe_d" in namespace:  # the Caffe file is read with its own convention
        assert namespace["caffe_d"].preprocessing == vggfeat.models.CAFFE
        assert namespace["caffe_d"].config == "D"
    model = namespace.get("model")
    if isinstance(model, torch.nn.Module) and "fc7" in namespace:
        # the tour's descriptors are deterministic: no dropout in the features a user computes
        again = model.forward_features(namespace["x"], layer="fc7")
        assert torch.equal(again, namespace["fc7"])
        assert namespace["fc7"].shape == (1, SMALL["fc_dim"], 6, 10)  # fc6's 7x7 window over a 12x16 pool5


def test_readme_has_a_python_tour():
    assert any("forward_features" in code for _, code in PYTHON_BLOCKS)


def vggfeat_commands() -> list[tuple[int, list[str]]]:
    """(line, arguments after `vggfeat`) of every vggfeat command in the README's sh and console blocks."""
    found = []
    for block in shell_blocks():
        for start, command in block_commands(block):
            lexer = shlex.shlex(command.replace("\\\n", " "), posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words: list[str] = []
            for token in [*lexer, ";"]:  # a command ends at ;, &&, |, ||
                if token not in (";", "&&", "|", "||", "&"):
                    words.append(token)
                    continue
                for i, word in enumerate(words):
                    if word == "vggfeat" or word.endswith("/vggfeat"):  # also `-m vggfeat` under torchrun
                        found.append((start, words[i + 1 :]))
                        break
                words = []
    return found


COMMANDS = vggfeat_commands()


@pytest.mark.parametrize("line, args", COMMANDS, ids=[f"line{line}" for line, _ in COMMANDS])
def test_commands_parse_as_typed(line, args, monkeypatch):
    """Each command names a real (sub)command and parses with its options - names, values, choices, counts -
    as click parses it before running; only the files it names need not exist here."""
    monkeypatch.setattr(click.Path, "convert", lambda self, value, param, ctx: value)
    typed = " ".join(["vggfeat", *args])
    parent = click.Context(cli, info_name="vggfeat")
    command, name = cli, "vggfeat"
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(parent, args[0])
        assert sub is not None, f"README.md:{line}: no command {args[0]!r} in `{parent.command_path}`"
        if isinstance(sub, click.Group):
            parent = click.Context(sub, info_name=args[0], parent=parent)
        command, name, args = sub, args[0], args[1:]
    try:
        command.make_context(name, list(args), parent=parent if command is not cli else None)
    except click.exceptions.Exit as e:  # --help
        assert e.exit_code == 0
    except click.UsageError as e:
        pytest.fail(f"README.md:{line}: `{typed}`: {e.format_message()}")


def test_readme_commands_were_found():
    names = {args[0] for _, args in COMMANDS if args}
    assert {"demo", "models", "extract", "linear-probe", "knn-probe", "index", "train", "evaluate"} <= names


def test_not_run_markers_sit_on_shell_blocks():
    """Each not-run marker is the line right before a shell block, says why, and there are exactly as many as
    the blocks this test knows cannot run here."""
    marked = [b for b in shell_blocks() if b.not_run]
    assert len(markers()) == len(marked) == NOT_RUN_COUNT, [b.line for b in marked]
    assert all(len(b.not_run) > 10 for b in marked)


def test_every_substitution_applies_to_a_command_that_runs():
    """The test's changes to the README's commands stay few and explicit: each one is still needed."""
    used: set[int] = set()
    for block in shell_blocks():
        for _, command in block_commands(block) if not block.not_run else []:
            substitute(strip_comment(command), REPO, used)
    assert used == set(range(len(SUBSTITUTIONS))), [SUBSTITUTIONS[i][2] for i in set(range(len(SUBSTITUTIONS))) - used]


# ---- the whole tour, in order ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shown_output(block, line: int) -> list[str]:
    """The output lines a console block shows after the command on README line `line`."""
    lines = block.code.splitlines()[line - block.line + 1 :]
    out = []
    for text in lines:
        if text.startswith("$ "):
            break
        out.append(text)
    return out


@pytest.mark.slow  # every command of the tour as a user runs it: a few minutes on 2 cores
def test_readme_tour_runs_in_order(tmp_path, monkeypatch):
    root = tmp_path / "tour"
    root.mkdir()
    real_create = vggfeat.models.create_model

    def create_standin(name, **kwargs):
        return real_create(name, **{**STANDIN, **kwargs})

    build_datasets(root / "data")
    build_weights(root, create_standin)
    build_inputs(root)
    shims(root)
    (root / "recipes").symlink_to(REPO / "recipes")  # the README's commands run from the checkout
    env = tour_env(root, free_port())
    for key in ("TORCH_HOME", "HF_HOME", "VGGFEAT_OFFLINE", "HF_HUB_OFFLINE"):  # the python blocks run here
        monkeypatch.setenv(key, env[key])
    monkeypatch.setattr(vggfeat.models, "create_model", create_standin)
    monkeypatch.chdir(root)

    used: set[int] = set()
    skipped, timings = [], []
    blocks = sorted(code_blocks("sh", "console", "python"), key=lambda b: b.line)
    for block in blocks:
        if block.not_run:
            skipped.append(block.line)
            continue
        if block.lang == "python":
            exec(compile(block.code, f"README.md:{block.line}", "exec"), {"__name__": "readme"})
            continue
        for line, typed in block_commands(block):
            command = substitute(strip_comment(typed), root, used)
            start = time.perf_counter()
            run = subprocess.run(
                ["bash", "-c", f"set -eo pipefail\n{command}"],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            timings.append((round(time.perf_counter() - start, 1), line))
            print(f"{timings[-1][0]:6.1f} s  README.md:{line}  {command.splitlines()[0][:90]}")
            output = run.stdout + run.stderr
            assert run.returncode == 0, f"README.md:{line}: `{command}` exited {run.returncode}:\n{output[-4000:]}"
            if command == "vggfeat models":  # the table shown is the one printed
                assert run.stdout.splitlines() == shown_output(block, line)
            if command.startswith("torchrun"):  # one summary, not one per process
                summaries = [s for s in output.splitlines() if " images -> " in s or "is already complete" in s]
                assert len(summaries) == 1, output
    print("slowest commands:", sorted(timings, reverse=True)[:8])
    assert len(skipped) == NOT_RUN_COUNT
    assert used == set(range(len(SUBSTITUTIONS)))
    # what the tour says it makes is there
    assert vggfeat.load_store(root / "feats").dim == STANDIN["fc_dim"]
    assert len(vggfeat.load_store(root / "vggfeat-out" / "imgs-fc7")) == 4
    assert (root / "runs" / "table11" / "table11.md").is_file()
    assert (root / "vgg16.safetensors").is_file()
