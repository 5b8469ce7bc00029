"""Extracting the paper's image descriptors (Appendix B): in memory, or into a resumable feature store.

`extract_to_store` works chunk by chunk: each finished chunk is written atomically under OUT/.partial, so
a run interrupted at any moment (Ctrl-C, kill -9) continues where it stopped when run again, and ends with
exactly the uninterrupted result. Under torchrun, ranks take every world-size-th chunk; rank 0 assembles.
What is computed travels as one Protocol (features.protocol), how as one Runtime (features.runtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vggfeat import __version__
from vggfeat.data.images import ImageError, find_input_images
from vggfeat.errors import InputError
from vggfeat.utils.distributed import DistInfo, all_reduce_sum, barrier, env_info, process_group
from vggfeat.utils.files import atomic_write_json
from vggfeat.utils.locks import FolderLockedError, folder_lock
from vggfeat.utils.progress import progress_bar

from . import inputs
from . import store as fs
from .engine import DescriptorEngine, describe_chunks
from .loader import ImageInput
from .nets import FeatureNet, NetSpec, as_feature_net, build_feature_net, random_init_note
from .overlap import BackgroundWriter
from .protocol import Protocol
from .runtime import Runtime, settings_from

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
    descriptors are stacked, the paper's D & E fusion); it runs in eval mode (no dropout) on the runtime's
    device and gets its own mode, device and memory layout back (put it on the GPU first to avoid the copies).
    `protocol` says what is computed (features.protocol: layer, scales, flip, aggregate, l2, ...),
    `runtime` how (features.runtime: device, batch_size, workers, precision, winograd, ...); their fields are
    also accepted as keywords, e.g. `scales=(256, 384)`, `device="cpu"`. A bad image file raises ImageError
    naming it.
    """
    protocol, runtime = settings_from(protocol, runtime, settings)
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    # descriptors are inference: dropout off whatever mode the caller's net is in (create_model returns a net
    # in training mode); each submodule's mode is put back afterwards, so a net being trained stays in training.
    # The engine moves the nets to the runtime's device and memory layout; the caller's tensors are put back
    # too, so a CPU net stays usable on the CPU after a CUDA extraction (no copy: the originals are kept)
    modes = [(module, module.training) for m in models for module in m.modules()]
    placement = [
        (table, name, tensor, tensor.data)
        for m in models
        for module in m.modules()
        for table in (module._parameters, module._buffers)
        for name, tensor in table.items()
        if tensor is not None
    ]
    try:
        nets = [as_feature_net(m, protocol.layer).eval() for m in models]
        index, feats, skipped = describe_images(nets, images, protocol, runtime, chunk_size)
    finally:
        for module, training in modes:
            module.training = training
        for table, name, tensor, data in placement:
            table[name] = tensor  # the same object, should a conversion have replaced it
            tensor.data = data
    if skipped:
        i, reason = skipped[0]
        raise ImageError(images[i], reason)
    out = np.empty_like(feats)
    out[index] = feats  # every image, in input order
    return out


def _settings(
    paths: list[str], specs: list[dict], protocol: Protocol, dtype: str, chunk_size: int, runtime: Runtime
) -> dict:
    """What determines a store's content: a different value means a different store."""
    inputs = hashlib.sha256("\n".join(paths).encode("utf-8", "surrogateescape")).hexdigest()
    return {
        "models": specs,
        **protocol.to_dict(),
        **({"gpu_decode": True} if runtime.gpu_decode else {}),  # other pixels (kept out when off: older stores)
        "dtype": dtype,
        "chunk_size": chunk_size,
        "n_inputs": len(paths),
        "inputs_sha256": inputs,
    }


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]


@dataclass
class _Plan:
    """What `_prepare_out` found in OUT; nothing is changed there until the nets are built (a bad --layer or
    weight file must not cost the old store)."""

    done: bool = False  # OUT holds the finished store for these settings and inputs
    discard_partial: bool = False  # .partial holds another run's chunks, to drop (none finished, or --overwrite)
    reopen: list[int] | None = None  # inputs changed since the finished store was made: re-extract their chunks
    drop: set[int] = field(default_factory=set)  # chunk ids of .partial whose inputs changed since written


def _prepare_out(out: Path, settings: dict, paths: list[str], identities: list, overwrite: bool) -> _Plan:
    """Check OUT against the asked settings and inputs, refusing what must not be replaced; changes nothing."""
    settings_file = fs.partial_dir(out) / fs.SETTINGS_FILE
    plan = _Plan()
    manifest = None
    if fs.is_complete_store(out):
        try:
            manifest = fs.load_store(out).manifest
        except fs.StoreError:  # truncated or not JSON: its message says --overwrite rebuilds it
            if not overwrite:
                raise
    if manifest is not None:
        diff = _differences(manifest.get("settings", {}), settings)
        if not diff:
            changed = inputs.changed_inputs(manifest.get("input_identities"), identities)
            if not changed:
                return _Plan(done=True)
            log.warning("%s: %s; re-extracting them", out, inputs.describe_changes(paths, changed))
            plan.reopen = changed
        elif not overwrite:
            raise FileExistsError(
                f"{out} holds a finished store with other settings ({'; '.join(diff)}); "
                "pass --overwrite to replace it, or choose another -o"
            )
    if settings_file.is_file():
        diff = _differences(json.loads(settings_file.read_text()), settings)
        has_work = any(fs.partial_dir(out).glob("chunk_*.npz"))
        if diff and has_work and not overwrite:
            raise FileExistsError(
                f"{out} holds an unfinished run with other settings ({'; '.join(diff)}); "
                "run it again with its own settings to finish it, or pass --overwrite"
            )
        plan.discard_partial = bool(diff)  # nothing of value is lost: no chunk was finished, or --overwrite
        inputs_file = fs.partial_dir(out) / inputs.INPUTS_FILE
        if not diff and inputs_file.is_file():
            changed = inputs.changed_inputs(json.loads(inputs_file.read_text()), identities)
            plan.drop = {i // settings["chunk_size"] for i in changed}
    return plan


def _apply(out: Path, plan: _Plan, settings: dict, identities: list, paths: list[str]) -> None:
    """Carry out the plan (rank 0, after the nets were built): OUT/.partial ends up holding this run's settings,
    its inputs' identities and only chunks that are still valid."""
    partial = fs.partial_dir(out)
    if plan.discard_partial:
        shutil.rmtree(partial)
    chunk_size = settings["chunk_size"]
    drop = set(plan.drop)
    if plan.reopen is not None:
        drop |= {i // chunk_size for i in plan.reopen}
        inputs.reopen_store(out, paths, chunk_size, plan.reopen)
    for c_id in drop:
        fs.chunk_path(out, c_id).unlink(missing_ok=True)
    partial.mkdir(parents=True, exist_ok=True)
    if not (partial / fs.SETTINGS_FILE).is_file():
        atomic_write_json(partial / fs.SETTINGS_FILE, settings)
    atomic_write_json(partial / inputs.INPUTS_FILE, identities)


def extract_to_store(
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
    chunk_size: int = 256,
    hash_inputs: bool = False,
    **settings: Any,
) -> fs.FeatureStore:
    """Extract descriptors of image files/folders/@lists into the store OUT, resuming an unfinished run.

    `protocol` and `runtime` as for `extract_features` (their fields also as keywords); the runtime's
    default here uses 2 loader workers. Under torchrun the ranks share the chunks and the process group
    this call creates is destroyed before it returns.

    OUT is locked for the run (a second writer stops with FolderLockedError). Each input's size and mtime
    (with `hash_inputs`, also its sha256) are recorded: a rerun re-extracts the inputs that changed. With
    `overwrite`, a store of other settings in OUT stays whole and loadable until the new one is complete.
    """
    protocol, runtime = settings_from(protocol, runtime, settings, runtime_defaults={"workers": 2})
    if dtype not in STORE_DTYPES:
        raise InputError(f"unknown store dtype {dtype!r}; valid: {', '.join(STORE_DTYPES)}")
    paths = [str(p) for p in find_input_images(images)]
    specs = [NetSpec(str(m), None if w is None else str(w)) for m, w in models]
    spec_info = [s.describe() for s in specs]
    settings = _settings(paths, spec_info, protocol, dtype, chunk_size, runtime)
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)

    env = env_info()
    if env.world > 1 and runtime.device == "auto" and torch.cuda.is_available():
        runtime = replace(runtime, device=f"cuda:{env.local_rank}")
    with process_group(runtime.torch_device().type) as info, _store_lock(out, info):
        rank, world = info.rank, info.world
        identities = inputs.input_identities(paths, hash_inputs)
        plan = _prepare_out(out, settings, paths, identities, overwrite)
        if plan.done:
            log.info("%s is already complete with these settings: nothing to do", out)
            store = fs.load_store(out)
            store.already_complete = True
            return store

        for spec in specs:
            if spec.weights is None:
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
        barrier(info)
        if rank == 0:  # only now, with the nets built, may OUT change
            _apply(out, plan, settings, identities, paths)
        barrier(info)
        chunks = _chunks(len(paths), chunk_size)
        mine = [c for c_id, c in enumerate(chunks) if c_id % world == rank]
        todo = [c for c in mine if not fs.chunk_path(out, c.start // chunk_size).is_file()]
        done_images = sum(len(c) for c in mine) - sum(len(c) for c in todo)

        bar = _ImageProgress(sum(len(c) for c in mine), done_images, len(protocol.scales), progress and rank == 0)
        try:
            with BackgroundWriter() as writer:  # the next chunk computes while this one is written
                for chunk, index, feats, skipped in describe_chunks(engine, paths, todo, bar.batch_done):
                    if skipped and strict:
                        i, reason = skipped[0]
                        raise ImageError(paths[i], f"{reason} (--strict makes bad inputs fatal)")
                    writer.submit(fs.write_chunk, out, chunk.start // chunk_size, index, feats, skipped)
                    bar.chunk_done(len(chunk))
        finally:
            bar.close()
        barrier(info)
        _check_some_usable(out, paths, images, len(chunks), info, created)
        if rank == 0:
            manifest = {
                "vggfeat_version": __version__,
                "models": spec_info,
                **protocol.to_dict(),
                "dim": engine.dim,
                "dtype": dtype,
                "n_inputs": len(paths),
                "cwd": os.getcwd(),  # what relative input paths are relative to (index search prints openable paths)
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "settings": settings,
                "input_identities": identities,
            }
            fs.assemble_store(out, len(chunks), paths, engine.dim, dtype, manifest)
        barrier(info)
        return fs.load_store(out)


@contextmanager
def _store_lock(out: Path, info: DistInfo) -> Iterator[None]:
    """OUT's writer lock, held by rank 0 for the whole torchrun job (its ranks are one writer); every rank
    learns whether it was taken, so none waits at a barrier for a job that stopped."""
    error = None
    with ExitStack() as stack:
        if info.rank == 0:
            try:
                fix = "wait for that extraction to finish (or stop it), or choose another -o"
                stack.enter_context(folder_lock(out, "written", fix))
            except FolderLockedError as e:
                error = e
        if info.world > 1:
            on = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            failed = all_reduce_sum(torch.tensor([int(error is not None)], device=on), info)
            if failed.item() and error is None:
                error = FolderLockedError(f"{out} is being written by another process (see rank 0's error)")
        if error is not None:
            raise error
        yield


def _check_some_usable(
    out: Path, paths: list[str], inputs: Sequence, n_chunks: int, info: DistInfo, created: bool
) -> None:
    """An InputError naming the inputs and why each image was skipped when not one was usable (every rank
    raises it). The chunks are removed (and OUT, when this run made it): they hold nothing, and a rerun after
    fixing the files decodes afresh."""
    skipped: list[tuple[int, str]] = []
    for c in range(n_chunks):
        index, _, chunk_skipped = fs.read_chunk(out, c)
        if len(index):
            return
        skipped.extend(chunk_skipped)
    barrier(info)  # every rank has read the chunks before rank 0 removes them
    if info.rank == 0:
        shutil.rmtree(fs.partial_dir(out), ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
    raise no_usable_image(inputs, paths, skipped)


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

    def __init__(self, total: int, initial: int, n_scales: int, enabled: bool) -> None:
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
