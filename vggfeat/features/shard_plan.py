"""Which output shard each input goes to, and which shards a part writes.

One input tar is one output shard; loose files and @list files are cut into fixed groups of `shard_size` in
input order. Part I of N takes the shards whose number is I mod N, so any number of parts can run at once,
each writing only its own shards, and every input lands in exactly one shard once (no sampler padding).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vggfeat.data.images import find_input_images
from vggfeat.data.tar_shards import expand_shard_patterns
from vggfeat.errors import InputError
from vggfeat.utils.distributed import env_info

from .shard_files import shard_name

DEFAULT_SHARD_SIZE = 10_000
_TAR = re.compile(r"\.tar(\.gz)?$|\.tar\}?$|\.tgz$")


@dataclass(frozen=True)
class ShardSource:
    """Shard `name`'s inputs: one tar (`tar`), or a group of loose image paths."""

    name: str
    tar: str | None = None
    paths: tuple[str, ...] = ()

    def describe(self) -> dict:
        if self.tar is not None:
            return {"name": self.name, "tar": self.tar}
        return {"name": self.name, "first": self.paths[0] if self.paths else None, "inputs": len(self.paths)}


def is_tar_input(item: str) -> bool:
    """A tar shard, a brace pattern or a glob of them (webdataset notation: shards/{000000..000099}.tar)."""
    return not item.startswith("@") and bool(_TAR.search(item))


def plan_shards(inputs: Sequence[str], shard_size: int = DEFAULT_SHARD_SIZE) -> tuple[list[ShardSource], list[str]]:
    """(the shards, the list of inputs they cover: tar urls, or image paths) for the command's inputs."""
    if shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, not {shard_size}")
    inputs = [str(i) for i in inputs]
    tars = [i for i in inputs if is_tar_input(i)]
    if tars and len(tars) != len(inputs):
        loose = next(i for i in inputs if not is_tar_input(i))
        raise InputError(
            f"tar shards and loose inputs mixed ({tars[0]}, {loose}): give either tar shards or image "
            "files/folders/@lists, and extract the other into a store of its own"
        )
    if tars:
        urls = expand_shard_patterns(tars)
        return [ShardSource(shard_name(i, len(urls)), tar=u) for i, u in enumerate(urls)], urls
    paths = [str(p) for p in find_input_images(inputs)]
    n = -(-len(paths) // shard_size)
    groups = [tuple(paths[i * shard_size : (i + 1) * shard_size]) for i in range(n)]
    return [ShardSource(shard_name(i, n), paths=g) for i, g in enumerate(groups)], paths


def parse_part(text: str) -> tuple[int, int]:
    """`I/N` (0 <= I < N) -> (I, N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise InputError(f"--part {text!r}: expected I/N with 0 <= I < N, e.g. --part 0/4 ... --part 3/4")
    return int(m[1]), int(m[2])


def default_part(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's part when --part is not given: a SLURM array task's, else a torchrun rank's, else 0/1."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return parse_part(f"{int(env['SLURM_ARRAY_TASK_ID']) - first}/{env['SLURM_ARRAY_TASK_COUNT']}")
    torchrun = env_info(env)
    if torchrun.world > 1:
        return parse_part(f"{torchrun.rank}/{torchrun.world}")
    return 0, 1


def part_shards(shards: Sequence[ShardSource], part: int, parts: int) -> list[ShardSource]:
    return [s for i, s in enumerate(shards) if i % parts == part]
