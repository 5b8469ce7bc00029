"""The training loop of Sect. 3.1: SGD with momentum on a fixed global batch, split over torchrun
processes and gradient-accumulation steps; lr divided by 10 on a validation plateau; checkpoints that
resume exactly. Randomness is derived, never carried: data order from (seed, epoch), augmentation from
(seed, epoch, index), dropout from (seed, step, rank, micro-step) - so a resumed run is the same run."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from vggfeat.data.folder import imagenet_splits
from vggfeat.data.transforms import normalize_batch
from vggfeat.errors import VggfeatError
from vggfeat.models import Preprocessing, create_model, init_from_net_a, read_weights, save_weights
from vggfeat.utils.device import resolve_device

from .checkpoint import PATTERN, latest_checkpoint, load_checkpoint, save_checkpoint
from .data import GlobalBatchSampler, TrainSet, ValSet, steps_per_epoch
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from .recipe import Recipe, accumulation_steps, recipe_to_dict
from .schedule import PlateauState, plateau_step

log = logging.getLogger(__name__)


class NonFiniteLoss(VggfeatError, RuntimeError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint stays."""


class RunExistsError(VggfeatError, FileExistsError):
    """The run folder already holds a run and neither --resume nor --overwrite was given."""


# what a run leaves in its folder; --overwrite removes exactly these (never the user's other files)
_RUN_FILES = ("ckpt-*.pt", "best.pt", "last.json", "model.safetensors", "metrics.jsonl")


def check_run_folder(run: str | Path, epochs: int, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train from scratch over an earlier run (days of ImageNet work); `overwrite` clears it."""
    run = Path(run)
    if resume or not run.is_dir():
        return
    last = latest_checkpoint(run)
    if last is None and not (run / "model.safetensors").exists():
        return
    if overwrite:
        if os.environ.get("RANK", "0") != "0":
            return
        for pattern in _RUN_FILES:
            for f in run.glob(pattern):
                f.unlink(missing_ok=True)
        log.info("--overwrite: removed the earlier run's checkpoints and weights in %s", run)
        return
    match = PATTERN.match(last.name) if last is not None else None
    done = int(match.group(1)) if match else epochs  # only model.safetensors: a finished run
    raise RunExistsError(
        f"{run} already holds a run (epoch {done} of {epochs}); "
        "pass --resume to continue it or --overwrite to start over"
    )


def build_model(recipe: Recipe, num_classes: int) -> torch.nn.Module:
    """The recipe's net, freshly initialised, then (optionally) initialised from another run's weights."""
    m = recipe.model
    model = create_model(
        m.name,
        num_classes=num_classes,
        width_mult=m.width_mult,
        fc_dim=m.fc_dim,
        fc6_kernel=m.fc6_kernel,
        dropout=m.dropout,
        init=m.init,
        init_std=m.init_std,
        seed=recipe.seed,
    )
    if m.init_from:
        path = Path(m.init_from)
        state = load_checkpoint(path)["model"] if path.suffix == ".pt" else read_weights(path)[0]
        if m.init_layers == "net_a":  # Sect. 3.1: deeper nets take 4 convs and 3 FCs from net A
            init_from_net_a(model, state)
        else:  # S=384 from S=256, jitter from S=384: the whole net
            model.load_state_dict(state)
    return model


def _dropout_seed(seed: int, step: int, rank: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 4099 + rank * 131 + micro) % (2**63 - 1)


def _topk_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
    hit = top5 == y[:, None]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


class _Logger:
    """metrics.jsonl (and TensorBoard when installed) on rank 0."""

    def __init__(self, run: Path, enabled: bool) -> None:
        self.enabled, self.path, self.tb = enabled, run / "metrics.jsonl", None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tb"))
            except Exception:  # TensorBoard is optional
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, float):
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, record["global_step"])


def train(
    recipe: Recipe,
    out: str | Path,
    *,
    data_root: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `recipe` into run folder `out` (resuming from its last checkpoint with `resume`; a folder
    holding another run is refused unless `overwrite`); return the final summary. Launch under torchrun
    for several processes."""
    # every process checks (all refuse together, none hangs in a barrier); only rank 0 clears with overwrite
    check_run_folder(out, recipe.optim.epochs, resume=resume, overwrite=overwrite)
    device = resolve_device(recipe.runtime.device)
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        accumulation_steps(recipe, info.world)  # a batch that does not split: say so before any data work
        return _train(recipe, Path(out), info, device, data_root, resume, progress)
    finally:
        shutdown(info)


def _prepare_data(recipe: Recipe, data_root, info: DistInfo):
    from vggfeat.data.stats import cached_stats
    from vggfeat.data.synthetic import ensure_synthetic

    d = recipe.data
    root = Path(data_root or d.root or "")
    if not str(data_root or d.root or ""):
        raise ValueError("no dataset: give --data-root or set data.root in the recipe")
    if d.synthetic_seed is not None and info.is_main:
        ensure_synthetic(root, classes=d.synthetic_classes, per_class=d.synthetic_per_class, seed=d.synthetic_seed)
    barrier(info)
    train_s, val_s = imagenet_splits(root, d.val_labels)
    if (d.mean_rgb is None or d.eigval is None or d.eigvec is None) and info.is_main:
        cached_stats(root, train_s.paths)
    barrier(info)
    stats = cached_stats(root, train_s.paths) if None in (d.mean_rgb, d.eigval, d.eigvec) else {}
    mean = d.mean_rgb or tuple(stats["mean"])
    eigval = d.eigval or tuple(stats["eigval"])
    eigvec = d.eigvec or tuple(tuple(r) for r in stats["eigvec"])
    return root, train_s, val_s, mean, eigval, eigvec


def _train(
    recipe: Recipe, run: Path, info: DistInfo, device: torch.device, data_root, resume: bool, progress: bool
) -> dict[str, Any]:
    d, o = recipe.data, recipe.optim
    cuda = device.type == "cuda"
    root, train_s, val_s, mean, eigval, eigvec = _prepare_data(recipe, data_root, info)
    if recipe.model.num_classes != len(train_s.classes):
        raise ValueError(
            f"model.num_classes is {recipe.model.num_classes} but {root}/train has {len(train_s.classes)} classes"
        )
    accum = accumulation_steps(recipe, info.world)
    steps = steps_per_epoch(len(train_s), o.batch_size)
    if steps == 0:
        raise ValueError(f"{len(train_s)} training images cannot fill one global batch of {o.batch_size}")

    model = build_model(recipe, len(train_s.classes)).to(device)
    if recipe.runtime.channels_last:  # NHWC: faster 3x3 convs with cuDNN and oneDNN (2-8x on CPU for narrow nets)
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = PlateauState(lr=o.lr)
    epoch, step_in_epoch, global_step, history = 0, 0, 0, []

    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = latest_checkpoint(run) if resume else None
    if resume and ckpt_path is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sched = PlateauState(**ckpt["schedule"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        history = list(ckpt["history"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if info.is_main:
            log.info("resumed from %s (epoch %d, step %d)", ckpt_path.name, epoch, step_in_epoch)
    if info.is_main:
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    net = model
    if info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if recipe.runtime.compile:
        net = torch.compile(net)

    trainset = TrainSet(train_s, seed=recipe.seed, scale=d.scale, crop=d.crop, flip=d.flip, color_sigma=d.color_sigma)
    val_size = (d.scale[0] + d.scale[1]) // 2  # validation: central crop at the middle training scale
    valset = ValSet(val_s, size=val_size, crop=d.crop)
    logger = _Logger(run, info.is_main)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and recipe.runtime.amp else contextlib.nullcontext()
    preproc = Preprocessing("RGB", 255.0, tuple(mean), (1.0, 1.0, 1.0))
    # device for the colour shift and mean subtraction: the GPU when asked, else the CPU before the copy
    aug_on_device = cuda and recipe.runtime.gpu_augment

    def state(best: bool) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": sched.to_dict(),
            "scaler": {},
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "history": history,
            "recipe": recipe_to_dict(recipe),
            "world": info.world,
            "mean_rgb": list(mean),
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else []},
        }

    def checkpoint(best: bool = False) -> None:
        if info.is_main:
            save_checkpoint(run, state(best), keep_last=recipe.checkpoint.keep_last, best=best)
        barrier(info)
        if recipe.debug.kill_at_step and global_step == recipe.debug.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # tests: die like a crashed node, right after the save

    bar = None
    while epoch < o.epochs:
        sampler = GlobalBatchSampler(
            len(trainset),
            seed=recipe.seed,
            epoch=epoch,
            batch_size=o.batch_size,
            per_device=o.per_device_batch,
            rank=info.rank,
            world=info.world,
            start_step=step_in_epoch,
        )
        loader = torch.utils.data.DataLoader(
            trainset, batch_sampler=sampler, num_workers=d.workers, pin_memory=cuda, persistent_workers=False
        )
        if info.is_main and progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{o.epochs}", leave=False)
        net.train()
        it = iter(loader)
        t0, seen = time.perf_counter(), 0
        while step_in_epoch < steps:
            for g in optimizer.param_groups:
                g["lr"] = sched.lr
            loss_sum = torch.zeros(3, dtype=torch.float64)  # loss, top-1 hits, top-5 hits
            for micro in range(accum):
                x, alpha, y = next(it)
                x, alpha, y = (t.to(device, non_blocking=True) for t in (x, alpha, y))
                x = normalize_batch(x, mean, eigval, eigvec, alpha if d.color_sigma > 0 else None)
                if recipe.runtime.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                torch.manual_seed(_dropout_seed(recipe.seed, global_step, info.rank, micro))
                sync = contextlib.nullcontext() if (info.world == 1 or micro == accum - 1) else net.no_sync()
                with sync:
                    with amp:
                        logits = net(x)
                    loss = F.cross_entropy(logits.float(), y)
                    if recipe.debug.nan_at_step and global_step + 1 == recipe.debug.nan_at_step:
                        loss = loss * float("nan")
                    (loss / accum).backward()
                t1, t5 = _topk_correct(logits.detach(), y)
                loss_sum += torch.tensor([loss.item() * len(y), t1, t5], dtype=torch.float64)
                seen += len(y)
            all_reduce_sum(loss_sum, info)
            if not math.isfinite(loss_sum[0].item()):
                last = latest_checkpoint(run)
                raise NonFiniteLoss(
                    f"loss is {loss_sum[0].item()} at epoch {epoch + 1}, step {step_in_epoch + 1} "
                    f"(global step {global_step + 1}); stopped without saving. Last good "
                    f"checkpoint: {last or 'none'} (lower optim.lr or check the data, then --resume)"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_in_epoch += 1
            global_step += 1
            if bar is not None:
                bar.update(1)
            if global_step % recipe.checkpoint.log_every == 0 or step_in_epoch == steps:
                dt = time.perf_counter() - t0
                logger.write(
                    {
                        "kind": "step",
                        "epoch": epoch + 1,
                        "step": step_in_epoch,
                        "global_step": global_step,
                        "loss": loss_sum[0].item() / o.batch_size,
                        "lr": sched.lr,
                        "top1": loss_sum[1].item() / o.batch_size,
                        "top5": loss_sum[2].item() / o.batch_size,
                        "images_per_s": seen * info.world / dt if dt > 0 else 0.0,
                    }
                )
                t0, seen = time.perf_counter(), 0
            if global_step % recipe.checkpoint.every_steps == 0 and step_in_epoch < steps:
                checkpoint()
        if bar is not None:
            bar.close()
        top1, top5 = validate(model, valset, info, device, mean, amp, recipe, aug_on_device)
        improved = top1 > sched.best + o.threshold
        sched = plateau_step(
            sched, top1, patience=o.patience, factor=o.factor, max_drops=o.max_drops, threshold=o.threshold
        )
        epoch, step_in_epoch = epoch + 1, 0
        history.append({"epoch": epoch, "val_top1": top1, "val_top5": top5, "lr_next": sched.lr})
        logger.write(
            {
                "kind": "epoch",
                "epoch": epoch,
                "global_step": global_step,
                "val_top1": top1,
                "val_top5": top5,
                "lr": sched.lr,
                "drops": sched.drops,
            }
        )
        if info.is_main:
            log.info("epoch %d: val top-1 %.4f top-5 %.4f, next lr %g", epoch, top1, top5, sched.lr)
            model.preprocessing = preproc
            if improved:
                save_weights(model, run / "best.safetensors", metadata={"recipe": json.dumps(recipe_to_dict(recipe))})
        checkpoint(best=improved)
    if info.is_main:
        model.preprocessing = preproc
        save_weights(model, run / "model.safetensors", metadata={"recipe": json.dumps(recipe_to_dict(recipe))})
    return {"epochs": epoch, "global_step": global_step, "history": history, "run": str(run)}


@torch.no_grad()
def validate(
    model, valset, info: DistInfo, device, mean, amp, recipe: Recipe, _aug_on_device: bool = True
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of central crops, each process taking every world-th image."""
    model.eval()
    n = len(valset) if recipe.data.max_val <= 0 else min(recipe.data.max_val, len(valset))
    idx = list(range(info.rank, n, info.world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(valset, idx),
        batch_size=recipe.optim.per_device_batch,
        num_workers=recipe.data.workers,
        pin_memory=device.type == "cuda",
    )
    counts = torch.zeros(3, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device)
        x = normalize_batch(x, mean)
        if recipe.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            logits = model(x)
        t1, t5 = _topk_correct(logits.float(), y)
        counts += torch.tensor([t1, t5, len(y)], dtype=torch.float64)
    all_reduce_sum(counts, info)
    model.train()
    return counts[0].item() / max(1.0, counts[2].item()), counts[1].item() / max(1.0, counts[2].item())
