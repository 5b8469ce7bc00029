"""What `train --resume` checks before it continues a run from a checkpoint: the run it finishes must be the one
a fresh start would train, so the recipe (but for the keys that change no weight, recipe.RESUME_FREE), the
images and the model.init_from weights must be those the checkpoint was written with."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from vggfeat.data.folder import Samples
from vggfeat.models.mapped import weights_sha256
from vggfeat.utils.files import sha256_json
from vggfeat.utils.inputs import input_identities

from .checkpoint import CheckpointError
from .recipe import Recipe, recipe_changes

log = logging.getLogger(__name__)


def samples_digest(root: Path, *splits: Samples) -> str:
    """What a checkpoint records of a folder dataset: every image's path under `root`, label, size and mtime, so
    a resumed run reads the images it started on. Paths relative to the root: a dataset moved elsewhere with
    its times kept (cp -p, rsync -a) still resumes."""
    rows = []
    for split in splits:
        paths = [str(p) for p in split.paths]
        for image, label, identity in zip(paths, split.labels, input_identities(paths), strict=True):
            rows.append([os.path.relpath(image, root), label, identity])
    return sha256_json(rows)[:16]


def init_sha256(recipe: Recipe) -> str | None:
    """sha256 of the model.init_from file (None without one): the path alone may hold other weights later."""
    path = recipe.model.init_from
    return weights_sha256(path) if path else None


def check_recipe(ckpt: dict[str, Any], path: Path, recipe: Recipe) -> None:
    """CheckpointError naming each key (old -> new) where `recipe` differs from the one `ckpt` was written under,
    other than recipe.RESUME_FREE's; optim.epochs may differ while the checkpoint's position is within it."""
    if "recipe" not in ckpt:  # written before checkpoints kept their recipe: only the net's shapes are checked
        return
    changes = recipe_changes(ckpt["recipe"], recipe)
    begun = ckpt["epoch"] + (ckpt["step_in_epoch"] > 0)  # epochs the checkpoint has finished or started
    if begun <= recipe.optim.epochs:
        changes.pop("optim.epochs", None)
    if changes:
        named = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise CheckpointError(
            f"{path} was written under another recipe ({named}); resume with the recipe the run started with "
            f"({path.parent / 'recipe.yaml'}) or start over with --overwrite"
        )


def check_init_weights(ckpt: dict[str, Any], path: Path, recipe: Recipe, sha: str | None) -> None:
    """CheckpointError when model.init_from (`sha` its file's sha256) is not the file the run started from."""
    saved = ckpt.get("init_from_sha256", sha)  # an older checkpoint did not record it: see check_images
    if saved != sha:
        was = f"sha256 {saved[:16]}" if saved else "none"
        now = f"sha256 {sha[:16]}" if sha else "none"
        raise CheckpointError(
            f"{path} was written starting from other weights than model.init_from {recipe.model.init_from} holds "
            f"now ({was} -> {now}); point it at the weights the run started from or start over with --overwrite"
        )


def check_images(position: dict[str, Any] | None, digest: str, path: Path, root: Path, is_main: bool) -> None:
    """CheckpointError when the folder dataset at `root` is not the one the checkpoint (its data `position`) was
    written on. A checkpoint of an older vggfeat has no digest (nor an init_from sha256): resumed with a warning,
    as refusing would leave a run of days no way to finish, and the checkpoints it writes from then on are
    checked."""
    position = position or {}
    if "shards" in position:
        raise CheckpointError(
            f"{path} was written reading tar shards (data.train_shards), not the dataset folder {root}; resume with "
            "those shards or start over with --overwrite"
        )
    saved = position.get("images")
    if saved is None:
        if is_main:
            log.warning(
                "--resume: %s records no digest of the images it was trained on nor of its model.init_from weights "
                "(an older vggfeat wrote it); resuming as if %s and those weights were unchanged",
                path.name,
                root,
            )
        return
    if saved != digest:
        raise CheckpointError(
            f"{path} was written training on other images than {root}/train and {root}/val hold now (other files, "
            "labels, sizes or modification times); resume on the same dataset or start over with --overwrite"
        )
