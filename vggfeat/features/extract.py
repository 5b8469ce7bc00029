"""Extracting the paper's image descriptors (Appendix B): in memory, or into a resumable, sharded feature store.

`extract_part` writes shards (features.shard_files): each appears whole or not at all, so a run interrupted
at any moment (Ctrl-C, kill -9) continues with the shards not done when run again, and ends with exactly the
uninterrupted result. Parts (--part I/N, SLURM array tasks, torchrun ranks) write disjoint shards of one store.
What is computed travels as one Protocol (features.protocol), how as one Runtime (features.runtime).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vggfeat import __version__
from vggfeat.data.images import EncodedImage, ImageError
from vggfeat.data.tar_shards import TarProblem, iter_tar_samples
from vggfeat.errors import InputError, VggfeatError
from vggfeat.utils.distributed import DistInfo, barrier, env_info, process_group
from vggfeat.utils.files import atomic_write_json, sha256_json
from vggfeat.utils.inputs import input_identities, listing_digest
from vggfeat.utils.locks import FolderLockedError, folder_lock
from vggfeat.utils.progress import progress_bar
from vggfeat.weight_sources import RANDOM

from . import chunk_files, shard_files
from . import store as fs
from .engine import DescriptorEngine, describe_chunks
from .list_plan import CACHE_DIR as LIST_PLANS
from .loader import ImageInput
from .nets import FeatureNet, NetSpec, as_feature_net, build_feature_net, random_init_note
from .protocol import Protocol
from .runtime import Runtime, settings_from
from .shard_files import StoreStatus
from .shard_plan import DEFAULT_SHARD_SIZE, ShardPlan, ShardSource, part_shards, plan_shards, this_part

log = logging.getLogger(__name__)
STORE_DTYPES = ("float32", "float16")


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def describe_images(
    nets: Sequence[FeatureNet],
    images: Sequence[ImageInput],
    protocol: Protocol,
    runtime: Runtime,
    chunk_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(indices of the usable images, their descriptors (N_ok, D), [(index, reason) skipped]), in memory."""
    engine = DescriptorEngine(nets, protocol, runtime)
    rows, parts, skipped = [], [], []
    for _, index, feats, bad in describe_chunks(engine, images, _chunks(len(images), chunk_size)):
        rows.append(index)
        parts.append(feats)
        skipped.extend(bad)
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, engine.dim), np.float32), skipped
    return np.concatenate(rows), np.concatenate(parts), skipped


def extract_features(
    model: nn.Module | FeatureNet | Sequence[nn.Module | FeatureNet],
    images: Sequence[ImageInput],
    protocol: Protocol | None = None,
    runtime: Runtime | None = None,
    *,
    chunk_size: int = 256,
    **settings: Any,
) -> np.ndarray:
    """Descriptors (N, D) of `images` (paths, PIL images or HxWx3 uint8 arrays), in input order.

    `model` is a vggfeat VGG (pooled at the protocol's layer), a timm model, or a list of them (their
    descriptors are stacked, the paper's D & E fusion). It is never changed: the engine runs its own copy, in
    eval mode (no dropout) on the runtime's device and memory layout, sharing the net's weight memory where no
    conversion is needed (put the net on the GPU first to avoid the copies).
    `protocol` says what is computed (features.protocol: layer, scales, flip, aggregate, l2, ...),
    `runtime` how (features.runtime: device, batch_size, workers, precision, winograd, ...); their fields are
    also accepted as keywords, e.g. `scales=(256, 384)`, `device="cpu"`. A bad image file raises ImageError
    naming it.
    """
    protocol, runtime = settings_from(protocol, runtime, settings)
    models = [model] if isinstance(model, nn.Module) else list(model)
    nets = [as_feature_net(m, protocol.layer) for m in models]
    index, feats, skipped = describe_images(nets, images, protocol, runtime, chunk_size)
    if skipped:
        i, reason = skipped[0]
        bad = images[i]
        raise ImageError(bad if isinstance(bad, (str, Path)) else f"image {i}", reason)
    out = np.empty_like(feats)
    out[index] = feats  # every image, in input order
    return out


NEXT_DIR = ".next"  # a store replacing OUT's (--overwrite) is made here and swapped in when complete


def _settings(
    planned: ShardPlan,
    specs: list[dict],
    protocol: Protocol,
    dtype: str,
    shard_size: int | None,
    seed: int,
    runtime: Runtime,
) -> dict:
    """What determines a store's content: a different value means a different store. A random net's seed is
    part of it (its rows are another net's), a trained net's is not."""
    settings = {
        "models": specs,
        **protocol.to_dict(),
        **runtime.identity(),  # other pixels or bf16 rounding (kept out when off: older stores)
        "dtype": dtype,
        "shard_size": shard_size,
        "n_inputs": planned.n_inputs,
        "inputs_sha256": planned.inputs_sha256,
    }
    if any(s["weights"] is None or s["weights"] == RANDOM for s in specs):
        settings["seed"] = seed
    return settings


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted({*old, *new}) if old.get(k) != new.get(k)]


def _shard_identity(src: ShardSource, hash_inputs: bool) -> str:
    """A hash of what a shard is made from: its inputs' paths and identities (size, mtime_ns[, sha256]), or
    its tar's. A rerun redoes a shard whose inputs changed since it was written."""
    return listing_digest([src.tar] if src.tar is not None else list(src.input_paths()), hash_inputs)


@dataclass
class PartResult:
    """What one part of an extraction did, and where the whole store stands."""

    status: StoreStatus
    part: tuple[int, int]
    written: list[str] = field(default_factory=list)  # shards this call wrote
    busy: list[str] = field(default_factory=list)  # shards another live process was writing (left to it)
    store: fs.FeatureStore | None = None  # the store, when complete


def _claim_plan(out: Path, plan: dict, overwrite: bool) -> None:
    """Make OUT's plan.json this run's (under the manifest lock: parts start at once). Another store in OUT is
    refused, or with `overwrite` removed; a store of the same settings is continued."""
    with shard_files.manifest_lock(out):
        if fs.is_single_file_store(out):
            if not overwrite:
                raise FileExistsError(
                    f"{out} holds a store of the single-file format (features.npy); convert it with "
                    f"`vggfeat store convert {out} NEW`, or pass --overwrite to replace it"
                )
            for name in (fs.FEATURES_FILE, fs.MANIFEST_FILE):
                (out / name).unlink(missing_ok=True)
        for old_chunk in (out / chunk_files.PARTIAL_DIR).glob("*.*"):  # chunk files of the format before shards
            old_chunk.unlink(missing_ok=True)
        old = shard_files.read_plan(out, replacing=overwrite)
        if old is not None and old.get("settings") == plan["settings"]:
            if old.get("command") is None and plan.get("command"):
                atomic_write_json(out / fs.PLAN_FILE, {**old, "command": plan["command"]})
            return
        if old is not None:
            done = any((out / fs.DONE_DIR).glob("*.json"))
            if done and not overwrite:
                finished = fs.is_complete_store(out)
                diff = _differences(old.get("settings", {}), plan["settings"])
                raise FileExistsError(
                    f"{out} holds {'a finished store' if finished else 'an unfinished run'} with other settings "
                    f"({'; '.join(diff)}); "
                    + (
                        "pass --overwrite to replace it, or choose another -o"
                        if finished
                        else "run it again with its own settings to finish it, or pass --overwrite"
                    )
                )
        for sub in (fs.EMB_DIR, fs.META_DIR, fs.DONE_DIR, chunk_files.PARTIAL_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / fs.MANIFEST_FILE).unlink(missing_ok=True)
        atomic_write_json(out / fs.PLAN_FILE, plan)


def extract_to_store(
    images: Sequence[str | Path],
    out: str | Path,
    protocol: Protocol | None = None,
    runtime: Runtime | None = None,
    **kwargs: Any,
) -> fs.FeatureStore:
    """Extract descriptors of image files/folders/@lists (or tar shards) into the sharded store OUT, resuming
    an unfinished run; returns the finished store. Keywords as `extract_part`; a `part` that leaves the store
    unfinished raises StoreError with its status (use `extract_part` to run one part of many)."""
    result = extract_part(images, out, protocol, runtime, **kwargs)
    if result.store is None:
        raise fs.StoreError(f"{out}: {result.status.summary(one_line=True)}")
    return result.store


def extract_part(
    images: Sequence[str | Path],
    out: str | Path,
    protocol: Protocol | None = None,
    runtime: Runtime | None = None,
    *,
    models: Sequence[tuple[str, str | Path | None]] = (("vgg_d", None),),
    dtype: str = "float32",
    seed: int = 0,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = True,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_size: int = 256,
    hash_inputs: bool = False,
    part: tuple[int, int] | None = None,
    command: str | None = None,
    planned: ShardPlan | None = None,
    **settings: Any,
) -> PartResult:
    """Write this part's shards of the store OUT (every shard without `part` and outside a SLURM array or
    torchrun; see shard_plan.default_part), skipping shards already done from the same settings and inputs.

    One input tar is one shard; loose inputs form shards of `shard_size`. Within a shard, `chunk_size` images are
    decoded at a time, and each finished chunk is kept, so an interruption loses at most one chunk's work.
    Each shard is locked while written, so processes given the same part share the work and never write one
    shard twice. Each input's size and mtime (with `hash_inputs`, also its sha256) are recorded: a rerun
    redoes the shards whose inputs changed. Another store in OUT is refused, or replaced with `overwrite`.
    `command` is recorded as the command that finishes an unfinished store (`vggfeat store status`).
    `planned`: what `plan_shards(images, shard_size, OUT, hash_inputs)` returned, when the caller has it (inputs
    walked once). @list inputs are planned once for all parts and reruns, in OUT/.listing (features.list_plan).
    """
    protocol, runtime = settings_from(protocol, runtime, settings, runtime_defaults={"workers": 2})
    if dtype not in STORE_DTYPES:
        raise InputError(f"unknown store dtype {dtype!r}; valid: {', '.join(STORE_DTYPES)}")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be at least 1, not {chunk_size}")
    out = Path(out)
    created = not out.exists()
    which = this_part(part)
    if planned is None or planned.part not in (None, which):  # a plan that holds another part's paths
        planned = plan_shards([str(i) for i in images], shard_size, out, hash_inputs, which)
    shards = planned.shards
    tars = any(s.tar is not None for s in shards)
    specs = [NetSpec(str(m), None if w is None else str(w)) for m, w in models]
    spec_info = [s.describe() for s in specs]
    store_settings = _settings(planned, spec_info, protocol, dtype, None if tars else shard_size, seed, runtime)
    settings_sha = sha256_json(store_settings)
    out.mkdir(parents=True, exist_ok=True)

    env = env_info()
    if env.world > 1 and runtime.device == "auto" and torch.cuda.is_available():
        runtime = replace(runtime, device=f"cuda:{env.local_rank}")
    with process_group(runtime.torch_device().type) as info:
        mine = part_shards(shards, *which)
        identities: dict[str, str] = {}
        target = _target(out, store_settings, overwrite)

        def todo() -> list[ShardSource]:
            return [
                s
                for s in mine
                if shard_files.shard_problem(
                    target, s.name, {"settings_sha256": settings_sha, "inputs_sha256": identities[s.name]}
                )
                is not None
            ]

        old_plan = shard_files.read_plan(target, replacing=overwrite or target != out)
        if old_plan is not None and old_plan.get("settings") == store_settings:
            identities.update({s.name: _shard_identity(s, hash_inputs) for s in mine})
            if not todo():  # this part's shards are all done: no net is built
                return _finish(out, target, which, [], [], info, images, created, already=target == out)

        for spec in specs:
            if spec.is_random:
                log.warning(
                    "no weights for %s: it is RANDOMLY INITIALISED (%s); its descriptors carry no learned information",
                    spec.model,
                    random_init_note(spec.model, seed),
                )
        torch_device = runtime.torch_device()
        if torch_device.type == "cuda" and torch_device.index is not None:
            torch.cuda.set_device(torch_device)
        nets = [build_feature_net(s, protocol.layer, seed) for s in specs]  # a bad --layer fails here, before writes
        engine = DescriptorEngine(nets, protocol, runtime)
        del nets  # the engine runs its own copies: the built nets' memory is freed where the copies converted it
        plan = {
            "format": fs.FORMAT,
            "settings": store_settings,
            "settings_sha256": settings_sha,
            "store": {
                "vggfeat_version": __version__,
                "models": spec_info,
                **protocol.to_dict(),
                "dim": engine.dim,
                "dtype": dtype,
                "n_inputs": planned.n_inputs,
                "input": "tar" if tars else "files",
                "hash_inputs": hash_inputs,
                "cwd": os.getcwd(),  # what relative input paths are relative to (index search prints openable paths)
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "shards": [s.describe() for s in shards],
            "command": command,
        }
        target.mkdir(exist_ok=True)
        _claim_plan(target, plan, overwrite or target != out)
        identities.update({s.name: _shard_identity(s, hash_inputs) for s in mine if s.name not in identities})
        work = todo()
        total = None if tars else sum(s.n_inputs for s in work)
        bar = _ImageProgress(total, 0, len(protocol.scales), progress and info.rank == 0)
        written, busy = [], []
        writer = _ShardWriter(target, engine, dtype, strict, hash_inputs, bar, chunk_size)
        fix = "it is being written by another process running the same part"
        try:
            for src in work:
                try:
                    with folder_lock(target / ".locks" / src.name, "written", fix):
                        problem = shard_files.shard_problem(
                            target, src.name, {"settings_sha256": settings_sha, "inputs_sha256": identities[src.name]}
                        )
                        if problem is None:  # another process finished it meanwhile
                            continue
                        if problem != "not started":
                            log.warning("%s: shard %s %s; redoing it", target, src.name, problem)
                        shard_files.clear_shard(target, src.name)
                        try:
                            writer.write(src, {"settings_sha256": settings_sha, "inputs_sha256": identities[src.name]})
                        except VggfeatError as e:  # `vggfeat store status` says which shard failed, and why
                            shard_files.record_failure(target, src.name, str(e))
                            raise
                        written.append(src.name)
                except FolderLockedError:
                    busy.append(src.name)
        finally:
            bar.close()
        return _finish(out, target, which, written, busy, info, images, created, already=False)


def _target(out: Path, settings: dict, overwrite: bool) -> Path:
    """Where this run writes: OUT, or with --overwrite over a finished store of other settings, OUT/.next,
    swapped in when complete (the old store stays whole and loadable until then; a rerun resumes .next)."""
    nxt = out / NEXT_DIR
    pending = shard_files.read_plan(nxt, replacing=overwrite) if nxt.is_dir() else None
    if pending is not None and pending.get("settings") == settings:
        return nxt
    if not overwrite:
        return out
    if fs.is_single_file_store(out):
        return nxt
    old = shard_files.read_plan(out, replacing=True)  # only read with --overwrite
    if old is not None and old.get("settings") != settings and fs.is_complete_store(out):
        return nxt
    return out


def _swap_in(out: Path, nxt: Path) -> None:
    """Replace OUT's store by the complete one in OUT/.next (under the manifest lock). OUT loses its manifest
    first, so no reader takes a half-swapped folder for a finished store."""
    with shard_files.manifest_lock(out):
        if not nxt.is_dir():  # another part swapped it in already
            return
        (out / fs.MANIFEST_FILE).unlink(missing_ok=True)
        for name in (fs.FEATURES_FILE, fs.PLAN_FILE):
            (out / name).unlink(missing_ok=True)
        for sub in (fs.EMB_DIR, fs.META_DIR, fs.DONE_DIR, ".partial"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in (fs.EMB_DIR, fs.META_DIR, fs.DONE_DIR, fs.PLAN_FILE):
            os.replace(nxt / name, out / name)
        shutil.rmtree(nxt, ignore_errors=True)
    shard_files.store_status(out, rebuild=True)


def _finish(
    out: Path,
    target: Path,
    part: tuple[int, int],
    written: list[str],
    busy: list[str],
    info: DistInfo,
    images: Sequence[str | Path],
    created: bool,
    already: bool,
) -> PartResult:
    """The store's status after this part (manifest.json rebuilt from the done records); the store itself
    when every shard is done. A store whose every input was skipped is an InputError (and removed)."""
    barrier(info)  # under torchrun every rank returns the whole store
    status = shard_files.store_status(target, rebuild=True)
    result = PartResult(status, part, written, busy)
    if not status.complete:
        return result
    if status.rows == 0:
        records = [shard_files.read_done_record(target, name) or {} for name in status.done]
        skipped = [s for r in records for s in r.get("skipped", [])]
        barrier(info)
        if info.rank == 0:
            for sub in (fs.EMB_DIR, fs.META_DIR, fs.DONE_DIR, ".locks", NEXT_DIR):
                shutil.rmtree(target / sub, ignore_errors=True)
            shutil.rmtree(out / LIST_PLANS, ignore_errors=True)  # saved @list plans live in OUT only
            for name in (fs.PLAN_FILE, fs.MANIFEST_FILE, shard_files.MANIFEST_LOCK):
                (target / name).unlink(missing_ok=True)
            if target != out:
                shutil.rmtree(target, ignore_errors=True)
            elif created and not any(out.iterdir()):
                out.rmdir()
        paths = [s["path"] for s in skipped]
        raise no_usable_image(images, paths, [(i, s["reason"]) for i, s in enumerate(skipped)])
    if target != out:
        barrier(info)
        if info.rank == 0:
            _swap_in(out, target)
        barrier(info)
    result.status = shard_files.store_status(out)
    result.store = fs.load_store(out)
    result.store.already_complete = already
    return result


class _ShardWriter:
    """Describes one shard's inputs (a group of files, or a tar's samples) in chunks of `chunk_size` decoded
    images, and writes the shard whole. Each finished chunk is kept under OUT/.partial/<shard>/ (chunk_files),
    so an interruption loses at most one chunk's work, not the shard's."""

    def __init__(
        self,
        out: Path,
        engine: DescriptorEngine,
        dtype: str,
        strict: bool,
        hash_inputs: bool,
        bar: _ImageProgress,
        chunk_size: int,
    ) -> None:
        self.out, self.engine, self.dtype, self.strict, self.hash_inputs = out, engine, dtype, strict, hash_inputs
        self.bar, self.chunk_size = bar, chunk_size
        self.chunks: chunk_files.ChunkCache | None = None

    def write(self, src: ShardSource, identity: dict[str, str]) -> None:
        self.chunks = chunk_files.ChunkCache(self.out, src.name, {**identity, "chunk_size": self.chunk_size})
        feats, columns, skipped, problem = self._tar(src) if src.tar is not None else self._files(src)
        record: dict[str, Any] = {**identity, "source": src.describe(), "skipped": skipped}
        if problem:
            record["problem"] = problem
        stored = _to_store_dtype(feats, self.dtype, columns["path"])
        shard_files.write_shard(self.out, src.name, stored, columns, record)
        self.chunks.remove()

    def _describe(
        self, images: Sequence[ImageInput], names: Sequence[str], first: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list]]:
        """(ok indices, descriptors, [(index, reason)]) per chunk of `images`, in order; chunk k of these images
        is the shard's chunk first + k, read back from its chunk file when an earlier run finished it."""
        cache = self.chunks
        assert cache is not None  # set by write() for the shard being written
        chunks = _chunks(len(images), self.chunk_size)
        cached = {k: cache.read(first + k, len(c), self.engine.dim) for k, c in enumerate(chunks)}
        done = {k: v for k, v in cached.items() if v is not None}
        todo = [c for k, c in enumerate(chunks) if k not in done]
        computed = describe_chunks(self.engine, images, todo, self.bar.batch_done)
        for k, chunk in enumerate(chunks):
            if k in done:
                index, feats, bad = done[k]
            else:
                _, index, feats, bad = next(computed)
                if bad and self.strict:
                    i, reason = bad[0]
                    raise ImageError(names[i], f"{reason} (--strict makes bad inputs fatal)")
                cache.write(first + k, index - chunk.start, feats, [(i - chunk.start, r) for i, r in bad])
                index, bad = index - chunk.start, [(i - chunk.start, r) for i, r in bad]
            self.bar.chunk_done(len(chunk))
            yield index + chunk.start, feats, [(i + chunk.start, r) for i, r in bad]

    def _files(self, src: ShardSource) -> tuple[np.ndarray, dict[str, list], list[dict], str | None]:
        paths = list(src.input_paths())
        ids = input_identities(paths, self.hash_inputs)
        rows: list[int] = []
        parts: list[np.ndarray] = []
        skipped: list[dict] = []
        for index, feats, bad in self._describe(paths, paths):
            rows.extend(index.tolist())
            parts.append(feats)
            skipped.extend({"path": paths[i], "key": paths[i], "reason": r} for i, r in bad)
        idents = [ids[i] for i in rows]
        columns: dict[str, list] = {
            "path": [paths[i] for i in rows],
            "key": [paths[i] for i in rows],
            "size": [d[0] if d else None for d in idents],
            "mtime_ns": [d[1] if d else None for d in idents],
            "sha256": [d[2] if d and len(d) > 2 else None for d in idents],
        }
        return _stack(parts, self.engine.dim), columns, skipped, None

    def _tar(self, src: ShardSource) -> tuple[np.ndarray, dict[str, list], list[dict], str | None]:
        columns: dict[str, list] = {"path": [], "key": [], "size": [], "mtime_ns": [], "sha256": []}
        parts: list[np.ndarray] = []
        skipped: list[dict] = []
        problems: list[str] = []
        window: list = []
        windows = 0

        def flush() -> None:
            nonlocal windows
            names = [f"{s.url}#{s.image_member}" for s in window]
            images = [EncodedImage(s.data, name) for s, name in zip(window, names, strict=True)]
            windows += 1
            for index, feats, bad in self._describe(images, names, first=windows - 1):
                parts.append(feats)
                for i in index.tolist():
                    s = window[i]
                    columns["path"].append(names[i])
                    columns["key"].append(s.key)
                    columns["size"].append(len(s.data))
                    columns["mtime_ns"].append(None)
                    columns["sha256"].append(hashlib.sha256(s.data).hexdigest() if self.hash_inputs else None)
                skipped.extend({"path": names[i], "key": window[i].key, "reason": r} for i, r in bad)
            window.clear()

        assert src.tar is not None  # write() sends only tar shards here
        for item in iter_tar_samples(src.tar):
            if isinstance(item, TarProblem):
                skipped.append({"path": f"{item.url}#{item.key}", "key": item.key, "reason": item.reason})
                problems.append(item.reason)
                continue
            window.append(item)
            if len(window) == self.chunk_size:
                flush()
        if window:
            flush()
        return _stack(parts, self.engine.dim), columns, skipped, "; ".join(problems) or None


def _stack(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def _to_store_dtype(feats: np.ndarray, dtype: str, paths: Sequence[str]) -> np.ndarray:
    """The rows in the store's dtype; a non-finite descriptor, or one beyond float16's range under
    --dtype float16, is refused (naming the input) instead of written."""
    finite = np.isfinite(feats).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise InputError(
            f"{paths[i]}: its descriptor is not finite (NaN or inf) - the net's weights or input overflowed; "
            "nothing of this shard was written (check the weights, e.g. `vggfeat weights info`)"
        )
    if dtype == "float16":
        limit = float(np.finfo(np.float16).max)
        big = np.abs(feats).max(axis=1) > limit if len(feats) else np.zeros(0, bool)
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise InputError(
                f"{paths[i]}: its descriptor reaches {float(np.abs(feats[i]).max()):.4g}, beyond float16's range "
                f"({limit:g}); use --dtype float32, or keep --l2 (descriptors of length 1)"
            )
    return feats.astype(np.dtype(dtype), copy=False)


def no_usable_image(inputs: Sequence, paths: Sequence[str], skipped: list[tuple[int, str]]) -> InputError:
    """The error when every input was skipped: the inputs as given, and why each image was (the first 5)."""
    why = "; ".join(f"{paths[i]}: {reason}" for i, reason in sorted(skipped)[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return InputError(
        f"no usable image in {', '.join(map(str, inputs))}: all {len(paths)} inputs were skipped ({why}{more})"
    )


class _ImageProgress:
    """The bar counts images and advances after every batch, not every chunk, so its rate and ETA are there
    from the first batch. A batch runs its images at one of S scales: it is worth n / S images of progress
    (shown in whole images); a finished chunk counts all its inputs, skipped ones included."""

    def __init__(self, total: int | None, initial: int, n_scales: int, enabled: bool) -> None:
        self.n_scales, self.done, self.views = n_scales, initial, 0
        self.bar = None
        if enabled:  # on stderr: redrawn on a terminal, a line every 30 s in a log (utils.progress)
            self.bar = progress_bar(total, initial=initial, unit="img", desc="extract")

    def _show(self, images: int) -> None:
        if self.bar is not None and images > self.bar.n:
            self.bar.update(images - self.bar.n)

    def batch_done(self, n: int) -> None:
        self.views += n  # images run at one scale
        self._show(self.done + self.views // self.n_scales)

    def chunk_done(self, n: int) -> None:
        self.done, self.views = self.done + n, 0
        self._show(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
