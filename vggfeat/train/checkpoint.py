"""Checkpoints that lose nothing: model, optimizer, schedule, RNG, sampler position and the
resolved recipe, as plain containers (loadable with torch.load(weights_only=True)), written atomically;
the last K and the best are kept. Resuming takes the newest checkpoint that loads: a truncated or corrupt
newest one (a full disk, a copy cut short) falls back to the one before."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from vggfeat.errors import VggfeatError, WeightsError
from vggfeat.models.resolve import check_weight_file
from vggfeat.models.weights import check_finite
from vggfeat.utils.files import atomic_write_bytes

log = logging.getLogger(__name__)
PATTERN = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")
# what resuming reads from a checkpoint (older ones also hold an unused "scaler" entry: ignored)
REQUIRED = ("model", "optimizer", "schedule", "epoch", "step_in_epoch", "global_step", "history", "rng")
NO_WEIGHTS = 'no "model" entry of named tensors'  # why a checkpoint without usable weights is refused


class CheckpointError(VggfeatError, RuntimeError):
    """No checkpoint of a run can be loaded."""


def checkpoint_name(global_step: int, epoch: int) -> str:
    return f"ckpt-e{epoch:03d}-s{global_step:08d}.pt"


def save_checkpoint(run: Path, state: dict[str, Any], *, keep_last: int, best: bool = False) -> Path:
    """Write `state` atomically as run/ckpt-eEEE-sSSSSSSSS.pt, point last.json at it, prune old ones."""
    buf = io.BytesIO()
    torch.save(state, buf)
    path = run / checkpoint_name(state["global_step"], state["epoch"])
    atomic_write_bytes(path, buf.getvalue())
    if best:
        atomic_write_bytes(run / "best.pt", buf.getvalue())
    atomic_write_bytes(run / "last.json", json.dumps({"checkpoint": path.name}).encode())
    for old in list_checkpoints(run)[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run: Path) -> list[Path]:
    """Step checkpoints in the run folder, oldest first."""
    found = [(int(m.group(2)), p) for p in Path(run).glob("ckpt-*.pt") if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found, key=lambda step_path: step_path[0])]


def latest_checkpoint(run: Path) -> Path | None:
    ckpts = list_checkpoints(run)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The net's weights in checkpoint `path` (its "model" entry), as model.init_from reads them: a WeightsError
    naming the file when it is not a regular file, does not load, holds no such entry or a non-finite weight."""
    check_weight_file(path)  # a FIFO would block torch.load until a writer comes: named instead
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:  # torch reports damage as RuntimeError, EOFError, UnpicklingError, zip errors...
        raise WeightsError(f"{path}: truncated or corrupt, torch cannot load it ({type(e).__name__})") from None
    state = _weights(ckpt)
    if state is None:
        raise WeightsError(f"{path}: not a training checkpoint ({NO_WEIGHTS})")
    check_finite(state, str(path))
    return state


def _weights(ckpt: object) -> dict[str, torch.Tensor] | None:
    """The checkpoint's "model" entry when it is a dict of named tensors, else None."""
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        return None
    return state


def load_latest_checkpoint(run: Path) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]] | None:
    """(path, contents, skipped) of the newest checkpoint in `run` that loads, `skipped` the newer ones that
    did not with the reason; None when the run has no checkpoint. CheckpointError when none loads."""
    bad: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(run)):
        reason = _unloadable(path)
        if isinstance(reason, dict):
            return path, reason, bad
        bad.append((path, reason))
    if bad:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in bad)
        raise CheckpointError(f"no checkpoint in {run} can be loaded ({reasons}); start over with --overwrite")
    return None


def _unloadable(path: Path) -> dict[str, Any] | str:
    """The checkpoint's contents, or why it cannot be resumed from."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        ckpt = load_checkpoint(path)
    except Exception as e:  # torch reports damage as RuntimeError, EOFError, UnpicklingError, zip errors...
        return f"truncated or corrupt: {type(e).__name__}"
    missing = [k for k in REQUIRED if k not in ckpt] if isinstance(ckpt, dict) else list(REQUIRED)
    if missing:
        return f"not a training checkpoint (no {', '.join(missing)})"
    return ckpt if _weights(ckpt) is not None else f"not a training checkpoint ({NO_WEIGHTS})"
