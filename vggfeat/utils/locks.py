"""One writer per output folder: a lock file beside the folder, locked for the whole run.

Two `vggfeat extract` runs into one store, two probes filling one feature cache or two `index build`s into
one folder would mix their results into a folder whose manifest describes only one of them.
The lock is a POSIX record lock (fcntl) on `.NAME.lock` next to the folder: it dies with its process, so a
run killed with kill -9 never blocks the next one - not even while its forked loader workers linger, since
unlike flock a record lock is not inherited by children. A second writer stops at once with one line naming the
holder (process id and host) instead of waiting: what it would write depends on what the first finishes.
A folder in a parent we may not write keeps its lock inside, as `.vggfeat.lock`. On Windows (no fcntl)
there is no lock: run one writer per folder there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from vggfeat.errors import VggfeatError

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

_held: dict[str, int] = {}  # resolved folder -> its lock file's descriptor, for locks this process holds


class FolderLockedError(VggfeatError):
    """Another live process is writing the folder (it holds the folder's lock)."""


INSIDE_LOCK = ".vggfeat.lock"  # the lock file inside the folder, when its parent is not writable


def lock_path(folder: str | Path) -> Path:
    """`.NAME.lock` beside `folder`: outside it, so a folder that is replaced whole keeps its lock."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name or 'root'}.lock"


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    fields = os.read(fd, 512).decode("utf-8", "replace").split()
    if len(fields) >= 2:
        return f"process {fields[0]} (host {fields[1]})"
    return "another process"  # it has the lock but has not written its name yet


def _acquire(path: Path, folder: Path, what: str, fix: str, wait: bool) -> int:
    assert fcntl is not None  # the caller returns before locking where there is no fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = _holder(fd)
            os.close(fd)  # (closing any descriptor of the file drops this process's record locks: it holds none)
            raise FolderLockedError(f"{folder} is being {what} by {holder}; {fix}") from None
        # the previous holder unlinks the file on release: if it did so between our open and our lock, we
        # locked a file nobody else will open - start again on the path's current file
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(
        fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode()
    )
    return fd


@contextlib.contextmanager
def folder_lock(
    folder: str | Path,
    what: str = "written",
    fix: str = "wait for it to finish, or choose another output folder",
    enabled: bool = True,
    wait: bool = False,
) -> Iterator[None]:
    """Hold `folder`'s writer lock for the block; raise FolderLockedError at once if another process holds it,
    or with `wait` block until it lets go (the parts of one job taking turns at a shared step).

    Re-entrant within a process (a probe's cache extraction inside the probe's own lock). `enabled=False`
    is a no-op, for the ranks of a torchrun job other than rank 0 (one job is one writer).
    """
    if not enabled or fcntl is None:
        yield
        return
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held:
        yield
        return
    path = lock_path(folder)
    try:
        fd = _acquire(path, folder, what, fix, wait)
    except OSError as e:
        # a folder we may write inside a parent we may not (an admin-made /scratch/USER): lock inside it
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not folder.is_dir():
            raise
        path = folder / INSIDE_LOCK
        fd = _acquire(path, folder, what, fix, wait)
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiter that opened the old file retries (see _acquire)
        os.close(fd)
