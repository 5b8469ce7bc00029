"""`vggfeat extract --array N`: the N parts of an extraction as one SLURM job array through submitit, or as N
local processes (submitit's local executor, the same jobs without a cluster).

Parts need no communication: each writes its own shards of OUT, so a preempted or timed-out job is simply
requeued (submitit's checkpoint hook) and redoes only its unfinished shards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vggfeat.errors import InputError

try:
    from submitit.helpers import Checkpointable
except ImportError:  # submitit is a dependency; a broken install fails at submit time with one line
    Checkpointable = object  # type: ignore[misc,assignment]


class PartJob(Checkpointable):
    """One part of an extraction: `extract_part(**call, part=(i, n))`; requeued as it is on preemption."""

    def __init__(self, call: dict[str, Any], n: int) -> None:
        self.call, self.n = call, n

    def __call__(self, i: int) -> dict[str, Any]:
        import logging

        from vggfeat.features.extract import extract_part

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        result = extract_part(**{**self.call, "progress": False}, part=(i, self.n))
        return {"part": i, "written": result.written, "busy": result.busy, "complete": result.status.complete}


def submit_parts(
    call: dict[str, Any], n: int, launcher: str, slurm: dict[str, Any], echo: Callable[[str], None] = print
) -> list:
    """Submit the N parts; with the local launcher, wait for them and say how each ended."""
    try:
        import submitit
    except ImportError as e:
        raise InputError(f"--array needs the submitit package ({e}); pip install 'submitit>=1.5'") from None
    out = Path(call["out"])
    logs = out / "submitit"
    try:
        executor = submitit.AutoExecutor(folder=logs / "%j", cluster="local" if launcher == "local" else "slurm")
    except RuntimeError as e:  # no srun/sbatch here
        raise InputError(
            f"--launcher {launcher}: {e}; run on a SLURM login node, or --launcher local, or --part I/N by hand"
        ) from None
    params: dict[str, Any] = {"timeout_min": slurm.get("minutes") or 24 * 60, "name": f"vggfeat-extract-{out.name}"}
    if launcher == "slurm":
        extra = {"slurm_partition": slurm.get("partition"), "cpus_per_task": slurm.get("cpus")}
        if slurm.get("gpus") is not None:
            extra["slurm_gpus_per_task"] = slurm["gpus"]
        params.update({k: v for k, v in extra.items() if v is not None})
    try:
        executor.update_parameters(**params)
        jobs = executor.map_array(PartJob(call, n), list(range(n)))
    except (RuntimeError, OSError, submitit.core.utils.FailedJobError) as e:
        raise InputError(f"--launcher {launcher}: submitting {n} jobs failed ({e}); check SLURM (sbatch)") from None
    echo(f"submitted {n} parts ({launcher}): job {jobs[0].job_id.split('_')[0]}; logs in {logs}")
    echo(f"progress: vggfeat store status {out}")
    if launcher != "local":
        return jobs
    failed = []
    for i, job in enumerate(jobs):
        try:
            job.result()
        except Exception as e:  # a part's error is in its log; the others' shards stand
            failed.append(f"part {i}/{n}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}")
    for line in failed:
        echo(f"failed {line}")
    if failed:
        raise InputError(f"{len(failed)} of {n} parts failed (logs in {logs}); see `vggfeat store status {out}`")
    return jobs
