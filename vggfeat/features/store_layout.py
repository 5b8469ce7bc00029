"""The sharded feature store's names: its files and folders, its format tag, and its error - shared by the
reader (store.py) and the writer (shard_files.py)."""

from __future__ import annotations

import os
from pathlib import Path

from vggfeat.errors import VggfeatError

FORMAT = "vggfeat-shards/1"
MANIFEST_FILE = "manifest.json"
FEATURES_FILE = "features.npy"  # the single-file format before shards (read-only now)
EMB_DIR, META_DIR, DONE_DIR = "emb", "meta", "shards"
PLAN_FILE = "plan.json"
BLOCK_ROWS = 4096  # rows per block of FeatureStore.blocks: bounded memory whatever N


class StoreError(VggfeatError, ValueError):
    """A feature store that is missing, unfinished or inconsistent."""


def emb_file(root: Path, name: str) -> Path:
    return Path(root) / EMB_DIR / f"{name}.npy"


def meta_file(root: Path, name: str) -> Path:
    return Path(root) / META_DIR / f"{name}.parquet"


def decode_path(path: str, raw: bytes | None) -> str:
    """A row's path as the file system names it: parquet holds UTF-8, so a name that is not UTF-8 is kept
    byte for byte in `path_raw` (and shown with escapes in `path`)."""
    return os.fsdecode(raw) if raw is not None else path
