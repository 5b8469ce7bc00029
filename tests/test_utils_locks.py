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


def test_a_waiting_lock_blocks_until_the_holder_lets_go_then_holds_it(tmp_path):
    folder = tmp_path / "store"
    p = _holder(folder)
    released = []

    def let_go():
        time.sleep(0.5)
        released.append(time.monotonic())
        p.terminate()

    import threading

    threading.Thread(target=let_go, daemon=True).start()
    try:
        with folder_lock(folder, wait=True):  # no FolderLockedError: it waits for the holder
            got = time.monotonic()
            assert released and got >= released[0]
    finally:
        p.kill()
        p.wait()


def test_the_manifest_lock_is_kept_through_a_nested_use_in_one_process(tmp_path):
    # before: each use opened and closed its own descriptor of .manifest.lock, and closing any descriptor of a
    # file drops every POSIX record lock the process holds on it - the inner exit unlocked the outer block
    from vggfeat.features.shard_files import MANIFEST_LOCK, manifest_lock

    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)\n"
        "try:\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('free')\n"
        "except OSError:\n"
        "    print('held')\n"
    )

    def state():
        out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / MANIFEST_LOCK)], capture_output=True)
        return out.stdout.decode().strip()

    with manifest_lock(tmp_path):
        assert state() == "held"
        with manifest_lock(tmp_path):
            pass
        assert state() == "held"
