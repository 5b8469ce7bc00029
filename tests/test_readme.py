"""The README is run, not just read: every ```python block executes (with narrow stand-ins for the full-size
nets and weight files it names), and every `vggfeat ...` command in its sh/console blocks names a real
command and real options of that command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import torch
from caffe_wire import caffe_layers, net_pieces, write_caffemodel
from helpers import TINY

import vggfeat
import vggfeat.models
from vggfeat.cli.main import cli
from vggfeat.models.vgg import CONFIGS

README = Path(__file__).resolve().parents[1] / "README.md"
# Narrow stand-in for a full-size net: the tiny net's widths and fc, but the paper's 7x7 fc6 and 1000
# classes, so the tour's shapes (spatial size of the dense maps, number of classes) are the real ones.
SMALL = {**TINY, "fc6_kernel": 7, "num_classes": 1000}


def code_blocks(*languages: str) -> list[tuple[int, str]]:
    """(line number, text) of each fenced block in one of `languages`."""
    text = README.read_text()
    found = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if m.group(1) in languages:
            found.append((text.count("\n", 0, m.start()) + 2, m.group(2)))
    return found


def torchvision_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A vggfeat net's weights under torchvision's keys: features.N for the convs (N their index in
    torchvision's Sequential, ReLUs and pools between), classifier.0/3/6 Linear matrices for fc6-fc8."""
    state, out, index = model.state_dict(), {}, 0
    for s, stage in enumerate(CONFIGS[model.config], start=1):
        for i in range(1, len(stage) + 1):
            for param in ("weight", "bias"):
                out[f"features.{index}.{param}"] = state[f"conv{s}_{i}.{param}"]
            index += 2  # conv, ReLU
        index += 1  # max-pool
    for fc, linear in (("fc6", 0), ("fc7", 3), ("fc8", 6)):
        out[f"classifier.{linear}.weight"] = state[f"{fc}.weight"].flatten(1)  # (out, C*k*k) as a Linear
        out[f"classifier.{linear}.bias"] = state[f"{fc}.bias"]
    return out


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


@pytest.mark.parametrize("line, code", code_blocks("python"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
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
    assert any("forward_features" in code for _, code in code_blocks("python"))


def vggfeat_commands() -> list[tuple[int, list[str]]]:
    """(line, arguments after `vggfeat`) of every vggfeat command in the README's sh and console blocks."""
    found = []
    for start, code in code_blocks("sh", "console"):
        console = "$ " in code
        lines = code.replace("\\\n", " ").splitlines()
        for offset, line in enumerate(lines):
            if console:
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens, words = list(lexer), []
            for token in [*tokens, ";"]:  # a command ends at ;, &&, |, ||
                if token not in (";", "&&", "|", "||", "&"):
                    words.append(token)
                    continue
                for i, word in enumerate(words):
                    module = i > 0 and words[i - 1] == "-m"
                    if word == "vggfeat" or word.endswith("/vggfeat") or (module and word == "vggfeat"):
                        found.append((start + offset, words[i + 1 :]))
                        break
                words = []
    return found


def options_of(command: click.Command, ctx: click.Context) -> set[str]:
    names = set(ctx.help_option_names)
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names.update(param.opts, param.secondary_opts)
    return names


COMMANDS = vggfeat_commands()


@pytest.mark.parametrize("line, args", COMMANDS, ids=[f"line{line}" for line, _ in COMMANDS])
def test_commands_name_real_commands_and_options(line, args):
    command: click.Command = cli
    ctx = click.Context(cli, info_name="vggfeat")
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"README.md:{line}: no command {args[0]!r} in `{ctx.command_path}`"
        ctx = click.Context(sub, info_name=args[0], parent=ctx)
        command, args = sub, args[1:]
    valid = options_of(command, ctx)
    for arg in args:
        if arg.startswith("-") and arg != "-":
            name = arg.split("=", 1)[0]
            assert name in valid, f"README.md:{line}: {name} is not an option of this command; valid: {sorted(valid)}"


def test_readme_commands_were_found():
    names = {args[0] for _, args in COMMANDS if args}
    assert {"demo", "models", "extract", "linear-probe", "knn-probe", "index", "train", "evaluate"} <= names
