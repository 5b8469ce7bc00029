"""The feature store: a folder with `features.npy` (N x D) and `manifest.json`, readable by numpy alone.

manifest.json: row i's image path in `paths`; the inputs that were skipped with their reasons; the
models and their weights' sha256; layer, scales, flip, aggregate, l2, dim, dtype, vggfeat version.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FEATURES_FILE = "features.npy"
MANIFEST_FILE = "manifest.json"


class StoreError(ValueError):
    """A feature store that is missing, unfinished or inconsistent."""


@dataclass
class FeatureStore:
    root: Path
    features: np.ndarray  # (N, D), float32 or float16, memory-mapped
    manifest: dict[str, Any]

    @property
    def paths(self) -> list[str]:
        return self.manifest["paths"]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def rows_for(self, paths: list[str]) -> np.ndarray:
        """Row indices of `paths` (as recorded in the manifest); a path not in the store is an error."""
        index = {p: i for i, p in enumerate(self.paths)}
        missing = [p for p in paths if p not in index]
        if missing:
            raise StoreError(f"{self.root}: {len(missing)} images are not in the store, e.g. {missing[0]}")
        return np.array([index[p] for p in paths], dtype=np.int64)


def is_complete_store(root: "str | Path") -> bool:
    root = Path(root)
    return (root / FEATURES_FILE).is_file() and (root / MANIFEST_FILE).is_file()


def load_store(root: "str | Path", mmap: bool = True) -> FeatureStore:
    """Open a finished store written by `vggfeat extract`."""
    root = Path(root)
    if not is_complete_store(root):
        raise StoreError(f"{root}: not a finished feature store (needs {FEATURES_FILE} and {MANIFEST_FILE}); "
                         "run `vggfeat extract IMAGES -o STORE` first, or again to finish it")
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    features = np.load(root / FEATURES_FILE, mmap_mode="r" if mmap else None)
    if features.ndim != 2 or features.shape[0] != len(manifest.get("paths", ())):
        raise StoreError(f"{root}: {FEATURES_FILE} has shape {features.shape} but the manifest lists "
                         f"{len(manifest.get('paths', ()))} images")
    return FeatureStore(root, features, manifest)
