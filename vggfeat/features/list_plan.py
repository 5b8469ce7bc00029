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
A list line that names a folder makes the plan the in-memory one (`None` here): a folder's files are only known
by walking it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vggfeat.errors import InputError
from vggfeat.utils.files import (
    NotRegularFileError,
    atomic_write_json,
    file_kind,
    load_json_file,
    open_regular,
    sha256_file,
    sha256_json,
)
from vggfeat.utils.locks import folder_lock

log = logging.getLogger(__name__)
CACHE_DIR = ".listing"  # in the store: saved plans of its @list inputs
_FORMAT = 1


class _NoPlan(Exception):
    """A list names a folder: no streamed plan."""


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
        """The shard's paths, read from the lists; ListChangedError unless they hash to `sha256`."""
        paths: list[str] = []
        digest = hashlib.sha256()
        for index in range(self.file, len(self.lists)):
            offset, skip = (self.offset, self.skip) if index == self.file else (0, 0)
            for path in _entries(self.lists[index], offset, skip):
                digest.update(b"\n" if paths else b"")
                digest.update(_encode(path))
                paths.append(path)
                if len(paths) == self.count:
                    break
            if len(paths) == self.count:
                break
        if len(paths) != self.count or digest.hexdigest() != self.sha256 or paths[0] != self.first:
            where = f"; remove {self.plan_file} and run again" if self.plan_file else "; run again"
            raise ListChangedError(
                f"{self.lists[self.file]}, line {self.lineno}: the listed paths changed since the plan of this "
                f"extraction was made{where}"
            )
        return tuple(paths)


@dataclass(frozen=True)
class ListPlan:
    """The spans of a listing cut into shards, its number of paths and their sha256 (joined by newlines)."""

    spans: list[ListSpan]
    n_inputs: int
    inputs_sha256: str


def _encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _open_list(list_file: str) -> Any:
    try:
        return open_regular(list_file)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such list file: {list_file}") from None
    except NotRegularFileError as e:  # a FIFO would block the read until a writer comes
        raise InputError(f"list file {e}; put the file itself there") from None
    except OSError as e:
        raise InputError(f"list file {list_file} is unreadable ({e.strerror or e})") from None


def _lines(list_file: str, offset: int = 0, skip: int = 0) -> Iterator[tuple[int, int, str]]:
    """(byte offset of the physical line, entry index on it, the entry stripped) for every line of the list from
    byte `offset` on (its first `skip` entries left out), as str.splitlines cuts the decoded file."""
    with _open_list(list_file) as f:
        f.seek(offset)
        for raw in f:  # physical lines, cut at b"\n"; a multi-byte UTF-8 character never holds that byte
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{list_file}: not a text file (byte {offset + e.start} is not UTF-8); an @list holds one "
                    "image path per line"
                ) from None
            for k, line in enumerate(text.splitlines()):
                if k >= skip:
                    yield offset, k, line.strip()
            offset += len(raw)
            skip = 0


def _resolve(parent: Path, line: str) -> Path:
    """A listed path: relative ones are taken from the list's folder (as data.images reads an @list)."""
    return Path(line) if os.path.isabs(line) else parent / line


def _entries(list_file: str, offset: int, skip: int) -> Iterator[str]:
    """The paths listed from byte `offset` on (blank lines and # comments left out), unchecked."""
    parent = Path(list_file).parent
    for _, _, line in _lines(list_file, offset, skip):
        if line and not line.startswith("#"):
            yield str(_resolve(parent, line))


def _checked_entries(list_file: str) -> Iterator[tuple[int, int, int, str] | None]:
    """(offset, entry index, line number, path) for each listed path, each checked once: a missing one is a
    FileNotFoundError naming the line; a folder yields None (the caller plans in memory); a FIFO or a device
    is an InputError."""
    parent = Path(list_file).parent
    for lineno, (offset, k, line) in enumerate(_lines(list_file), start=1):
        if not line or line.startswith("#"):
            continue
        path = _resolve(parent, line)
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(f"{list_file}, line {lineno}: no such file {line!r}") from None
        except OSError as e:
            raise InputError(f"{list_file}, line {lineno}: {path} is unreadable ({e.strerror or e})") from None
        if stat.S_ISDIR(mode):
            yield None
            return
        if not stat.S_ISREG(mode):  # refused before any decoder (CPU or GPU) could open it
            raise InputError(f"{list_file}, line {lineno}: {path} is {file_kind(mode)}, not an image file or folder")
        yield offset, k, lineno, str(path)


def stream_plan(list_files: Sequence[str], shard_size: int) -> ListPlan | None:
    """The listing of `list_files` cut into shards of `shard_size`, streamed (no path held); None when a line
    names a folder."""
    lists = tuple(list_files)
    spans: list[ListSpan] = []
    total = hashlib.sha256()
    n = 0
    start: tuple[int, int, int, int, str] | None = None
    shard = hashlib.sha256()
    count = 0

    def close() -> None:
        if start is not None:
            file, offset, skip, lineno, first = start
            spans.append(ListSpan(lists, file, offset, skip, lineno, count, first, shard.hexdigest()))

    for index, list_file in enumerate(lists):
        for entry in _checked_entries(list_file):
            if entry is None:
                return None
            offset, k, lineno, path = entry
            if n % shard_size == 0:
                close()
                start, shard, count = (index, offset, k, lineno, path), hashlib.sha256(), 0
            data = _encode(path)
            total.update(b"\n" if n else b"")
            total.update(data)
            shard.update(b"\n" if count else b"")
            shard.update(data)
            n += 1
            count += 1
    close()
    return ListPlan(spans, n, total.hexdigest())


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
    fix = "it waits for that process's plan"
    made_dirs = [d for d in (Path(cache), path.parent) if not d.exists()]  # the lock makes them
    try:
        with folder_lock(path.with_suffix(""), "planned", fix, wait=True):
            found = saved()  # a part that held the lock before us planned it
            if found is not None:
                return found
            made = plan(lists, shard_size)
            if made is None:  # a folder named: planned in memory by the caller, nothing saved
                raise _NoPlan
            spans = [{k: v for k, v in asdict(s).items() if k not in ("lists", "plan_file")} for s in made.spans]
            record = {"format": _FORMAT, "key": key, "n_inputs": made.n_inputs, "inputs_sha256": made.inputs_sha256}
            record = {**record, "spans": spans}
            atomic_write_json(path, {**record, "sha256": sha256_json(record)})
    except BaseException as e:  # a list naming a missing file: no empty output folder is left behind for it
        for d in reversed(made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(e, _NoPlan):
            return None
        raise
    return ListPlan([replace(s, plan_file=str(path)) for s in made.spans], made.n_inputs, made.inputs_sha256)
