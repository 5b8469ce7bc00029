"""Sizing compute threads and loader workers from the CPUs a process may use (affinity, cgroup quota)."""

from __future__ import annotations

import os

import pytest

from vggfeat.utils import cpus


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_read_from_the_group_and_its_parents(tmp_path):
    proc = tmp_path / "proc_cgroup"
    write(proc, "0::/slurm/job_7/step_0\n")
    write(tmp_path / "fs/slurm/job_7/step_0/cpu.max", "max 100000\n")
    write(tmp_path / "fs/slurm/job_7/cpu.max", "250000 100000\n")  # the job's quota binds the step
    write(tmp_path / "fs/slurm/cpu.max", "800000 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path / "fs", proc) == pytest.approx(2.5)
    write(tmp_path / "fs/slurm/job_7/cpu.max", "max 100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path / "fs", proc) == pytest.approx(8.0)


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    proc = tmp_path / "proc_cgroup"
    write(proc, "4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cpus.cgroup_cpu_limit(tmp_path / "fs", proc) == pytest.approx(1.5)
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")
    assert cpus.cgroup_cpu_limit(tmp_path / "fs", proc) is None
    assert cpus.cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "missing") is None


def test_usable_cpus_is_the_affinity_capped_by_the_quota():
    assert cpus.usable_cpus(affinity=set(range(16)), quota=None) == 16
    assert cpus.usable_cpus(affinity=set(range(16)), quota=2.0) == 2
    assert cpus.usable_cpus(affinity=set(range(16)), quota=1.5) == 2  # two threads at 75%
    assert cpus.usable_cpus(affinity={3}, quota=4.0) == 1
    assert cpus.usable_cpus(affinity=set(), quota=None) == 1


def test_usable_cpus_reads_this_process(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda *a, **k: 3.0)
    assert cpus.usable_cpus() == 3
    assert cpus.share_cpus(8, "cpu").cpus == 3


@pytest.mark.parametrize(
    ("n", "device", "asked", "threads", "workers"),
    [
        # the net is the work: every core computes and images decode between batches (a worker beside busy
        # compute threads made them wait for it at every barrier: 20% of an extraction on 2 cores)
        (2, "cpu", 4, 2, 0),
        (2, "cpu", 0, 2, 0),
        (4, "cpu", 4, 4, 0),
        (8, "cpu", 4, 7, 1),  # from 8 CPUs, one worker per 8 on a core of its own
        (16, "cpu", 12, 14, 2),
        (2, "cuda", 12, 1, 1),  # a GPU: one thread feeds it, the rest decode
        (16, "cuda", 12, 2, 12),
        (16, "cuda", 32, 2, 14),
        (1, "cuda", 4, 1, 1),
    ],
)
def test_threads_and_workers_share_the_cpus(n, device, asked, threads, workers):
    share = cpus.share_cpus(asked, device, cpus=n)
    assert (share.threads, share.workers) == (threads, workers)
    assert share.threads + share.workers <= max(n, 2)  # they do not compete for the same cores


def test_quiet_env_sets_passive_waits_without_overriding_the_user():
    env = {"OMP_NUM_THREADS": "1"}
    changed = cpus.quiet_env(env, cpus=3)
    assert env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "3", "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    assert "OMP_NUM_THREADS" not in changed


def test_prepare_process_sets_torch_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(cpus, "usable_cpus", lambda *a, **k: 1)
    try:
        share = cpus.prepare_process(workers=3)
        assert (share.threads, share.workers, torch.get_num_threads()) == (1, 0, 1)
    finally:
        torch.set_num_threads(before)
