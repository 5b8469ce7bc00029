"""Webdataset-style tar shards as input: shard patterns ("shards/{000000..000099}.tar", globs), and samples read
by streaming each tar once, front to back (no unpacking, no random access), with every kind of damage - a
truncated or corrupt tar, a member that is not a file, a sample without its image - reported as a `TarProblem`
instead of an exception, so one bad shard never stops a corpus run.
"""

from __future__ import annotations

import glob
import io
import lzma
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vggfeat.errors import InputError
from vggfeat.utils.files import NotRegularFileError, open_regular

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_MEMBER_BYTES = 256 << 20  # a member (and a sample's members together) larger than this is refused unread
MAX_HEADER_BYTES = 8 << 10  # pax / GNU long-name headers: tarfile reads them whole and parses them with regexes
MAX_EXPANSION = 1_000_000  # paths one brace pattern may expand to
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's: the key ends at the basename's first dot
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")
# What a damaged stream raises from tarfile or its decompressors.
_DAMAGE = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError, OverflowError)


@dataclass(frozen=True)
class TarSample:
    key: str  # webdataset __key__: member path up to the first dot of the basename
    url: str  # the tar file's path as given
    image_member: str  # member name of the image
    data: bytes  # the image's compressed bytes
    extras: dict[str, bytes] = field(default_factory=dict)  # the sample's other members by extension ("cls", "json")


@dataclass(frozen=True)
class TarProblem:
    key: str  # the sample key ("" when unknown)
    url: str
    reason: str


# ---------------------------------------------------------------------------------------------------- patterns


def _alternatives(body: str, pattern: str) -> list[str]:
    """The strings a brace body stands for: a range "000..099" (zero-padded, optional step) or a list "a,b"."""
    m = _RANGE.fullmatch(body)
    if m:
        a, b = int(m[1]), int(m[2])
        step = abs(int(m[3] or 1)) or 1
        if abs(b - a) // step + 1 > MAX_EXPANSION:
            raise InputError(f"shard pattern {pattern!r}: {{{body}}} names over {MAX_EXPANSION} files")
        padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (m[1], m[2]))
        width = max(len(m[1]), len(m[2])) if padded else 0
        values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        return [str(v).zfill(width) for v in values]
    parts, depth, start = [], 0, 0
    for i, c in enumerate(body):
        depth += (c == "{") - (c == "}")
        if c == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    if not parts:
        raise InputError(
            f"shard pattern {pattern!r}: {{{body}}} is neither a range like {{000000..000099}} nor a list like {{a,b}}"
        )
    return [*parts, body[start:]]


def expand_braces(pattern: str, *, _whole: str | None = None) -> list[str]:
    """Webdataset's (and bash's) brace notation: "s/{000..002}.tar" -> s/000.tar, s/001.tar, s/002.tar."""
    whole = _whole or pattern
    depth, start = 0, -1
    for i, c in enumerate(pattern):
        if c == "{":
            start = i if depth == 0 else start
            depth += 1
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                head, tail = pattern[:start], pattern[i + 1 :]
                out: list[str] = []
                for alt in _alternatives(pattern[start + 1 : i], whole):
                    out.extend(head + x for x in expand_braces(alt + tail, _whole=whole))
                    if len(out) > MAX_EXPANSION:
                        raise InputError(f"shard pattern {whole!r} names over {MAX_EXPANSION} files")
                return out
        elif c == "}":
            raise InputError(f"shard pattern {whole!r}: a '}}' without its '{{'")
    if depth:
        raise InputError(f"shard pattern {whole!r}: a '{{' without its '}}'")
    return [pattern]


def _check_regular(paths: list[str], pattern: str) -> None:
    missing = []
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            missing.append(f"{path} ({e.strerror})")
            continue
        if not stat.S_ISREG(mode):
            raise InputError(f"shard {path} (from {pattern!r}) is not a regular file; give tar files")
    if missing:
        raise InputError(
            f"shard pattern {pattern!r}: {len(missing)} of the {len(paths)} files it names are missing, first"
            f" {missing[0]}; check the pattern"
        )


def expand_shard_patterns(patterns: Sequence[str]) -> list[str]:
    """The tar files that `patterns` name: brace notation and shell globs, each pattern's files sorted, the
    patterns in the given order, a file named twice kept once. A pattern that matches nothing, or a path that is
    missing or not a regular file, is an InputError naming it."""
    if isinstance(patterns, str):
        patterns = [patterns]
    out: dict[str, None] = {}
    for pattern in patterns:
        found: set[str] = set()
        for candidate in expand_braces(os.path.expanduser(str(pattern))):
            if glob.has_magic(candidate):
                matches = glob.glob(candidate, recursive=True)
                if not matches:
                    raise InputError(f"shard pattern {pattern!r}: no file matches {candidate}")
                found.update(matches)
            else:
                found.add(candidate)
        paths = sorted(found)
        _check_regular(paths, str(pattern))
        out.update(dict.fromkeys(paths))
    return list(out)


# ---------------------------------------------------------------------------------------------------- reading


def split_key(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name as webdataset groups them ("a/b.seg.png" -> ("a/b", "seg.png")), the
    extension lower-cased; None for a name without an extension."""
    m = _KEY_EXT.match(name)
    return (m[1], m[2].lower()) if m and m[2] else None


def _watched_tarinfo(ends: list[BaseException]) -> type[tarfile.TarInfo]:
    """A TarInfo class that records why header reading stopped (tarfile ends iteration silently on a truncated or
    invalid header past the first), and refuses oversized pax / long-name headers before tarfile reads them.
    The header errors and the _proc_* hooks are CPython's tarfile internals, which typeshed does not declare."""

    class WatchedTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tf: tarfile.TarFile) -> WatchedTarInfo:
            try:
                return super().fromtarfile(tf)
            except tarfile.HeaderError as e:
                ends.append(e)
                raise

        def _proc_gnulong(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
            self._check_header_size()
            return super()._proc_gnulong(tf)  # type: ignore[misc]

        def _proc_pax(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
            self._check_header_size()
            return super()._proc_pax(tf)  # type: ignore[misc]

        def _check_header_size(self) -> None:
            if not 0 <= self.size <= MAX_HEADER_BYTES:
                raise tarfile.InvalidHeaderError(f"an extended header of {self.size} bytes")  # type: ignore[attr-defined]

    return WatchedTarInfo


@dataclass
class _Group:
    """The members of one sample, gathered until the key changes."""

    key: str
    members: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # ext -> (member name, data)
    nbytes: int = 0
    reason: str = ""

    def fail(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.members.clear()  # nothing of a refused sample stays in memory

    def finish(self, url: str, image_exts: frozenset[str]) -> TarSample | TarProblem:
        if self.reason:
            return TarProblem(self.key, url, self.reason)
        images = [ext for ext in self.members if ext in image_exts]
        if len(images) != 1:
            what = "no image member" if not images else "two image members"
            names = ", ".join(name for name, _ in self.members.values())
            return TarProblem(self.key, url, f"{what} ({names}; images are {', '.join(sorted(image_exts))})")
        name, data = self.members[images[0]]
        extras = {ext: d for ext, (_, d) in self.members.items() if ext != images[0]}
        return TarSample(self.key, url, name, data, extras)


class _EndOfFile:
    """The tar file as tarfile's stream reader sees it. That reader skips a member's data by reading it 10 KiB at a
    time, on past the file's end: a valid header declaring 10**15 bytes would keep it looping for days over an
    empty read. A read past the end is refused once tarfile has asked a few times (a tar, whole or cut short, asks
    once at most), so skipping takes time linear in what the file holds, compressed or not."""

    READS_PAST_END = 8

    def __init__(self, f: io.BufferedReader) -> None:
        self.f, self.past_end = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if not data and size:
            self.past_end += 1
            if self.past_end > self.READS_PAST_END:
                raise tarfile.ReadError("unexpected end of data")
        return data


def _end_reason(ends: list[BaseException], offset: int, done: int) -> str | None:
    """Why the member headers stopped at byte `offset`: None for the end-of-archive blocks."""
    last = ends[-1] if ends else None
    if last is None or isinstance(last, tarfile.EOFHeaderError):  # type: ignore[attr-defined]
        return None
    if isinstance(last, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):  # type: ignore[attr-defined]
        return f"truncated tar after {done} samples: it ends at byte {offset} without the end-of-archive blocks"
    return f"damaged tar after {done} samples: invalid member header at byte {offset} ({last})"


def _damage_reason(e: BaseException, member: tarfile.TarInfo | None, done: int) -> str:
    """Why reading stopped at an exception. tarfile's "unexpected end of data" comes from reading or skipping the
    data of the last member it returned: that member's data runs past the end of the file."""
    if "unexpected end of data" in str(e) and member is not None:
        return (
            f"truncated tar after {done} samples: member {member.name} declares {member.size} bytes,"
            " more than the file holds"
        )
    kind = "truncated" if "unexpected end" in str(e) else "damaged"
    return f"{kind} tar after {done} samples: {type(e).__name__}: {e}"


def iter_tar_samples(
    url: str | os.PathLike,
    image_exts: Sequence[str] = IMAGE_EXTS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[TarSample | TarProblem]:
    """Every sample of a webdataset tar in tar order: consecutive members with one key form a sample, which has
    exactly one image member (by extension, case-insensitive). Streams the file once; memory holds one sample.

    A bad sample (no or two images, a member that is a link or device, members together over `max_member_bytes`
    - such a member is skipped unread - or two members of one name) is a TarProblem and reading goes on. A
    truncated or corrupt tar yields the samples before the damage, then one TarProblem naming the sample it was
    in, and stops. A path that is not a regular file (a FIFO would block forever) is one TarProblem, checked on
    the opened descriptor."""
    url = os.fspath(url)
    exts = frozenset(e.lower().lstrip(".") for e in image_exts)
    try:
        f = open_regular(url)  # a FIFO opens without waiting for a writer, and is refused
    except NotRegularFileError:
        yield TarProblem("", url, "not a regular file (a FIFO, device or folder); give tar files")
        return
    except OSError as e:
        yield TarProblem("", url, f"cannot open the tar: {e.strerror}")
        return
    with f:
        yield from _read_stream(f, url, exts, max_member_bytes)


def _read_stream(
    f: io.BufferedReader, url: str, exts: frozenset[str], max_member_bytes: int
) -> Iterator[TarSample | TarProblem]:
    ends: list[BaseException] = []
    group: _Group | None = None
    done = 0  # samples yielded
    member: tarfile.TarInfo | None = None  # the last member read
    try:
        # the stream reader only reads; typeshed asks every fileobj for write, seek and tell too
        tf: tarfile.TarFile = tarfile.open(fileobj=_EndOfFile(f), mode="r|*", tarinfo=_watched_tarinfo(ends))  # type: ignore[call-overload]
    except _DAMAGE as e:
        yield TarProblem("", url, f"not a readable tar: {e}")
        return
    while True:
        try:
            member = tf.next()
            # tarfile keeps every header it read (.members, not in typeshed); a long tar would grow without bound
            tf.members.clear()  # type: ignore[attr-defined]
            if member is None:
                reason = _end_reason(ends, tf.offset, done)
                break
            parsed = split_key(member.name)
            if member.isdir() or parsed is None and _is_meta(member.name):
                continue  # folders and webdataset's __meta__ files belong to no sample
            if parsed is None:
                yield TarProblem(member.name, url, f"member {member.name} has no extension, so no sample key")
                continue
            key, ext = parsed
            if group is None or key != group.key:
                if group is not None:
                    out = group.finish(url, exts)
                    done += isinstance(out, TarSample)
                    yield out
                group = _Group(key)
            if not member.isreg() or member.type == tarfile.GNUTYPE_SPARSE:
                kind = "link" if member.issym() or member.islnk() else "special or sparse file"
                group.fail(f"member {member.name} is a {kind}, not a regular file (never followed)")
            elif ext in group.members:
                group.fail(f"two members named {member.name}")
            elif not 0 <= member.size <= max_member_bytes - group.nbytes:
                group.fail(
                    f"member {member.name} of {member.size} bytes takes the sample over the {max_member_bytes}-byte"
                    " limit (max_member_bytes)"
                )
            elif not group.reason:
                reader = tf.extractfile(member)
                assert reader is not None  # a regular member (checked above) always has data
                data = reader.read()
                if len(data) != member.size:
                    raise tarfile.ReadError("unexpected end of data")
                group.members[ext] = (member.name, data)
                group.nbytes += len(data)
        except _DAMAGE as e:
            reason = _damage_reason(e, member, done)
            break
    if reason is None:
        if group is not None:
            yield group.finish(url, exts)
        return
    yield TarProblem(group.key if group else "", url, reason)


def _is_meta(name: str) -> bool:
    return "/" not in name and name.startswith("__") and name.endswith("__")


# ---------------------------------------------------------------------------------------------------- writing


def write_tar_shard(path: str | os.PathLike, samples: Iterable[tuple[str, dict[str, bytes]]]) -> None:
    """A webdataset tar of (key, {extension: bytes}) samples, members in the given order, written under a
    temporary name and renamed into place (a reader never sees half a shard)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    previous = None
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for key, members in samples:
                    if not key or "." in key.rsplit("/", 1)[-1] or key == previous:
                        raise InputError(
                            f"sample key {key!r} for {path}: keys are non-empty, have no dot after the last '/', and"
                            " differ from the previous sample's"
                        )
                    previous = key
                    for ext, data in members.items():
                        if not ext or "/" in ext:
                            raise InputError(f"sample {key!r}: extension {ext!r} must be non-empty without '/'")
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: the same bytes every run
                        tf.addfile(info, io.BytesIO(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
