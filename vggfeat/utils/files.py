"""Crash-safe file writing and hashing (a file either appears whole or not at all), and the bounded readers of
files a user or a dataset gives: only a regular file is read, so a FIFO or a device named as input is refused by
name instead of blocking the command forever."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

from vggfeat.errors import DatasetError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a regular file: a FIFO or a device is refused (NotRegularFileError), never waited on."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """The sha256 of `obj` as key-sorted JSON: one recipe for every recorded hash of settings or identities."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def plain_file_mode() -> int:
    """The mode `open(path, "w")` would give a new file: 0666 minus the process umask."""
    mask = os.umask(0)  # umask can only be read by setting it; restore at once
    os.umask(mask)
    return 0o666 & ~mask


def give_plain_permissions(path: str | Path) -> None:
    """Writers that create files 0600 (safetensors' save_file) would hide results from a team's other users."""
    os.chmod(path, plain_file_mode())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, fsync, then rename over it (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        give_plain_permissions(tmp)
        os.replace(tmp, path)
    except OSError as e:  # a full disk: leave no half-written temporary behind
        tmp.unlink(missing_ok=True)
        if e.filename is None and e.errno is not None:  # write, flush and fsync name no file: name the result
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:  # Ctrl-C: the same
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    # surrogateescape: a file name that is not UTF-8 (Python holds its bytes as surrogates) is written back as
    # those bytes rather than failing; reports show such names through `display_name` instead
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def display_name(name: str) -> str:
    """A file or class name as text any terminal, markdown file or plot can show: the bytes of a name that is not
    UTF-8 (held by Python as surrogates, os.fsdecode) appear as \\xNN escapes; any other name is unchanged."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def atomic_write_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG, rendered in memory and written as atomic_write_bytes writes (named on a
    full disk, plain permissions, no half-written file); the figure is closed."""
    import io

    import matplotlib.pyplot as plt  # deferred: only the reports that draw need matplotlib

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as JSON. NaN and infinity are refused (ValueError): json.dumps would write `NaN`, which is not JSON,
    and a result that is not a number must be handled where it arises, not stored as one. Strings are written
    ASCII-escaped, so a file name that is not UTF-8 is recorded as its surrogates and reads back the same."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def parse_json(text: str | bytes) -> Any:
    """json.loads, where text nested deeper than its recursion allows ('[' * 100000, 200 kB) is a ValueError like
    any other text that is not JSON, so every reader's one-line error covers it."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested deeper than the JSON reader allows") from None


def read_json(path: Path, error: type[Exception], fix: str) -> Any:
    """JSON of `path`, read bounded (`read_dataset_text`: a FIFO or a folder is refused, never waited on); a file
    that does not parse raises `error` naming it, with `fix` (what to run)."""
    text = read_dataset_text(Path(path), "JSON file", error)
    try:
        return parse_json(text)
    except ValueError as e:
        raise error(f"{path}: not valid JSON ({e}); {fix}") from None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(new: str | Path, dst: str | Path) -> Path:
    """Put the finished folder `new` at `dst`, replacing the folder there: readers see the old folder or the
    new one, never a mix. `new` must be a sibling of `dst` (same file system). Where the system cannot swap
    two folders in one step, the old one is renamed aside first; a crash in that instant leaves it as
    `.DST.old-PID` beside `dst`."""
    new, dst = Path(new), Path(dst)
    if not dst.exists():
        os.rename(new, dst)
        return dst
    if _exchange(new, dst):
        old = new  # after the swap `new` names the old folder
    else:
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        os.rename(new, dst)
    import shutil

    shutil.rmtree(old, ignore_errors=True)
    return dst


def file_kind(mode: int) -> str:
    """'a FIFO', 'a folder', ... for a stat mode: what a path that should be a regular file is instead."""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


class NotRegularFileError(OSError):
    """A path that should be a regular file is a FIFO, a device, a folder..."""


def open_regular(path: str | Path) -> io.BufferedReader:
    """`path` opened for binary reading, when it is a regular file. It is opened without blocking and checked on
    the open descriptor, so a FIFO (a plain open would wait for a writer) or a device is refused at once with a
    NotRegularFileError naming it, even if it replaced a regular file after an earlier check."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path} is {file_kind(mode)}, not a regular file")
        return open(fd, "rb")  # noqa: SIM115 (the caller's to close; O_NONBLOCK changes nothing for a regular file)
    except BaseException:
        os.close(fd)
        raise


def load_json_file(path: str | Path) -> Any:
    """The JSON in file `path`, opened without blocking (`open_regular`): an OSError when it is missing, a FIFO or
    unreadable, a ValueError when it does not parse - for bookkeeping files a caller treats as absent or damaged."""
    with open_regular(path) as f:
        return parse_json(f.read())


def check_regular(path: Path, what: str = "file", where: str = "", error: type[Exception] = DatasetError) -> None:
    """An `error` unless `path` (symlinks followed) is a regular file: missing, or a FIFO, device or folder
    that a reader would block on or misread. `what` names it ("image '0001'"); `where` (a list file and line)
    prefixes the message."""
    prefix = f"{where}: " if where else ""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{prefix}{what} not found: no file {path}") from None
    except OSError as e:
        raise error(f"{prefix}{what}: {path} is unreadable ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{prefix}{what}: {path} is {file_kind(mode)}, not a regular file; put the file there")


def read_dataset_file(path: Path, what: str = "file", error: type[Exception] = DatasetError) -> bytes:
    """The bytes of a file a user or a dataset gives, read only when it is a regular file. It is opened without
    blocking and checked on the open descriptor, so a FIFO (which would block a plain open or read until a
    writer comes) or a device is refused at once, even if it replaced a regular file after a check. Every
    problem is an `error` naming the file."""
    try:
        with open_regular(path) as f:
            return f.read()
    except FileNotFoundError:
        raise error(f"missing {what} {path}") from None
    except NotRegularFileError as e:  # "PATH is a FIFO, not a regular file"
        raise error(f"{what} {e}; put the file itself there") from None
    except OSError as e:
        raise error(f"{what} {path} is unreadable ({e.strerror or e})") from None


def read_dataset_text(path: Path, what: str = "file", error: type[Exception] = DatasetError) -> str:
    """`read_dataset_file` decoded as UTF-8; a byte that is not UTF-8 is an `error` naming the file and line."""
    data = read_dataset_file(path, what, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(
            f"{path}, line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text; save the {what} as UTF-8 (or ASCII)"
        ) from None
