"""The training loop of Sect. 3.1: SGD with momentum on a fixed global batch, split over torchrun
processes and gradient-accumulation steps; lr divided by 10 on a validation plateau; checkpoints that
resume exactly. Randomness is derived, never carried: data order from (seed, epoch), augmentation from
(seed, epoch, index), dropout from (seed, step, rank, micro-step) - so a resumed run is the same run."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import yaml

from vggfeat.config import ConfigError
from vggfeat.data.folder import Samples, imagenet_splits
from vggfeat.data.stats import cached_stats, cached_tar_stats
from vggfeat.data.transforms import normalize_batch
from vggfeat.errors import InputError, VggfeatError, WeightsError
from vggfeat.models import Preprocessing, create_model, init_from_net_a, read_weights, save_weights
from vggfeat.models.vgg import VGG
from vggfeat.models.weights import check_compatible, check_finite
from vggfeat.utils.cpus import share_cpus
from vggfeat.utils.device import resolve_device
from vggfeat.utils.distributed import DistInfo, all_reduce_sum, barrier, env_info, init_distributed, shutdown
from vggfeat.utils.files import atomic_write_text, open_regular
from vggfeat.utils.heap import keep_freed_memory
from vggfeat.utils.progress import progress_bar

from .checkpoint import (
    PATTERN,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint_weights,
    load_latest_checkpoint,
    save_checkpoint,
)
from .data import BatchSplit, TrainSet, ValSet, batch_split, collate_skips
from .recipe import Recipe, recipe_to_dict, shard_patterns
from .resume import check_images, check_init_weights, check_recipe, init_sha256, samples_digest
from .schedule import PlateauState, plateau_step
from .shard_index import index_digest
from .tar_data import TarSplit, TarTrainSet, TarValSet, load_tar_splits

if TYPE_CHECKING:
    from tqdm import tqdm

# what a training step counts, kept on the device until _flush: loss summed over labelled samples, top-1 and top-5
# hits, labelled samples, unreadable images skipped
_STATS = ("loss", "top1", "top5", "labelled", "skipped")

# one micro-batch as collate_skips gives it: images (B, H, W, 3) uint8, colour-shift alphas (B, 3), labels (B,),
# the skipped images' messages
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]

log = logging.getLogger(__name__)


class NonFiniteLoss(VggfeatError, RuntimeError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint stays."""


class RunExistsError(VggfeatError, FileExistsError):
    """The run folder already holds a run and neither --resume nor --overwrite was given."""


class RunFolderError(VggfeatError):
    """The run folder cannot be written (read-only, no permission, disk full)."""


# what a full disk or a read-only folder raises
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


# what a run leaves in its folder; --overwrite removes exactly these (never the user's other files)
_RUN_FILES = ("ckpt-*.pt", "best.pt", "last.json", "model.safetensors", "best.safetensors", "metrics.jsonl")


def check_run_folder(run: str | Path, epochs: int, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train from scratch over an earlier run (days of ImageNet work); `overwrite` clears it."""
    run = Path(run)
    if resume or not run.is_dir():
        return
    last = latest_checkpoint(run)
    if last is None and not (run / "model.safetensors").exists():
        return
    if overwrite:
        if not env_info().is_main:
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


def build_model(recipe: Recipe, num_classes: int) -> VGG:
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
        if path.suffix == ".pt":
            state = load_checkpoint_weights(path)
        else:
            state = read_weights(path)[0]
        try:
            if m.init_layers == "net_a":  # Sect. 3.1: deeper nets take 4 convs and 3 FCs from net A
                init_from_net_a(model, state)
            else:  # S=384 from S=256, jitter from S=384: the whole net
                check_compatible(state, model, "vggfeat")
                model.load_state_dict(state)
        except WeightsError as e:
            raise WeightsError(
                f"model.init_from {path}: {e}; point it at a run of this recipe's net "
                "(model.width_mult, fc_dim, fc6_kernel, num_classes)"
            ) from None
    return model


def _dropout_seed(seed: int, step: int, rank: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 4099 + rank * 131 + micro) % (2**63 - 1)


def _topk_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 and top-5 hits as 0-d tensors on the logits' device (no host sync); label -1 never hits."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
    hit = top5 == y[:, None]
    return hit[:, 0].sum(), hit.any(dim=1).sum()


class _Logger:
    """metrics.jsonl (and TensorBoard when installed) on rank 0."""

    def __init__(self, run: Path, enabled: bool) -> None:
        self.enabled, self.path, self.tb_dir = enabled, run / "metrics.jsonl", run / "tb"
        self.tb: Any = None  # a SummaryWriter, when TensorBoard is installed

    def start_at(self, global_step: int) -> None:
        """Go on from step `global_step` (0: a new run). What a run logged after its last checkpoint, before it
        died, is logged again from there: those lines are dropped (and TensorBoard purges those events), so a
        resumed run's records equal an uninterrupted run's. A new run drops a dead earlier run's records."""
        if not self.enabled:
            return
        kept: list[str] = []
        try:
            with open_regular(self.path) as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines if global_step > 0 else []:
            try:
                record = json.loads(line)
            except ValueError:  # the line a killed run was writing
                continue
            step = record.get("global_step") if isinstance(record, dict) else None
            if isinstance(step, int) and step <= global_step:
                kept.append(line + "\n")
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(kept))
        if global_step == 0:
            shutil.rmtree(self.tb_dir, ignore_errors=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.tb_dir), purge_step=global_step + 1 if global_step else None)
        except Exception:  # TensorBoard is optional
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        nonfinite = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if nonfinite:  # JSON has no NaN: such a value is written null and named, never as a number
            record = {**{k: None if k in nonfinite else v for k, v in record.items()}, "nonfinite": nonfinite}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
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
    run = Path(out)
    check_run_folder(run, recipe.optim.epochs, resume=resume, overwrite=overwrite)
    o = recipe.optim  # a batch that does not split over torchrun's processes: said before any work
    split = batch_split(o.batch_size, o.per_device_batch, env_info().world)
    root = dataset_root(recipe, data_root)  # None: tar shards
    try:
        device = resolve_device(recipe.runtime.device)
    except ValueError as e:
        raise ConfigError(f"runtime.device: {e}") from None
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    else:
        keep_freed_memory()  # each step's activations and gradients on the last step's pages (utils.heap)
    try:
        check_writable(run)
        data = _prepare_data(recipe, root, info, run, split)
        trainer = _Trainer(recipe, run, info, device, data, split, progress)
        trainer.start(resume)
        return trainer.fit()
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise RunFolderError(_write_error(run, e)) from None
    finally:
        shutdown(info)


def dataset_root(recipe: Recipe, data_root: str | Path | None) -> Path | None:
    """The dataset folder (--data-root, else data.root), checked before any work: it must exist with train/ and
    val/. None for tar shards (data.train_shards), whose files are checked when they are counted."""
    if recipe.data.train_shards is not None:
        if data_root:
            raise ConfigError(
                "--data-root names a dataset folder but the recipe reads tar shards (data.train_shards); "
                "drop --data-root or unset data.train_shards and data.val_shards"
            )
        return None
    where = "--data-root" if data_root else "data.root"
    value = str(data_root or recipe.data.root or "")
    if not value:
        raise ConfigError("no dataset: data.root is not set in the recipe and no --data-root was given; set one")
    root = Path(value)
    if not root.is_dir():
        raise ConfigError(
            f"{where} {root} does not exist; point it at a dataset folder holding train/ and val/ "
            f"(`vggfeat synthetic {root}` generates a small one, the smoke recipe's)"
        )
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise ConfigError(f"{where} {root} has no {sub}/ folder (expected {root}/{sub}/<class>/<image>)")
    return root


def check_writable(run: Path) -> None:
    """Fail before any work, naming the folder, when the run folder cannot be created or written."""
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS and not isinstance(e, (FileExistsError, NotADirectoryError)):
            raise
        raise RunFolderError(_write_error(run, e)) from None


def _write_error(run: Path, e: OSError) -> str:
    name = str(e.filename) if isinstance(e.filename, (str, Path)) else ""
    where = name if name and run.resolve() not in Path(name).resolve().parents else run
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full while writing to {where}: free some space, then run again with --resume"
    return f"cannot write to {where}: {e.strerror or e}; choose another folder with --out"


@dataclass(frozen=True)
class _Data:
    """The dataset as the loop needs it: samples (class folders, or tar shards with `root` None), and the mean
    RGB and colour eigen-decomposition."""

    root: Path | None
    train: Samples | TarSplit
    val: Samples | TarSplit
    mean: tuple[float, float, float]
    eigval: tuple[float, float, float]
    eigvec: tuple[tuple[float, float, float], ...]


def _prepare_data(recipe: Recipe, root: Path | None, info: DistInfo, run: Path, split: BatchSplit) -> _Data:
    d = recipe.data
    if root is None:
        return _prepare_tar_data(recipe, info, run, split)
    try:
        train_s, val_s = imagenet_splits(root, d.val_labels)
    except (ValueError, FileNotFoundError) as e:  # no class folders, no images, a bad val labels file
        raise InputError(f"dataset {root}: {e}") from None
    if recipe.model.num_classes != len(train_s.classes):  # before minutes of pixel statistics
        k = len(train_s.classes)
        raise ConfigError(
            f"model.num_classes is {recipe.model.num_classes} but {root}/train has {k} class folders; "
            f"set model.num_classes: {k} (or --set model.num_classes={k})"
        )
    return _checked_data(
        recipe,
        info,
        split,
        root,
        train_s,
        val_s,
        f"training images in {root}/train",
        lambda: cached_stats(root, train_s.paths),
    )


def _prepare_tar_data(recipe: Recipe, info: DistInfo, run: Path, split: BatchSplit) -> _Data:
    """_prepare_data for tar shards: counted (and cached) in the run folder, as is a computed mean RGB."""
    d = recipe.data
    train_s, val_s = load_tar_splits(
        shard_patterns(d.train_shards), shard_patterns(d.val_shards), recipe.model.num_classes, run, info
    )
    urls = [c.url for c in train_s.counts]
    return _checked_data(
        recipe,
        info,
        split,
        None,
        train_s,
        val_s,
        "training samples in data.train_shards",
        lambda: cached_tar_stats(run, urls),
    )


def _checked_data(
    recipe: Recipe,
    info: DistInfo,
    split: BatchSplit,
    root: Path | None,
    train_s: Samples | TarSplit,
    val_s: Samples | TarSplit,
    what: str,
    stats_of: Callable[[], dict[str, Any]],
) -> _Data:
    """Either dataset kind once listed: one global batch at least, and the colour statistics the recipe does not
    give, computed by rank 0 (`stats_of` caches them) and then read by every process."""
    d = recipe.data
    if split.steps_per_epoch(len(train_s)) == 0:
        raise ConfigError(
            f"{len(train_s)} {what} cannot fill one global batch of optim.batch_size={recipe.optim.batch_size}"
        )
    stats: dict[str, Any] = {}
    if None in (d.mean_rgb, d.eigval, d.eigvec):
        if info.is_main:
            stats_of()
        barrier(info)
        stats = stats_of()
    mean = d.mean_rgb or tuple(stats["mean"])
    eigval = d.eigval or tuple(stats["eigval"])
    eigvec = d.eigvec or tuple(tuple(r) for r in stats["eigvec"])
    return _Data(root, train_s, val_s, mean, eigval, eigvec)


class _Trainer:
    """One process's share of a run: the model, optimizer and schedule, the position in the run (what a
    checkpoint saves), and the steps that advance them."""

    def __init__(
        self,
        recipe: Recipe,
        run: Path,
        info: DistInfo,
        device: torch.device,
        data: _Data,
        split: BatchSplit,
        progress: bool,
    ) -> None:
        d, o = recipe.data, recipe.optim
        self.recipe, self.run, self.info, self.device, self.data = recipe, run, info, device, data
        self.progress = progress
        self.cuda = device.type == "cuda"
        if self.cuda:  # one crop size for every step: cuDNN's autotuned kernels are picked once and reused
            torch.backends.cudnn.benchmark = True
        self.split, self.steps = split, split.steps_per_epoch(len(data.train))
        self.model = build_model(recipe, len(data.train.classes)).to(device)
        self.init_sha = init_sha256(recipe)  # of the file build_model just read (one memory map serves both)
        if recipe.runtime.channels_last:  # NHWC: faster 3x3 convs with cuDNN and oneDNN (2-8x on CPU for narrow nets)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
        )
        # DDP- and compile-wrapped in start(): a module, a DDP (no_sync) or torch.compile's callable wrapper
        self.net: Any = self.model
        self.sched = PlateauState(lr=o.lr)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []  # one entry per epoch: val_top1, val_top5, lr_next
        augment: dict[str, Any] = dict(
            seed=recipe.seed, scale=d.scale, crop=d.crop, flip=d.flip, color_sigma=d.color_sigma
        )
        val_size = (d.scale[0] + d.scale[1]) // 2  # validation: central crop at the middle training scale
        self.trainset: TrainSet | TarTrainSet
        self.valset: ValSet | TarValSet
        if isinstance(data.train, TarSplit):
            assert isinstance(data.val, TarSplit)  # both splits come from the same source
            self.trainset = TarTrainSet(data.train, shuffle_buffer=d.shuffle_buffer, **augment)
            self.valset = TarValSet(data.val, size=val_size, crop=d.crop)
        else:
            assert not isinstance(data.val, TarSplit)
            self.trainset = TrainSet(data.train, cache=d.cache_decoded, **augment)
            self.valset = ValSet(data.val, size=val_size, crop=d.crop, cache=d.cache_decoded)
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda and recipe.runtime.amp else None
        # on the device once: a tensor made from a list each micro-batch would be a blocking host-to-device copy
        mean, eigval, eigvec = (
            torch.tensor(v, dtype=torch.float32, device=device) for v in (data.mean, data.eigval, data.eigvec)
        )
        self.colour = (mean, eigval, eigvec)
        m = data.mean
        self.preproc = Preprocessing("RGB", 255.0, (m[0], m[1], m[2]), (1.0, 1.0, 1.0))
        self.logger = _Logger(run, info.is_main)
        self.unreadable: set[str] = set()  # images already warned about
        self.pending: list[torch.Tensor] = []  # each step's _STATS since the last _flush, on the device
        self.last_step = [0.0] * len(_STATS)  # the last flushed step's _STATS, summed over processes
        self.skips = 0  # images skipped (by every process) since the last log line
        self.t0, self.seen = time.perf_counter(), 0  # images/s of the log line

    # -- starting -----------------------------------------------------------------------------------------

    def start(self, resume: bool) -> None:
        """Resume from the newest checkpoint that loads (with `resume`), save the recipe, wrap the net."""
        if resume:
            self._resume()
        self.logger.start_at(self.global_step)
        if self.info.is_main:
            atomic_write_text(self.run / "recipe.yaml", yaml.safe_dump(recipe_to_dict(self.recipe), sort_keys=False))
        if self.info.world > 1:
            ids = [self.device.index] if self.cuda else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.recipe.runtime.compile:
            self.net = torch.compile(self.net)

    def _resume(self) -> None:
        found = load_latest_checkpoint(self.run)  # a damaged newest one: the one before (keep_last > 1)
        if found is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.run)
            return
        path, ckpt, bad = found
        for old, reason in bad if self.info.is_main else []:
            log.warning("--resume: %s cannot be loaded (%s); falling back to an earlier checkpoint", old, reason)
        _check_finite_checkpoint(ckpt, path)
        check_recipe(ckpt, path, self.recipe)  # before the weights: a changed key is named, not a shape
        check_init_weights(ckpt, path, self.recipe, self.init_sha)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])  # an old checkpoint's "scaler" entry is ignored
        except (RuntimeError, ValueError, KeyError) as e:  # a recipe changed since the run started
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(
                f"{path} does not fit the recipe's net ({first}); resume with the recipe the run started with "
                f"({self.run / 'recipe.yaml'}) or start over with --overwrite"
            ) from None
        self.sched = PlateauState(**ckpt["schedule"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.history = list(ckpt["history"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self._check_data_position(ckpt.get("data_position"), path)
        if self.info.is_main:
            log.info("resumed from %s (epoch %d, step %d)", path.name, self.epoch, self.step_in_epoch)

    # -- the run --------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Epochs until the recipe's last, then the final weights; returns the run's summary."""
        while self.epoch < self.recipe.optim.epochs:
            self._train_epoch()
            self._end_epoch()
        if self.info.is_main:
            self._save_weights("model.safetensors")
        return {"epochs": self.epoch, "global_step": self.global_step, "history": self.history, "run": str(self.run)}

    def _train_epoch(self) -> None:
        """The rest of the current epoch, from `step_in_epoch` (mid-epoch after a resume)."""
        loader = self.trainset.epoch_loader(
            epoch=self.epoch,
            start_step=self.step_in_epoch,
            split=self.split,
            rank=self.info.rank,
            # none beside the compute threads on a small CPU machine (utils.cpus), never more than the cores
            workers=share_cpus(self.recipe.data.workers, self.device.type).workers,
            pin_memory=self.cuda,
            collate_fn=collate_skips,
        )
        bar = self._progress_bar()
        self.net.train()
        batches = iter(loader)
        self.t0, self.seen = time.perf_counter(), 0
        while self.step_in_epoch < self.steps:
            self._train_step(batches)
            if bar is not None:
                bar.update(1)
            if self.global_step % self.recipe.checkpoint.log_every == 0 or self.step_in_epoch == self.steps:
                self._log_step()
            if self.global_step % self.recipe.checkpoint.every_steps == 0 and self.step_in_epoch < self.steps:
                self._checkpoint()
        if bar is not None:
            bar.close()

    def _progress_bar(self) -> tqdm | None:
        if not (self.info.is_main and self.progress):
            return None
        desc = f"epoch {self.epoch + 1}/{self.recipe.optim.epochs}"
        return progress_bar(self.steps, initial=self.step_in_epoch, desc=desc, unit="step", leave=False)

    def _train_step(self, batches: Iterator[Batch]) -> None:
        """One SGD step on one global batch (micro-batches accumulated; DDP averages the gradients over processes).
        Its _STATS stay on the device, queued for _flush: no host sync here (nanoGPT's rule)."""
        for g in self.optimizer.param_groups:
            g["lr"] = self.sched.lr
        stats = torch.zeros(len(_STATS), dtype=torch.float64, device=self.device)
        for micro in range(self.split.accum):
            self._forward_backward(next(batches), micro, stats)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_in_epoch += 1
        self.global_step += 1
        self.pending.append(stats)

    def _forward_backward(self, batch: Batch, micro: int, stats: torch.Tensor) -> None:
        """Forward and backward of one micro-batch, its _STATS added to `stats` on the device."""
        x, alpha, y, skipped = batch
        self._warn_unreadable(skipped)
        d, rt = self.recipe.data, self.recipe.runtime
        x, alpha, y = (t.to(self.device, non_blocking=True) for t in (x, alpha, y))
        x = normalize_batch(x, *self.colour, alpha if d.color_sigma > 0 else None)  # mean, eigval, eigvec
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        torch.manual_seed(_dropout_seed(self.recipe.seed, self.global_step, self.info.rank, micro))
        # label -1: a tar image that did not decode keeps its slot but adds no loss and no hit, and is not counted
        labelled = (y >= 0).sum()
        last = self.info.world == 1 or micro == self.split.accum - 1
        with contextlib.nullcontext() if last else self.net.no_sync():  # DDP: all-reduce once per step
            with self.amp or contextlib.nullcontext():
                logits = self.net(x)
            loss_sum = F.cross_entropy(logits.float(), y, ignore_index=-1, reduction="sum")  # 0 when none labelled
            (loss_sum / labelled.clamp(min=1) / self.split.accum).backward()  # the micro-batch's mean loss
        t1, t5 = _topk_correct(logits.detach(), y)
        stats[:4] += torch.stack([loss_sum.detach(), t1, t5, labelled]).to(stats.dtype)
        if skipped:
            stats[4] += len(skipped)
        self.seen += len(y)

    def _warn_unreadable(self, skipped: list[str]) -> None:
        for msg in skipped:
            if msg not in self.unreadable:
                self.unreadable.add(msg)
                log.warning("skipping an unreadable training image: %s", msg)

    def _flush(self) -> None:
        """The queued steps' _STATS to the host in one sync, summed over processes (every process flushes at the
        same steps). A non-finite loss stops the run here, before anything is logged or saved from it."""
        if not self.pending:
            return
        rows = all_reduce_sum(torch.stack(self.pending), self.info).tolist()  # (steps, len(_STATS))
        self.pending = []
        bad = [i for i, row in enumerate(rows) if not math.isfinite(row[0])]
        if bad:  # rows never span two epochs (an epoch's last step is logged): steps back from this one
            first, back = bad[0], len(rows) - 1 - bad[0]
            raise NonFiniteLoss(
                f"loss is {rows[first][0]} at epoch {self.epoch + 1}, step {self.step_in_epoch - back} "
                f"(global step {self.global_step - back}); stopped without saving. Last good "
                f"checkpoint: {latest_checkpoint(self.run) or 'none'} (lower optim.lr or check the data, then --resume)"
            )
        self.last_step = rows[-1]
        self.skips += int(sum(row[4] for row in rows))

    def _log_step(self) -> None:
        self._flush()
        dt = time.perf_counter() - self.t0
        loss, top1, top5, labelled, _ = self.last_step
        labelled = max(labelled, 1.0)
        self.logger.write(
            {
                "kind": "step",
                "epoch": self.epoch + 1,
                "step": self.step_in_epoch,
                "global_step": self.global_step,
                "loss": loss / labelled,  # of the step's global batch, its labelled samples only
                "lr": self.sched.lr,
                "top1": top1 / labelled,
                "top5": top5 / labelled,
                "images_per_s": self.seen * self.info.world / dt if dt > 0 else 0.0,
                "skipped_images": self.skips,  # unreadable images replaced since the last line
            }
        )
        self.t0, self.seen, self.skips = time.perf_counter(), 0, 0

    def _end_epoch(self) -> None:
        """Validate, step the plateau schedule, log, keep the best weights and checkpoint."""
        o = self.recipe.optim
        top1, top5 = validate(
            self.model, self.valset, self.info, self.device, self.data.mean, self.amp, self.recipe, self.unreadable
        )
        improved = top1 > self.sched.best + o.threshold
        self.sched = plateau_step(
            self.sched, top1, patience=o.patience, factor=o.factor, max_drops=o.max_drops, threshold=o.threshold
        )
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.history.append({"epoch": self.epoch, "val_top1": top1, "val_top5": top5, "lr_next": self.sched.lr})
        self.logger.write(
            {
                "kind": "epoch",
                "epoch": self.epoch,
                "global_step": self.global_step,
                "val_top1": top1,
                "val_top5": top5,
                "lr": self.sched.lr,
                "drops": self.sched.drops,
                "unreadable_images": len(self.unreadable),  # distinct ones this process met so far
            }
        )
        if self.info.is_main:
            log.info("epoch %d: val top-1 %.4f top-5 %.4f, next lr %g", self.epoch, top1, top5, self.sched.lr)
            if improved:
                self._save_weights("best.safetensors")
        self._checkpoint(best=improved)

    # -- saving ---------------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.sched.to_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "recipe": recipe_to_dict(self.recipe),
            "init_from_sha256": self.init_sha,
            "world": self.info.world,
            "mean_rgb": list(self.data.mean),
            "data_position": self._data_position(),
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if self.cuda else []},
        }

    def _data_position(self) -> dict[str, Any]:
        """Where the run is in its data: (epoch, step) places it in a folder's permutation, whose images the digest
        of their paths, sizes and mtimes names; tar shards add the index of the training and validation shards
        read and the process count, which together fix each process's share of the stream."""
        position: dict[str, Any] = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "world": self.info.world}
        if isinstance(self.data.train, TarSplit):
            assert isinstance(self.data.val, TarSplit)
            position["shards"] = index_digest(list(self.data.train.counts))
            position["val_shards"] = index_digest(list(self.data.val.counts))
            position["samples_done"] = self.step_in_epoch * self.recipe.optim.batch_size  # of this epoch's stream
        else:
            position["images"] = self._images_digest
        return position

    @functools.cached_property
    def _images_digest(self) -> str:
        """samples_digest of a folder dataset's training and validation images (a stat of each, once a run)."""
        d = self.data
        assert d.root is not None and isinstance(d.train, Samples) and isinstance(d.val, Samples)
        return samples_digest(d.root, d.train, d.val)

    def _check_data_position(self, saved: dict[str, Any] | None, path: Path) -> None:
        """A resumed run reads the same images (a folder's) or the same stream: the same shards, and mid-epoch the
        same process count."""
        if not isinstance(self.data.train, TarSplit):
            assert self.data.root is not None
            check_images(saved, self._images_digest, path, self.data.root, self.info.is_main)
            return
        now = self._data_position()
        if saved is None or saved.get("shards") != now["shards"]:
            raise CheckpointError(
                f"{path} was written reading other training shards (other files or sample counts) than "
                f"data.train_shards names now; resume with the same shards or start over with --overwrite"
            )
        if saved.get("val_shards", now["val_shards"]) != now["val_shards"]:  # older checkpoints did not record them
            raise CheckpointError(
                f"{path} was written validating on other shards (other files or sample counts) than "
                f"data.val_shards names now; resume with the same shards or start over with --overwrite"
            )
        if saved.get("world") != now["world"] and self.step_in_epoch > 0 and self.info.is_main:
            log.warning(
                "--resume: %s was written by %s processes and this run has %d; the rest of epoch %d is dealt "
                "anew, so some of its samples are seen twice and others not at all (resume mid-epoch with the "
                "same process count for an exact resume)",
                path.name,
                saved.get("world"),
                now["world"],
                self.epoch + 1,
            )

    def _checkpoint(self, best: bool = False) -> None:
        self._flush()  # a non-finite loss since the last log line is never saved
        if self.info.is_main:
            save_checkpoint(self.run, self._state(), keep_last=self.recipe.checkpoint.keep_last, best=best)
        barrier(self.info)

    def _save_weights(self, name: str) -> None:
        self.model.preprocessing = self.preproc
        save_weights(self.model, self.run / name, metadata={"recipe": json.dumps(recipe_to_dict(self.recipe))})


def _check_finite_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """A CheckpointError naming the tensor when the weights or the momentum of `ckpt` hold NaN or inf: resuming
    would train on from them silently (model.init_from checks its files the same way)."""
    state = ckpt["optimizer"].get("state", {}) if isinstance(ckpt["optimizer"], dict) else {}
    tensors = {**ckpt["model"]}
    tensors.update(
        (f"optimizer state {i} {k}", v) for i, s in state.items() for k, v in s.items() if isinstance(v, torch.Tensor)
    )
    try:
        check_finite(tensors, str(path))
    except WeightsError as e:
        raise CheckpointError(
            f"{e}; delete it to resume from the checkpoint before, or start over with --overwrite"
        ) from None


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    valset: ValSet | TarValSet,
    info: DistInfo,
    device: torch.device,
    mean: tuple[float, float, float],
    amp: Any,
    recipe: Recipe,
    unreadable: set[str] | None = None,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of central crops, each process taking every world-th image; unreadable
    images are left out, with a warning the first time (those already in `unreadable` are not repeated)."""
    unreadable = set() if unreadable is None else unreadable
    modes = [(m, m.training) for m in model.modules()]  # given back module by module (not train() for all)
    model.eval()
    loader = torch.utils.data.DataLoader(
        valset.rank_share(info.rank, info.world, recipe.data.max_val),
        batch_size=recipe.optim.per_device_batch,
        num_workers=share_cpus(recipe.data.workers, device.type).workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_skips,
    )
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, images: synced once
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    for x, y, skipped in loader:
        for msg in set(skipped) - unreadable:
            log.warning("skipping an unreadable validation image: %s", msg)
        unreadable.update(skipped)
        # an unreadable image (label -1, a blank crop) is counted nowhere; dropping it here would cost a host sync
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = normalize_batch(x, mean_t)
        if recipe.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp or contextlib.nullcontext():
            logits = model(x)
        t1, t5 = _topk_correct(logits.float(), y)
        counts += torch.stack([t1, t5, (y >= 0).sum()]).to(counts.dtype)
    top1, top5, n = all_reduce_sum(counts, info).tolist()
    for m, training in modes:
        m.training = training
    return top1 / max(1.0, n), top5 / max(1.0, n)
