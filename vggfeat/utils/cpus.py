"""How many CPUs this process may really use, and how compute threads and loader workers share them.

A cluster node, a container or a CI runner gives a process fewer CPUs than the machine has: an affinity mask
(taskset, SLURM's cpusets) and a CFS quota (cgroup `cpu.max`, or v1 `cpu.cfs_quota_us`). Sizing threads from
`os.cpu_count()` there oversubscribes the cores, and OpenMP threads that spin at their barriers collapse when
another process holds the core they wait for. Every command that computes sizes itself here, once.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# loader workers run at this niceness: when they and the compute threads want the same core, compute wins
# (on a CPU the net is >90% of the work; a worker only has to stay a few images ahead)
WORKER_NICE = 10
# sleep at OpenMP barriers instead of spinning (libgomp and Intel's runtime): a spinning thread burns the slice
# a descheduled sibling needs, which is what turned a 2.4x speed-up into 0.8x on a shared machine
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period, e.g. 1.5), or None without one.

    cgroup v2: `cpu.max` ("max 100000" or "150000 100000") in the process's group and its parents;
    cgroup v1: `cpu.cfs_quota_us` (-1: none) / `cpu.cfs_period_us` in the cpu controller's group. The
    smallest quota on the way up to the root binds."""
    v2, v1 = None, None
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            v1 = parts[2]
    limits: list[float] = []
    if v2 is not None:
        for group in _ancestors(root, v2):
            text = _read(group / "cpu.max")
            if text and not text.startswith("max"):
                quota, _, period = text.partition(" ")
                limits.append(int(quota) / int(period or 100000))
    for base in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        if v1 is None or not base.is_dir():
            continue
        for group in _ancestors(base, v1):
            quota_us, period_us = _read(group / "cpu.cfs_quota_us"), _read(group / "cpu.cfs_period_us")
            if quota_us and period_us and int(quota_us) > 0 and int(period_us) > 0:
                limits.append(int(quota_us) / int(period_us))
        break
    return min(limits) if limits else None


def _ancestors(base: Path, group: str) -> list[Path]:
    """base/group and each parent folder up to base (a container sees its own group as the root)."""
    parts = [p for p in group.strip("/").split("/") if p]
    return [base.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]


def usable_cpus(affinity: set[int] | None = None, quota: float | None = -1.0) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up: a quota of 1.5
    runs two threads at 75%). `affinity` and `quota` are for tests; by default they are read from the system."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    n = max(1, len(affinity))
    if quota == -1.0:
        quota = cgroup_cpu_limit()
    if quota is not None and quota > 0:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return n


@dataclass(frozen=True)
class CpuShare:
    cpus: int  # CPUs this process may use
    threads: int  # torch compute threads in this process
    workers: int  # loader processes (each single-threaded, niced below the compute threads)


def share_cpus(workers: int, device_type: str = "cpu", cpus: int | None = None) -> CpuShare:
    """Compute threads and loader workers for `cpus` CPUs (default: `usable_cpus()`), `workers` asked for.

    On a GPU the net runs elsewhere: one host thread (two from 8 CPUs on) feeds it and the other CPUs decode.
    On the CPU the net is nearly all the work (decoding and rescaling are about 2% of a VGG-16 extraction), and
    a worker process on a core the compute threads use makes them wait for it at every barrier: on 2 cores one
    niced worker cost 20% of an extraction. So below 8 CPUs images decode in the computing process between
    batches (no worker), and from 8 on one worker per 8 CPUs runs on a core of its own."""
    cpus = usable_cpus() if cpus is None else max(1, cpus)
    workers = max(0, workers)
    if device_type == "cuda":
        threads = 1 if cpus < 8 else 2
        return CpuShare(cpus, threads, min(workers, max(1, cpus - threads)))
    loader = min(workers, cpus // 8)
    return CpuShare(cpus, cpus - loader, loader)


def quiet_env(environ: dict | None = None, cpus: int | None = None) -> dict[str, str]:
    """Set passive OpenMP waiting and thread counts for a process about to import torch; the user's own
    settings win. Returns what was set. Has no effect on a torch already imported (its runtime has read them)."""
    env = os.environ if environ is None else environ
    cpus = usable_cpus() if cpus is None else cpus
    wanted = {**PASSIVE_WAIT, **dict.fromkeys(THREAD_VARS, str(cpus))}
    changed = {k: v for k, v in wanted.items() if k not in env}
    env.update(changed)
    return changed


def configure_threads(threads: int) -> None:
    """torch's intra-op threads for this process (the inter-op pool, when it has not started yet, to 1:
    inference and training steps here are single graphs, and a second pool only contends)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        if torch.get_num_interop_threads() > 1:
            torch.set_num_interop_threads(1)
    except RuntimeError:  # already in use: it can be set once, before the first inter-op work
        pass


def prepare_process(workers: int = 0, device_type: str = "cpu") -> CpuShare:
    """Size this process for a command that computes: before torch is imported, passive waiting and the
    thread count go to the environment its OpenMP runtime reads (nothing imported: `--help` stays instant);
    after, the compute threads are set. Returns the share (its `workers` are what a loader should start)."""
    share = share_cpus(workers, device_type)
    if "torch" not in sys.modules:
        quiet_env(cpus=share.threads)
    else:
        configure_threads(share.threads)
    log.debug("CPUs: %d usable, %d compute threads, %d loader workers", share.cpus, share.threads, share.workers)
    return share


def worker_init(_worker_id: int) -> None:
    """DataLoader worker_init_fn: one thread (torch's default in a worker), niced below the compute threads."""
    import torch

    torch.set_num_threads(1)
    try:
        os.nice(WORKER_NICE)
    except OSError:  # not permitted here: the worker keeps the parent's priority
        pass
