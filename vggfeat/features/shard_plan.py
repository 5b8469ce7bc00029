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
from pathlib import Path

from vggfeat.data.images import iter_images, no_images_error
from vggfeat.data.tar_shards import expand_shard_patterns
from vggfeat.errors import InputError
from vggfeat.utils.distributed import env_info
from vggfeat.utils.inputs import PathsHash, paths_sha256

from .list_plan import ListSpan, cached_plan, stream_plan
from .shard_files import shard_name

DEFAULT_SHARD_SIZE = 10_000
_TAR = re.compile(r"\.tar(\.gz)?$|\.tar\}?$|\.tgz$")


@dataclass(frozen=True)
class ShardSource:
    """Shard `name`'s inputs: one tar (`tar`), a group of loose image paths (`paths`), or a span of @list lines
    (`span`, read when the shard is written: a part holds only its own shards' paths)."""

    name: str
    tar: str | None = None
    paths: tuple[str, ...] = ()
    span: ListSpan | None = None
    # another part's shard of walked inputs: its first path and size only, its paths not held
    first: str | None = None
    count: int | None = None

    @property
    def n_inputs(self) -> int:
        if self.span is not None:
            return self.span.count
        return self.count if self.count is not None else len(self.paths)

    def input_paths(self) -> tuple[str, ...]:
        if self.span is not None:
            return self.span.read_paths()
        if self.count is not None:
            raise RuntimeError(f"shard {self.name} belongs to another part: its paths were not kept")
        return self.paths

    def describe(self) -> dict:
        if self.tar is not None:
            return {"name": self.name, "tar": self.tar}
        first: str | None = self.first if self.count is not None else (self.paths[0] if self.paths else None)
        if self.span is not None:
            first = self.span.first
        return {"name": self.name, "first": first, "inputs": self.n_inputs}


@dataclass(frozen=True)
class ShardPlan:
    """The shards of an extraction's inputs, how many inputs they hold and the sha256 of the inputs' list (tar
    urls, or image paths, joined by newlines): what a store's settings record of its inputs."""

    shards: list[ShardSource]
    n_inputs: int
    inputs_sha256: str
    part: tuple[int, int] | None = None  # walked inputs: the part whose shards' paths are held (None: all)


def is_tar_input(item: str) -> bool:
    """A tar shard, a brace pattern or a glob of them (webdataset notation: shards/{000000..000099}.tar)."""
    return not item.startswith("@") and bool(_TAR.search(item))


def plan_shards(
    inputs: Sequence[str],
    shard_size: int = DEFAULT_SHARD_SIZE,
    cache: Path | None = None,
    hash_inputs: bool = False,
    part: tuple[int, int] | None = None,
) -> ShardPlan:
    """The shards of the command's inputs. @list inputs are streamed (features.list_plan) and, with a `cache`
    folder (the store), their plan is saved there for the job's other parts and reruns. Files and folders are
    walked one path at a time; with `part`, only that part's shards keep their paths (the others their first
    path and size), so a part of a folder of 10^8 images holds its own shards' paths, not the folder's."""
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
        shards = [ShardSource(shard_name(i, len(urls)), tar=u) for i, u in enumerate(urls)]
        return ShardPlan(shards, len(urls), paths_sha256(urls))
    if inputs and all(i.startswith("@") for i in inputs):
        lists = [i[1:] for i in inputs]
        streamed = (
            stream_plan(lists, shard_size) if cache is None else cached_plan(lists, shard_size, cache, hash_inputs)
        )
        if streamed is not None and streamed.n_inputs:
            n = len(streamed.spans)
            shards = [ShardSource(shard_name(i, n), span=span) for i, span in enumerate(streamed.spans)]
            return ShardPlan(shards, streamed.n_inputs, streamed.inputs_sha256)
    return _walk(inputs, shard_size, part)


def _walk(inputs: list[str], shard_size: int, part: tuple[int, int] | None) -> ShardPlan:
    """The shards of files and folders (and @lists naming folders), walked once in input order."""
    hashed = PathsHash()
    firsts: list[str] = []  # each shard's first path
    held: dict[int, list[str]] = {}  # the paths of the shards this part writes
    for path in iter_images(inputs):
        shard, place = divmod(hashed.count, shard_size)
        if place == 0:
            firsts.append(path)
            if part is None or shard % part[1] == part[0]:
                held[shard] = []
        if shard in held:
            held[shard].append(path)
        hashed.add(path)
    if not hashed.count:
        raise no_images_error(inputs)
    n = len(firsts)
    shards = [
        ShardSource(shard_name(i, n), paths=tuple(held[i]))
        if i in held
        else ShardSource(shard_name(i, n), first=firsts[i], count=min(shard_size, hashed.count - i * shard_size))
        for i in range(n)
    ]
    return ShardPlan(shards, hashed.count, hashed.hexdigest(), part)


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


def this_part(part: tuple[int, int] | None = None) -> tuple[int, int]:
    """The part this process writes: `part` when given, else a torchrun rank's, else `default_part()`."""
    if part is not None:
        return part
    torchrun = env_info()
    return (torchrun.rank, torchrun.world) if torchrun.world > 1 else default_part()


def part_shards(shards: Sequence[ShardSource], part: int, parts: int) -> list[ShardSource]:
    return [s for i, s in enumerate(shards) if i % parts == part]
