"""Writer locks: a second writer of a folder stops with one line naming the holder; a holder
killed with kill -9 leaves no lock behind. Real processes, since the lock excludes processes, not threads."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from vggfeat.utils.locks import FolderLockedError, folder_lock, lock_path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl on Windows (documented: no lock there)")

HOLD = """
import os, sys, time
from vggfeat.utils.locks import folder_lock
with folder_lock(sys.argv[1]):
    if len(sys.argv) > 2 and os.fork() == 0:  # a loader worker forked while the lock is held, outliving us
        time.sleep(60)
        os._exit(0)
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(folder, *extra):
    """A process holding `folder`'s lock (returns once it holds it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", HOLD, str(folder), *extra]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_stops_naming_the_holder_then_gets_the_lock_after_it_ends(tmp_path):
    folder = tmp_path / "store"
    p = _holder(folder)
    try:
        with pytest.raises(FolderLockedError, match=rf"store is being written by process {p.pid} \(host "):
            with folder_lock(folder):
                pass
    finally:
        p.terminate()
        p.wait()
    with folder_lock(folder):  # a clean exit released it
        assert lock_path(folder).is_file()
    assert not lock_path(folder).exists()  # and the last holder removes the file


@pytest.mark.parametrize("child", [False, True], ids=["alone", "with a forked child"])
def test_a_holder_killed_with_kill_9_does_not_block(tmp_path, child):
    folder = tmp_path / "store"
    p = _holder(folder, *(["fork"] if child else []))
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert lock_path(folder).is_file()  # the file stays, with the dead process's name in it ...
    start = time.perf_counter()
    try:
        with folder_lock(folder):  # ... but the kernel dropped its lock with the process (children hold none)
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the orphaned child, if any
    assert time.perf_counter() - start < 1


def test_reentrant_in_one_process_and_disabled_is_a_no_op(tmp_path):
    with folder_lock(tmp_path / "a"):
        with folder_lock(tmp_path / "a"):  # a probe's cache extraction inside the probe's own lock
            pass
        assert lock_path(tmp_path / "a").is_file()  # the inner exit did not release it
    with folder_lock(tmp_path / "b", enabled=False):
        assert not lock_path(tmp_path / "b").exists()


def test_a_folder_in_a_parent_we_may_not_write_is_locked_inside(tmp_path, monkeypatch):
    import errno

    from vggfeat.utils import locks

    folder = tmp_path / "store"
    folder.mkdir()
    real_open = os.open

    missing = tmp_path / "missing"

    def refuse_beside(path, *a, **k):  # as in a read-only parent (root ignores chmod, so simulate it)
        if os.fspath(path) in (str(lock_path(folder)), str(lock_path(missing))):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(locks.os, "open", refuse_beside)
    with folder_lock(folder):
        assert (folder / locks.INSIDE_LOCK).is_file() and not lock_path(folder).exists()
    assert not (folder / locks.INSIDE_LOCK).exists()
    with pytest.raises(PermissionError):  # a folder that does not exist cannot hold it: the CLI's one line
        with folder_lock(missing):
            pass
