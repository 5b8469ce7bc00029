"""@list inputs planned by streaming the list files, so a corpus of 10^8 listed images costs a part only its own
shards' paths.

The planner reads each list once, line by line, checks that every listed file exists (one `stat` per line), and
keeps no path: each shard becomes a `ListSpan`, where its paths start in the lists (file, byte offset, entry on
that line) and the sha256 of its paths. The whole listing's sha256 (a store's `inputs_sha256`) is hashed as it
streams, the same value the in-memory plan gives. A shard's paths are read back from its span when the shard is
written, and checked against the span's sha256.

With a cache folder (the store), the plan is saved in `.listing/<key>.json`, keyed by the inputs as given, the
working folder, the shard size and each list file's identity (path, size, mtime, ctime, inode; its sha256 with
`hash_inputs`), so the other parts of a job, and its reruns, read the plan instead of walking the lists again.
A list line that names a folder means no plan here (`None`): a folder's files are only known by walking it, so
every part walks such inputs (features.shard_plan).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vggfeat.data.images import iter_list, listed_kind
from vggfeat.errors import InputError
from vggfeat.utils.files import atomic_write_json, load_json_file, sha256_file, sha256_json
from vggfeat.utils.inputs import PathsHash, paths_sha256
from vggfeat.utils.locks import folder_lock

CACHE_DIR = ".listing"  # in the store: saved plans of its @list inputs
_FORMAT = 1


class ListChangedError(InputError):
    """A list file's lines are not what its saved plan says (changed without a new size, mtime or inode)."""


@dataclass(frozen=True)
class ListSpan:
    """Where one shard's `count` paths are in the list files `lists`: from the line at byte `offset` of list
    `file` (line number `lineno`), its entry `skip` on (a line that str.splitlines cuts further, at a lone CR,
    has several entries); `first` is the first path, `sha256` that of the paths joined by newlines."""

    lists: tuple[str, ...]
    file: int
    offset: int
    skip: int
    lineno: int
    count: int
    first: str
    sha256: str
    plan_file: str | None = None  # the saved plan it came from, named when the lists changed under it

    def read_paths(self) -> tuple[str, ...]:
        """The shard's paths, read from the lists; ListChangedError unless they are the ones planned."""
        entries = itertools.chain.from_iterable(
            iter_list(f, *((self.offset, self.skip) if i == self.file else (0, 0)))
            for i, f in enumerate(self.lists)
            if i >= self.file
        )
        paths = tuple(str(e.path) for e in itertools.islice(entries, self.count))
        if len(paths) != self.count or paths_sha256(paths) != self.sha256 or paths[0] != self.first:
            where = f"; remove {self.plan_file} and run again" if self.plan_file else "; run again"
            raise ListChangedError(
                f"{self.lists[self.file]}, line {self.lineno}: the listed paths changed since the plan of this "
                f"extraction was made{where}"
            )
        return paths


@dataclass(frozen=True)
class ListPlan:
    """The spans of a listing cut into shards, its number of paths and their sha256 (joined by newlines)."""

    spans: list[ListSpan]
    n_inputs: int
    inputs_sha256: str


def stream_plan(list_files: Sequence[str], shard_size: int) -> ListPlan | None:
    """The listing of `list_files` cut into shards of `shard_size`, streamed (no path held), every listed file
    checked once (data.images.listed_kind); None when a line names a folder."""
    lists = tuple(list_files)
    spans: list[ListSpan] = []
    total, shard = PathsHash(), PathsHash()
    start: tuple[int, int, int, int, str] | None = None

    def close() -> None:
        if start is not None:
            spans.append(ListSpan(lists, *start[:4], shard.count, start[4], shard.hexdigest()))

    for index, list_file in enumerate(lists):
        for entry in iter_list(list_file):
            if stat.S_ISDIR(listed_kind(list_file, entry)):
                return None
            path = str(entry.path)
            if total.count % shard_size == 0:
                close()
                start, shard = (index, entry.offset, entry.place, entry.lineno, path), PathsHash()
            total.add(path)
            shard.add(path)
    close()
    return ListPlan(spans, total.count, total.hexdigest())


def _list_identity(list_file: str, hash_inputs: bool) -> list:
    try:
        st = os.stat(list_file)
    except OSError:
        return [list_file, None]
    ident: list = [os.path.abspath(list_file), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    if hash_inputs and stat.S_ISREG(st.st_mode):
        ident.append(sha256_file(list_file))
    return ident


def _from_saved(saved: Any, key: str, lists: tuple[str, ...], plan_file: str) -> ListPlan | None:
    """The plan a saved file holds, when it is one for `key` of a sound shape; None otherwise (planned again)."""
    try:
        if saved.get("format") != _FORMAT or saved.get("key") != key:
            return None
        if saved.get("sha256") != sha256_json({k: v for k, v in saved.items() if k != "sha256"}):
            return None  # damaged: any changed byte, the store's inputs hash included, means planning again
        spans = []
        for s in saved["spans"]:
            ints = {k: s[k] for k in ("file", "offset", "skip", "lineno", "count")}
            if not all(type(v) is int and v >= 0 for v in ints.values()) or s["file"] >= len(lists) or s["count"] < 1:
                return None
            if not isinstance(s["first"], str) or not isinstance(s["sha256"], str):
                return None
            spans.append(ListSpan(lists, **ints, first=s["first"], sha256=s["sha256"], plan_file=plan_file))
        n, sha = saved["n_inputs"], saved["inputs_sha256"]
        if type(n) is not int or n != sum(s.count for s in spans) or not isinstance(sha, str):
            return None
        return ListPlan(spans, n, sha)
    except (AttributeError, KeyError, TypeError):
        return None


def cached_plan(
    list_files: Sequence[str],
    shard_size: int,
    cache: Path,
    hash_inputs: bool = False,
    plan: Callable[[Sequence[str], int], ListPlan | None] = stream_plan,
) -> ListPlan | None:
    """`stream_plan`, saved in `cache`/.listing and read from there while the lists are unchanged. Parts that
    start together take turns: the first plans, the others wait for it and read its plan."""
    lists = tuple(list_files)
    key = sha256_json(
        {
            "inputs": list(lists),
            "cwd": os.getcwd(),
            "shard_size": shard_size,
            "lists": [_list_identity(f, hash_inputs) for f in lists],
        }
    )
    path = Path(cache) / CACHE_DIR / f"{key}.json"

    def saved() -> ListPlan | None:
        try:
            return _from_saved(load_json_file(path), key, lists, str(path))
        except (OSError, ValueError):
            return None

    found = saved()
    if found is not None:
        return found
    made_dirs = [d for d in (Path(cache), path.parent) if not d.exists()]  # the lock makes them
    made = None
    try:
        with folder_lock(path.with_suffix(""), "planned", "it waits for that process's plan", wait=True):
            found = saved()  # a part that held the lock before us planned it
            if found is not None:
                return found
            made = plan(lists, shard_size)  # None: a list names a folder, planned in memory by the caller
            if made is not None:
                spans = [{k: v for k, v in asdict(s).items() if k not in ("lists", "plan_file")} for s in made.spans]
                record = {"format": _FORMAT, "key": key, "n_inputs": made.n_inputs, "inputs_sha256": made.inputs_sha256}
                record = {**record, "spans": spans}
                atomic_write_json(path, {**record, "sha256": sha256_json(record)})
    finally:
        if not path.exists():  # nothing saved (a listed file missing, a folder named): no empty folder left
            for d in reversed(made_dirs):
                with contextlib.suppress(OSError):
                    d.rmdir()
    if made is None:
        return None
    return ListPlan([replace(s, plan_file=str(path)) for s in made.spans], made.n_inputs, made.inputs_sha256)
