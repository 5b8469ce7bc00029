"""VOC-2012 action classification (Table 12) as a linear probe: a sample is one person box in one image.

Its descriptor is the whole image's (Appendix B settings of VOC) stacked with the descriptor of the person box
cut out and treated as an image of its own - the paper's best setting (84.0 mAP for D & E) - or the image's alone
(79.2). One-vs-rest SVMs over the 10 actions, all-point AP per action on val (the test labels are private).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from vggfeat.benchmarks.voc_action import ActionSplit, sample_keys, write_box_crops
from vggfeat.features.runtime import Runtime
from vggfeat.features.store import FeatureStore
from vggfeat.probes.features import ExtractionSettings, cached_store, net_settings, stack_stores
from vggfeat.utils.inputs import input_identities

log = logging.getLogger(__name__)
BOX_DIR = "boxes"  # OUT/boxes/crops: the person boxes as PNG files; OUT/boxes/features: their store


def box_crops(train: ActionSplit, val: ActionSplit, out: str | Path) -> tuple[list[str], list[str]]:
    """The person boxes of both splits as image files under OUT/boxes/crops/<dataset> (written once, then reused).

    <dataset> hashes the VOC folder the images come from and each image's identity (size, mtime_ns, as a store
    records it), so a crop cut from one dataset, or from an image replaced since, is never served for another."""
    import hashlib
    import json

    source = str(Path(train.image_paths[0]).parent.parent) if len(train) else ""
    images = sorted({*train.image_paths, *val.image_paths})
    key = json.dumps([source, images, input_identities(images)])
    crops = Path(out) / BOX_DIR / "crops" / hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return write_box_crops(train, crops), write_box_crops(val, crops)


def action_store(
    train: ActionSplit,
    val: ActionSplit,
    image_stores: Sequence[FeatureStore],
    box_stores: Sequence[FeatureStore] = (),
    crops: tuple[Sequence[str], Sequence[str]] | None = None,
    *,
    fusion_l2: str = "per-net",
) -> FeatureStore:
    """Per sample, each image store's row of its image and each box store's row of its crop, fused by
    stack_stores (one net: image + box; D & E: image D, box D, image E, box E, as late fusion stacks nets)."""
    images = [*train.image_paths, *val.image_paths]
    boxes = [*crops[0], *crops[1]] if crops is not None else []
    parts: list[tuple[FeatureStore, Sequence[str]]] = []
    for k, image_store in enumerate(image_stores):
        parts.append((image_store, images))
        if box_stores:
            parts.append((box_stores[k], boxes))
    # one net's image and box stores are each L2-normalised (net_settings keeps the L2 of a single net)
    fusion = fusion_l2 if len(image_stores) > 1 else "per-net"
    return stack_stores(parts, [*sample_keys(train), *sample_keys(val)], fusion_l2=fusion)


def action_features(
    train: ActionSplit,
    val: ActionSplit,
    out: str | Path,
    settings: ExtractionSettings,
    runtime: Runtime | None = None,
    *,
    box: bool = True,
    fusion_l2: str = "per-net",
    progress: bool = True,
) -> FeatureStore:
    """The probe's store of voc2012-action: each net's image (and box) store extracted once (as probe_features
    extracts each net), then fused by action_store."""
    stores = [
        extract_action_stores(train, val, out, s, runtime, box=box, progress=progress)
        for s in net_settings(settings, fusion_l2)
    ]
    return action_store(
        train,
        val,
        [s[0] for s in stores],
        [b for _, b, _ in stores if b is not None] if box else (),  # with box, every net has one
        stores[0][2],
        fusion_l2=fusion_l2,
    )


def extract_action_stores(
    train: ActionSplit,
    val: ActionSplit,
    out: str | Path,
    settings: ExtractionSettings,
    runtime: Runtime | None = None,
    *,
    box: bool = True,
    progress: bool = True,
) -> tuple[FeatureStore, FeatureStore | None, tuple[list[str], list[str]] | None]:
    """(image store, box store or None, crops or None), each extracted once and cached under OUT: the images in
    OUT/features/<settings>, the boxes in OUT/boxes/features/<settings>."""

    crops = box_crops(train, val, out) if box else None  # first: a box outside its image stops before extracting
    images = sorted({*train.image_paths, *val.image_paths})
    image_store = cached_store(images, out, settings, runtime, progress=progress)
    if crops is None:
        return image_store, None, None
    box_store = cached_store([*crops[0], *crops[1]], Path(out) / BOX_DIR, settings, runtime, progress=progress)
    return image_store, box_store, crops
