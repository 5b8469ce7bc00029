"""Helpers shared by several test modules (fixtures live in conftest.py): tiny net options, reading a VOC2007
tree's labels, a PNG that claims a huge size, a Hugging Face cache entry, a snapshot of a net's state, a
training run killed at a step. Test modules import from here, never from each other."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from vggfeat.benchmarks.voc import VOC_CLASSES

# `python -c KILLED_AT_STEP STEP vggfeat-args...`: the command line with training SIGKILLed right after global step
# STEP's checkpoint, like a crashed node, for the resume tests; the hook is monkeypatched in, never in the library
KILLED_AT_STEP = """
import os, signal, sys
from vggfeat.train import loop
step, save = int(sys.argv.pop(1)), loop._Trainer._checkpoint
def checkpoint(self, best=False):
    save(self, best)
    if self.global_step == step:
        os.kill(os.getpid(), signal.SIGKILL)
loop._Trainer._checkpoint = checkpoint
from vggfeat.cli.main import cli
cli(prog_name="vggfeat")
"""

# the commands that compute (and so take --device), as `vggfeat COMMAND [SUBCOMMAND]`
COMPUTING = (
    "train",
    "demo",
    "mean-rgb",
    "extract",
    "evaluate",
    "linear-probe",
    "knn-probe",
    "reproduce",
    "index build",
    "index search",
)

# 1/16 of the paper's widths: 4, 8, 16, 32, 32 channels; fc6 spans 2x2 of pool5, so 64 px inputs work.
TINY = dict(width_mult=1 / 16, fc_dim=32, fc6_kernel=2, num_classes=10)
# TINY with Glorot init, for tests that read a random net's descriptors: the paper's normal(0, 0.01) makes the
# activations of a deep net vanish, so every descriptor would be near zero.
TINY_GLOROT = {**TINY, "init": "glorot"}


def voc_labels(voc: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Image paths and the (N, 20) label matrix (1, 0 difficult, -1) of a VOC2007 split, read from the files."""
    main = voc / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    ids = (main / f"{split}.txt").read_text().split()
    labels = np.zeros((len(ids), len(VOC_CLASSES)), np.int8)
    for k, c in enumerate(VOC_CLASSES):
        rows = dict(line.split() for line in (main / f"{c}_{split}.txt").read_text().splitlines())
        labels[:, k] = [int(rows[i]) for i in ids]
    paths = [str(voc / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{i}.jpg") for i in ids]
    return paths, labels


def write_png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG file that claims a huge size: a decompression bomb for anyone who decodes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def count_opens(monkeypatch, path: Path) -> list:
    """Every builtins.open of `path` from now on (the list grows as the code under test opens it), with the
    weight-file maps of this process forgotten, so a test sees the opens a fresh run would make."""
    import builtins
    import os

    import vggfeat.models.mapped as mapped

    monkeypatch.setattr(mapped, "_MAPS", type(mapped._MAPS)())
    real_open, opens = builtins.open, []

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == str(path):
            opens.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opens


def prime_hf(cache_root, repo_id: str, tensors: dict, revision: str = "0" * 40):
    """A Hugging Face cache entry as huggingface_hub lays it out: refs/main names a snapshot holding the file."""
    from safetensors.torch import save_file

    folder = cache_root / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    path = folder / "snapshots" / revision / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def store_rows(out: Path) -> np.ndarray:
    """Every row of the feature store in `out` (sharded, or the single-file format), in store order."""
    from vggfeat.features.store import load_store

    return np.asarray(load_store(out).features)


def store_paths(out: Path) -> list[str]:
    from vggfeat.features.store import load_store

    return load_store(out).paths


def module_state(module) -> dict:
    """What running a net could change in it: per parameter and buffer the tensor object, its memory (address,
    strides, dtype, device), version counter, requires_grad and values; per submodule the train/eval flag and
    the plain attributes (flags, names, numbers). Compare two with `assert_same_state`."""
    import torch

    tensors = {}
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        meta = (t.data_ptr(), t.stride(), t.dtype, t.device, t._version, t.requires_grad)
        tensors[name] = (t, meta, t.detach().clone())
    plain = (bool, int, float, str, type(None), torch.device, torch.dtype)
    modules = {
        name: (m.training, {k: v for k, v in vars(m).items() if isinstance(v, plain)})
        for name, m in module.named_modules()
    }
    return {"tensors": tensors, "modules": modules}


def assert_same_state(before: dict, after: dict) -> None:
    import torch

    assert after["modules"].keys() == before["modules"].keys()
    for name, was in before["modules"].items():
        assert after["modules"][name] == was, f"module {name!r} (mode, attributes): {was} -> {after['modules'][name]}"
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, (t, meta, values) in before["tensors"].items():
        t2, meta2, values2 = after["tensors"][name]
        assert t2 is t, f"{name} is another tensor object"
        assert meta2 == meta, f"{name}: (address, strides, dtype, device, version, requires_grad) {meta} -> {meta2}"
        assert torch.equal(values2, values), f"{name} changed values"


# allocators that give freed memory back at once, so a peak RSS is what the code holds, not what the allocators
# kept: mimalloc's (pyarrow's pool) and glibc's retention moved a build's growth by 10-25 MB from run to run
QUIET_ALLOCATORS = {
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "MALLOC_TRIM_THRESHOLD_": "131072",
}


def peak_rss_growth(setup: str, code: str, args: list[str], timeout: float = 300) -> tuple[int, str]:
    """(bytes, the rest of stdout): the peak RSS growth of Python `code` run in a fresh interpreter with `args` as
    sys.argv[1:], counted from after `setup` (its imports, which peak higher; Linux only: /proc/self/clear_refs)."""
    import os
    import subprocess
    import sys

    run = (
        f"{setup}\n"
        "def kb(key):\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # peak RSS := RSS now
        "base = kb('VmRSS:')\n"
        f"{code}\n"
        "print('GROWTH', (kb('VmHWM:') - base) * 1024)\n"
    )
    env = {**os.environ, **QUIET_ALLOCATORS, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", run, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert p.returncode == 0, p.stderr[-2000:]
    out, growth = p.stdout.rsplit("GROWTH", 1)
    return int(growth), out


# `vggfeat index build|search ...` in peak_rss_growth, with the imports it would do counted before the base
VGGFEAT_COMMAND = (
    "import sys, faiss, numpy\n"
    "faiss.omp_set_num_threads(1)\n"
    "from vggfeat.cli import main\n"
    "import vggfeat.index.build, vggfeat.cli.index, pyarrow, pyarrow.parquet"
)
