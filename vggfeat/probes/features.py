"""Descriptors for a probe: rows of an existing feature store matched to a benchmark's images, or a store
extracted on the fly and cached in the probe's output folder (Appendix B settings per benchmark).

A cached store lives in OUT/features/<hash of settings and image list>/, so a second probe with the same
features (another C grid, kNN instead of SVMs) extracts nothing, and an interrupted extraction resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vggfeat.features.protocol import FUSION_L2_HELP, Protocol, fuse_nets
from vggfeat.features.runtime import Runtime
from vggfeat.features.store import FeatureStore
from vggfeat.utils.locks import folder_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractionSettings:
    """What a benchmark's descriptors are: the nets, the protocol, and the seed of nets without weights."""

    models: tuple[tuple[str, str | None], ...]  # (model name, weight file or None for a random net)
    protocol: Protocol = Protocol()
    seed: int = 0

    def key(self, runtime: Runtime | None) -> str:
        """A short hash naming the cache folder; weight files and names enter by content, not by name, and the
        runtime (None: the default one) by what changes descriptors beyond rounding (Runtime.identity)."""
        from vggfeat.models.resolve import resolve_weights

        p = self.protocol.to_dict()
        # the fields a cache key held before snap and fast_decode existed, so older caches are still found
        desc = {k: p[k] for k in ("layer", "scales", "aggregate", "flip", "l2", "l2_parts")}
        desc.update({k: p[k] for k in ("snap", "fast_decode") if p[k] != getattr(Protocol(), k)})
        desc["models"] = [(m, w if w is None or w == "random" else resolve_weights(w).sha256()) for m, w in self.models]
        desc["seed"] = self.seed
        desc.update((runtime or Runtime()).identity())  # empty for float32 without GPU decoding: older keys hold
        return hashlib.sha256(json.dumps(desc, sort_keys=True, default=list).encode()).hexdigest()[:12]


def cache_key(settings: ExtractionSettings, images: Sequence[str], runtime: Runtime | None) -> str:
    """The cache folder's name: a short hash of the settings (with the runtime's identity) and of the sorted
    image paths."""
    listing = hashlib.sha256("\n".join(images).encode("utf-8", "surrogateescape")).hexdigest()
    return hashlib.sha256(f"{settings.key(runtime)} {listing}".encode()).hexdigest()[:12]


def cached_store(
    images: Sequence[str],
    out: str | Path,
    settings: ExtractionSettings,
    runtime: Runtime | None = None,
    *,
    progress: bool = True,
) -> FeatureStore:
    """Extract `images` into OUT/features/<key>/ unless a finished store of these images and settings is there.

    The key covers the settings and the image list, so another dataset (`--root voc2` after `--root voc1`)
    gets its own store; extract_to_store then checks each image's size and mtime, so an image replaced at the
    same path is re-extracted instead of served from the cache."""
    from vggfeat.features.extract import extract_to_store

    images = sorted(set(images))
    runtime = runtime or Runtime(workers=2)
    root = Path(out) / "features" / cache_key(settings, images, runtime)
    # one probe fills a cache at a time (a store's shards may be shared by parts; a probe's cache is not)
    with folder_lock(root, "written", "wait for that probe to finish, or choose another -o"):
        return extract_to_store(
            images,
            root,
            settings.protocol,
            runtime,
            models=settings.models,
            seed=settings.seed,
            progress=progress,
            overwrite=True,
        )


def net_settings(settings: ExtractionSettings, fusion_l2: str = "per-net") -> list[ExtractionSettings]:
    """One ExtractionSettings per net of `settings`, each net's store extracted on its own and fused by
    stack_stores. Per-net fusion uses each net's own (L2-normalised) store, the one a probe of that net alone
    uses, so D, E and D & E extract each net once; "whole" needs each net's raw descriptor (no final L2)."""
    raw = fusion_l2 == "whole" and len(settings.models) > 1
    protocol = replace(settings.protocol, l2=False) if raw else settings.protocol
    return [ExtractionSettings((pair,), protocol, settings.seed) for pair in settings.models]


def probe_features(
    images: Sequence[str],
    out: str | Path,
    settings: ExtractionSettings,
    runtime: Runtime | None = None,
    *,
    fusion_l2: str = "per-net",
    progress: bool = True,
) -> FeatureStore:
    """The descriptors a probe uses for `images`: one net's cached store (OUT/features/<key>), or for several
    nets each net's cached store fused by `stack_stores` (Appendix B's late fusion, as `reproduce` fuses D & E)."""
    stores = [cached_store(images, out, s, runtime, progress=progress) for s in net_settings(settings, fusion_l2)]
    if len(stores) == 1:
        return stores[0]
    images = sorted(set(images))
    return stack_stores([(store, images) for store in stores], images, fusion_l2=fusion_l2)


def store_fusion(manifest: dict) -> str | None:
    """How a store's nets were fused ("per-net" or "whole"), None for one net. A store of `vggfeat extract`
    with several nets records no fusion_l2: its nets were L2-normalised before stacking only with l2_parts."""
    if manifest.get("fusion_l2"):
        return manifest["fusion_l2"]
    if len(manifest.get("models") or []) < 2:
        return None
    return "per-net" if manifest.get("l2_parts") else "whole"


def fusion_line(manifest: dict) -> str | None:
    """'fusion: per-net L2 before stacking, then L2 of the whole' for a store of several parts, else None."""
    fusion = store_fusion(manifest)
    if len(manifest.get("models") or []) < 2 and len(manifest.get("stacked_from") or []) < 2:
        return None
    return f"fusion: {FUSION_L2_HELP[fusion]} (--fusion-l2 {fusion})" if fusion else None


def split_features(
    store: FeatureStore, train_paths: Sequence[str], test_paths: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) descriptor matrices as float32, rows in the benchmark's order (matched as
    `FeatureStore.rows_for` does)."""
    train_rows, test_rows = store.rows_for(train_paths), store.rows_for(test_paths)
    return (
        np.asarray(store.features[train_rows], dtype=np.float32),
        np.asarray(store.features[test_rows], dtype=np.float32),
    )


def stack_stores(
    parts: Sequence[tuple[FeatureStore, Sequence[str]]], names: Sequence[str], *, fusion_l2: str = "per-net"
) -> FeatureStore:
    """An in-memory store whose row i stacks, for each (store, keys) part, that store's row of keys[i], fused by
    `fuse_nets` (Appendix B: late fusion of nets D & E; Table 12's image + person box): with "per-net" each
    part is L2-normalised before stacking, so every part weighs the same; then the whole is L2-normalised.

    Row i is named names[i], so a probe looks samples up by those names. Nothing is extracted: each part is a
    finished store. The manifest records fusion_l2.
    """
    if not parts or any(len(keys) != len(names) for _, keys in parts):
        raise ValueError("stack_stores needs one key per name in every part")
    blocks = [np.asarray(store.features[store.rows_for(list(keys))], dtype=np.float32) for store, keys in parts]
    x = fuse_nets(blocks, fusion_l2)  # (N, sum of D)
    first = parts[0][0].manifest
    manifest = {
        **{k: first.get(k) for k in ("layer", "scales", "flip", "aggregate", "l2_parts")},
        "l2": True,
        "fusion_l2": fusion_l2,
        "models": [m for store, _ in parts for m in store.manifest.get("models", [])],
        "dim": int(x.shape[1]),
        "dtype": "float32",
        "stacked_from": [str(store.root) for store, _ in parts],
        "paths": list(names),
        "skipped": [],
    }
    return FeatureStore(Path(parts[0][0].root), x, manifest)
