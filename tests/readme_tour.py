"""The README's shell blocks as a test runs them: the blocks and their commands, the stand-ins for what the tour
names but a test cannot have (full-size weights, datasets under /data, a torch.hub cache) and the explicit
substitutions that make a command small. Shared by tests/test_readme.py; the README itself stays what a user
types."""

from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from helpers import TINY
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# a block the tour cannot run here carries this comment on the line before its fence, with the reason
NOT_RUN = re.compile(r"^<!-- not run by tests/test_readme\.py: (?P<why>[^>]+?) -->$")
# Narrow stand-in nets: 1/16 of the widths, a 32-wide fc and fc6 over 2x2 of pool5 (so 64 px inputs work), with
# the paper's 1000 classes: each weight file the tour names is one of these, saved in that file's own layout.
STANDIN = {k: TINY[k] for k in ("width_mult", "fc_dim", "fc6_kernel")}


@dataclass(frozen=True)
class Block:
    line: int  # README line of the block's first line of code
    lang: str
    code: str
    not_run: str | None  # the marker's reason, when the block is marked not run


def code_blocks(*languages: str, text: str | None = None) -> list[Block]:
    """The README's fenced blocks in one of `languages`, in order, each with its not-run marker's reason if any."""
    text = README.read_text() if text is None else text
    blocks = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if m.group(1) not in languages:
            continue
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.match(before.strip())
        line = text.count("\n", 0, m.start()) + 2
        blocks.append(Block(line, m.group(1), m.group(2), marker.group("why") if marker else None))
    return blocks


def shell_blocks(text: str | None = None) -> list[Block]:
    return code_blocks("sh", "console", text=text)


def markers(text: str | None = None) -> list[int]:
    """README lines holding a not-run marker (each must sit right before a shell block)."""
    text = README.read_text() if text is None else text
    return [n for n, line in enumerate(text.splitlines(), 1) if "not run by tests/test_readme.py" in line]


def block_commands(block: Block) -> list[tuple[int, str]]:
    """(README line, command) of each command a user types from the block: a console block's `$ ` lines (and
    their `\\` continuations; the rest is output), every line of an sh block."""
    out: list[tuple[int, str]] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line, start = lines[i], block.line + i
        i += 1
        if block.lang == "console":
            if not line.startswith("$ "):
                continue  # the command's output
            line = line[2:]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line]
        while parts[-1].rstrip().endswith("\\") and i < len(lines):
            parts.append(lines[i])
            i += 1
        out.append((start, "\n".join(parts)))
    return out


def strip_comment(command: str) -> str:
    """The command without its trailing `# ...` remarks (none of the README's commands quotes a ` #`)."""
    return "\n".join(re.sub(r"(^|\s)#(\s.*)?$", "", line).rstrip() for line in command.split("\n"))


# What the test changes in a command before running it, and why; each rule must apply somewhere in the tour.
SMALL_SCALES = "64"  # the stand-in nets' fc6 spans 2x2 of pool5: 64 px is the smallest side they take
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"(?<![\w./-])/data\b", "{root}/data", "the datasets: small generated trees in the tour folder"),
    (r"^vggfeat demo$", "vggfeat demo --quick", "the full demo takes 91 s on 2 idle cores; --quick is its toy size"),
    (r"--nproc-per-node 4\b", "--nproc-per-node 2", "two CPU processes over gloo instead of four GPUs"),
    (r"--scales [\d,]+", "--scales 64,80", "scales 256-768 px are the cost of a run; 64 and 80 px keep two"),
    (
        r"(vggfeat (?:extract|linear-probe|knn-probe|reproduce table1[12]))(?![^;&|]*--(?:scales|features))",
        rf"\1 --scales {SMALL_SCALES}",
        "the paper's scales by default: one small scale instead (a --features store has its own)",
    ),
    (r"--max-memory 64MB", "--max-memory 64KB", "clip_out is 1.5 MB here, not a corpus: its budget shrinks with it"),
    (r"--low-shot(?=\s|$)", "--low-shot --low-shot-ks 1", "the small VOC tree has one positive of some classes"),
]


def substitute(command: str, root: Path, used: set[int]) -> str:
    for i, (pattern, repl, _) in enumerate(SUBSTITUTIONS):
        new = re.sub(pattern, repl.replace("{root}", str(root)), command, flags=re.M)
        if new != command:
            used.add(i)
        command = new
    return command


# ---- the tour folder: what the README's commands expect to find -------------------------------------------


def _images(folder: Path, n: int, seed: int, size: tuple[int, int] = (72, 54)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _class_folders(root: Path, classes: tuple[str, ...], per_class: int, seed: int) -> None:
    for k, name in enumerate(classes):
        _images(root / name, per_class, seed + k)


def build_datasets(data: Path) -> None:
    """/data of the tour: VOC2007, VOC2012 (classification and action layouts) and both Caltechs, small."""
    from vggfeat.data.synthetic_voc import make_voc2007, make_voc2012
    from vggfeat.data.synthetic_voc_action import make_voc2012_action

    make_voc2007(data, n_trainval=40, n_test=16, seed=3, size=(96, 72))
    make_voc2012(data, n_train=16, n_val=16, seed=4, size=(96, 72))
    make_voc2012_action(data, n_train=12, n_val=12, seed=5, size=(96, 72))
    _class_folders(data / "101_ObjectCategories", ("BACKGROUND_Google", "ant", "camera"), 4, seed=10)
    _class_folders(data / "256_ObjectCategories", ("001.ak47", "002.backpack", "257.clutter"), 4, seed=20)


def torchvision_layout(model) -> dict:
    """A vggfeat net's weights under torchvision's keys: features.N for the convs (N their index in
    torchvision's Sequential, ReLUs and pools between), classifier.0/3/6 Linear matrices for fc6-fc8."""
    from vggfeat.models.vgg import CONFIGS

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


def build_weights(root: Path, create_model) -> None:
    """Stand-ins of every weight file and name the tour uses, each in its own layout: torchvision's files in
    torch.hub's cache (offline), the authors' Caffe release as the 2014 files are laid out, vggfeat files."""
    import torch
    from caffe_wire import caffe_layers, net_pieces, write_caffemodel

    import vggfeat

    hub = root / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for name, arch, seed in (("vgg16-397923af.pth", "vgg16", 1), ("vgg19-dcbb9e9d.pth", "vgg19", 2)):
        torch.save(torchvision_layout(create_model(arch, seed=seed, init="glorot")), hub / name)
    for name, arch, seed in (("VGG_ILSVRC_16_layers", "vgg16", 3), ("VGG_ILSVRC_19_layers", "vgg19", 4)):
        state = {k: v.numpy() for k, v in create_model(arch, seed=seed, init="glorot").state_dict().items()}
        write_caffemodel(root / f"{name}.caffemodel", net_pieces(caffe_layers(state), fmt="V1"))
    for name, arch, seed in (("d", "vgg_d", 5), ("e", "vgg_e", 6)):
        vggfeat.save_weights(create_model(arch, seed=seed, init="glorot"), root / f"{name}.safetensors")


def build_inputs(root: Path) -> None:
    """The images, lists and vectors the tour's commands name, relative to the folder it runs in."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _images(root / "imgs", 4, seed=30)
    _images(root / "photos", 4, seed=31)
    (root / "photos" / "empty.png").write_bytes(b"")
    good = (root / "photos" / "000.jpg").read_bytes()
    (root / "photos" / "broken.jpg").write_bytes(good[: len(good) // 2])
    extra = _images(root / "more", 2, seed=32)
    (root / "more.txt").write_text("".join(f"more/{p.name}\n" for p in extra))
    _images(root, 1, seed=33)[0].rename(root / "query.jpg")
    # an embedding-reader folder as clip-retrieval writes one: emb/*.npy beside meta/*.parquet with a path column;
    # more than 20,000 rows, so the index is not a Flat one and a small budget puts it on disk in parts
    rng = np.random.default_rng(34)
    for i in range(2):
        for sub in ("emb", "meta"):
            (root / "clip_out" / sub).mkdir(parents=True, exist_ok=True)
        x = rng.standard_normal((12_000, 16)).astype(np.float32)
        np.save(root / "clip_out" / "emb" / f"{i}.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
        paths = pa.table({"path": [f"img{i}_{k}.jpg" for k in range(12_000)]})
        pq.write_table(paths, root / "clip_out" / "meta" / f"{i}.parquet")
    np.save(root / "q.npy", rng.standard_normal((3, 16)).astype(np.float32))


def shims(root: Path) -> Path:
    """bin/ with `vggfeat`, `python`, `python3` and `torchrun` running this interpreter (and this checkout, by
    PYTHONPATH), as they would from an activated install."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, run in (
        ("vggfeat", "-m vggfeat"),
        ("python", ""),
        ("python3", ""),
        ("torchrun", "-m torch.distributed.run"),
    ):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" {run} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def tour_env(root: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        VGGFEAT_DATA=str(root / "data"),  # where --root defaults to
        TORCH_HOME=str(root / "torch-home"),
        HF_HOME=str(root / "hf-home"),
        VGGFEAT_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
        PET_MASTER_PORT=str(port),  # torchrun's --master-port, so concurrent test runs do not share one
    )
    return env
