"""Rewriting a store of the single-file format (features.npy + a manifest listing every path) as a sharded
store: the same rows, paths and input identities in shards of a fixed number of rows, nothing recomputed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vggfeat.utils.files import atomic_write_json, sha256_json

from . import shard_files
from . import store as fs


def convert_store(old: str | Path, new: str | Path, shard_size: int = 10_000) -> fs.FeatureStore:
    """Write NEW from the single-file store OLD (left as it is); returns NEW opened."""
    old, new = Path(old), Path(new)
    if not fs.is_single_file_store(old):
        raise fs.StoreError(
            f"{old}: not a store of the single-file format (needs {fs.FEATURES_FILE} and manifest.json)"
        )
    if new.exists() and any(new.iterdir()):
        raise fs.StoreError(f"{new}: not empty; choose a new folder for the converted store")
    src = fs.load_store(old)
    m = src.manifest
    settings = {**m.get("settings", {}), "converted_from": fs.FEATURES_FILE}
    settings_sha = sha256_json(settings)  # the recipe extract uses: the shards' identity checks compare it
    n = len(src)
    n_shards = max(1, -(-n // shard_size))
    names = [shard_files.shard_name(i, n_shards) for i in range(n_shards)]
    skip = {"paths", "skipped", "input_identities", "settings"}
    store_facts = {k: v for k, v in m.items() if k not in skip}
    store_facts.update({"dim": src.dim, "dtype": str(src.features.dtype), "converted_from": str(old.resolve())})
    new.mkdir(parents=True, exist_ok=True)
    plan = {
        "format": fs.FORMAT,
        "settings": settings,
        "settings_sha256": settings_sha,
        "store": store_facts,
        "shards": [{"name": name, "rows": min(shard_size, n - i * shard_size)} for i, name in enumerate(names)],
        "command": None,
    }
    atomic_write_json(new / fs.PLAN_FILE, plan)
    paths, identities = src.paths, src.row_identities
    for i, name in enumerate(names):
        rows = slice(i * shard_size, min((i + 1) * shard_size, n))
        ids = identities[rows]
        columns: dict[str, list[Any]] = {
            "path": paths[rows],
            "key": paths[rows],
            "size": [d[0] if d else None for d in ids],
            "mtime_ns": [d[1] if d else None for d in ids],
            "sha256": [d[2] if d and len(d) > 2 else None for d in ids],
        }
        record = {
            "settings_sha256": settings_sha,
            "source": {"converted_from": str(old.resolve()), "rows": [rows.start, rows.stop]},
            "skipped": [{**s, "key": s["path"]} for s in src.skipped] if i == 0 else [],
        }
        shard_files.write_shard(new, name, src.features[rows], columns, record)
    shard_files.store_status(new, rebuild=True)
    return fs.load_store(new)
