"""The feature store: a folder with `features.npy` (N x D) and `manifest.json`, readable by numpy alone.

manifest.json: row i's image path in `paths`; the inputs that were skipped with their reasons; the
models and their weights' sha256; layer, scales, flip, aggregate, l2, dim, dtype, vggfeat version.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vggfeat.errors import VggfeatError
from vggfeat.utils.files import atomic_write_bytes, atomic_write_json, read_json

FEATURES_FILE = "features.npy"
MANIFEST_FILE = "manifest.json"


class StoreError(VggfeatError, ValueError):
    """A feature store that is missing, unfinished or inconsistent."""


@dataclass
class FeatureStore:
    root: Path
    features: np.ndarray  # (N, D), float32 or float16, memory-mapped
    manifest: dict[str, Any]
    already_complete: bool = False  # set by extract_to_store when it found the store finished: nothing computed

    @property
    def paths(self) -> list[str]:
        return self.manifest["paths"]

    @property
    def row_identities(self) -> list[list | None]:
        """Row i's input identity when extracted: [size, mtime_ns] or [size, mtime_ns, sha256]; None unknown.
        Extraction records them per input, skipped ones included, in input order; rows are the usable inputs in
        that order, so with skipped inputs the order is rebuilt and confirmed by the recorded hash of the list."""
        ids, skipped = self.manifest.get("input_identities"), [s["path"] for s in self.manifest.get("skipped", [])]
        unknown: list[list | None] = [None] * len(self)
        if not isinstance(ids, list) or len(ids) != len(self.paths) + len(skipped):
            return unknown
        if not skipped:
            return list(ids)
        inputs = list(heapq.merge(self.paths, skipped))  # inputs of one folder are found in sorted order
        listing = hashlib.sha256("\n".join(inputs).encode("utf-8", "surrogateescape")).hexdigest()
        if listing != (self.manifest.get("settings") or {}).get("inputs_sha256"):
            return unknown
        usable = set(self.paths)
        return [ident for p, ident in zip(inputs, ids, strict=True) if p in usable]

    @property
    def absolute_paths(self) -> list[str]:
        """Row paths that open from any folder: relative ones joined to the folder extraction ran in (recorded
        as `cwd`; stores written before it was recorded keep their paths as given)."""
        cwd = self.manifest.get("cwd")
        return [p if cwd is None or os.path.isabs(p) else os.path.join(cwd, p) for p in self.paths]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def rows_for(self, paths: list[str]) -> np.ndarray:
        """Row indices of `paths`. A store records paths as given to `vggfeat extract` (often relative to where
        it ran), so a path matches by resolved absolute path, then by its last two components (e.g.
        JPEGImages/000005.jpg, accordion/image_0001.jpg) when those are unique in the store. A path with no
        row is an error (naming why it was skipped at extraction, when it was), and so is a row whose recorded
        file is not the file at `path` (`check_row_files`): another dataset's rows never pass for these."""
        exact = {str(Path(p).resolve()): i for i, p in enumerate(self.absolute_paths)}
        tails: dict[str, int] = {}
        for i, p in enumerate(self.paths):
            t = _tail(p)
            tails[t] = -1 if t in tails else i  # -1 marks an ambiguous tail
        resolved = [str(Path(p).resolve()) for p in paths]
        rows = np.array([exact.get(r, tails.get(_tail(p), -1)) for p, r in zip(paths, resolved, strict=True)])
        rows = rows.astype(np.int64)
        missing = [p for p, i in zip(paths, rows, strict=False) if i < 0]
        if missing:
            skipped = {_tail(s["path"]): s["reason"] for s in self.manifest.get("skipped", [])}
            why = skipped.get(_tail(missing[0]))
            hint = f" (skipped at extraction: {why})" if why else ""
            # a skipped image cannot be extracted again as it is: its fix is the image (or the scales)
            fix = (
                "replace or remove that image (or choose other --scales) and rerun"
                if why
                else ("extract every image of the benchmark into the store")
            )
            raise StoreError(
                f"{self.root}: {len(missing)} of the {len(paths)} images asked for have no row in the "
                f"store, e.g. {missing[0]}{hint}; {fix}"
            )
        check_row_files(self, paths, rows, by_path=[r in exact for r in resolved])
        return rows


def _identity_text(ident: Any) -> str:
    if not ident:
        return "unreadable"
    seconds, ns = divmod(int(ident[1]), 10**9)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}"
    return f"{ident[0]} bytes, modified {when} UTC" + (f", sha256 {ident[2][:16]}" if len(ident) > 2 else "")


def check_row_files(store: FeatureStore, paths: list[str], rows: np.ndarray, by_path: list[bool]) -> None:
    """A StoreError unless each row of `rows` was extracted from the file now at the matching path of `paths`:
    same size and modification time as recorded, or the same sha256 where the store recorded one. A row whose
    identity the store did not record passes only when matched by its full path (a file name proves nothing)."""
    from vggfeat.features.inputs import input_identities, same_input

    recorded = store.row_identities
    wrong, by_name = [], []
    for i, (path, row) in enumerate(zip(paths, rows.tolist(), strict=True)):
        old = recorded[row]
        if old is None:
            if not by_path[i]:
                by_name.append(i)
            continue
        (now,) = input_identities([path])
        if now is not None and len(old) > 2 and now[:2] != old[:2] and now[0] == old[0]:
            (now,) = input_identities([path], content_hash=True)  # touched, perhaps not changed: compare content
        if not same_input(old, now):
            wrong.append((i, old, now))
    fix = "extract the benchmark's own images into a store (`vggfeat extract IMAGES -o STORE`) and probe that"
    if wrong:
        i, old, now = wrong[0]
        raise StoreError(
            f"{store.root}: {len(wrong)} of the {len(paths)} images asked for are not the files the store's rows "
            f"were extracted from, e.g. {paths[i]} ({_identity_text(now)}) has the row of "
            f"{store.absolute_paths[rows[i]]} ({_identity_text(old)} at extraction) - a store of another dataset, "
            f"or images changed since; {fix} (with --hash-inputs, a copy whose times changed still matches)"
        )
    if by_name:
        i = by_name[0]
        raise StoreError(
            f"{store.root}: {len(by_name)} of the {len(paths)} images asked for match a row by file name only "
            f"(e.g. {paths[i]} matched {store.absolute_paths[rows[i]]}) and the store records no file sizes or "
            f"times to show they are the same images; {fix}"
        )


def _tail(path: str, parts: int = 2) -> str:
    return "/".join(Path(path).parts[-parts:])


def is_complete_store(root: str | Path) -> bool:
    root = Path(root)
    return (root / FEATURES_FILE).is_file() and (root / MANIFEST_FILE).is_file()


def load_store(root: str | Path, mmap: bool = True) -> FeatureStore:
    """Open a finished store written by `vggfeat extract`."""
    root = Path(root)
    if not is_complete_store(root):
        raise StoreError(
            f"{root}: not a finished feature store (needs {FEATURES_FILE} and {MANIFEST_FILE}); "
            "run `vggfeat extract IMAGES -o STORE` first, or again to finish it"
        )
    fix = "rerun `vggfeat extract IMAGES -o STORE --overwrite` to rebuild it"
    manifest = read_json(root / MANIFEST_FILE, StoreError, fix)
    if not isinstance(manifest, dict):
        raise StoreError(f"{root / MANIFEST_FILE}: not a store manifest (a JSON object); {fix}")
    try:
        features = np.load(root / FEATURES_FILE, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:  # truncated or not a .npy file
        raise StoreError(f"{root / FEATURES_FILE}: unreadable ({e}); {fix}") from None
    if features.ndim != 2 or features.shape[0] != len(manifest.get("paths", ())):
        raise StoreError(
            f"{root}: {FEATURES_FILE} has shape {features.shape} but the manifest lists "
            f"{len(manifest.get('paths', ()))} images"
        )
    return FeatureStore(root, features, manifest)


# --- writing: chunk files under .partial/, assembled into the final files at the end ---------------
PARTIAL_DIR = ".partial"
SETTINGS_FILE = "settings.json"


def partial_dir(root: Path) -> Path:
    return Path(root) / PARTIAL_DIR


def chunk_path(root: Path, chunk_id: int) -> Path:
    return partial_dir(root) / f"chunk_{chunk_id:06d}.npz"


def write_chunk(
    root: Path, chunk_id: int, indices: np.ndarray, features: np.ndarray, skipped: list[tuple[int, str]]
) -> None:
    """One chunk's results, written atomically: a crash leaves the whole file or none."""

    buf = io.BytesIO()
    np.savez(
        buf,
        index=indices.astype(np.int64),
        features=features.astype(np.float32),
        skipped_index=np.array([i for i, _ in skipped], dtype=np.int64),
        skipped_reason=np.array([r for _, r in skipped], dtype=np.str_),
    )
    atomic_write_bytes(chunk_path(root, chunk_id), buf.getvalue())


def read_chunk(root: Path, chunk_id: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    with np.load(chunk_path(root, chunk_id), allow_pickle=False) as z:
        skipped = list(zip(z["skipped_index"].tolist(), z["skipped_reason"].tolist(), strict=False))
        return z["index"], z["features"], skipped


def _shrink_rows(path: Path, n_rows: int) -> None:
    """Cut the .npy file at `path` to its first `n_rows` rows in place: rewrite the header's shape and truncate.
    numpy pads every header so its first dimension can change without moving the data."""
    fmt = np.lib.format
    with open(path, "r+b") as f:
        version = fmt.read_magic(f)
        read, write = {
            (1, 0): (fmt.read_array_header_1_0, fmt.write_array_header_1_0),
            (2, 0): (fmt.read_array_header_2_0, fmt.write_array_header_2_0),
        }[version]
        shape, fortran, dtype = read(f)
        offset = f.tell()
        header = io.BytesIO()
        write(header, {"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (n_rows, *shape[1:])})
        if len(header.getvalue()) != offset:  # no room for the new shape: never expected, checked all the same
            raise StoreError(f"{path}: cannot rewrite the .npy header in place")
        f.seek(0)
        f.write(header.getvalue())
        f.truncate(offset + n_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


def assemble_store(
    root: Path, n_chunks: int, paths: list[str], dim: int, dtype: str, manifest: dict[str, Any]
) -> FeatureStore:
    """Stream the chunk files into features.npy, then write manifest.json (its presence marks a finished
    store) and remove the chunks. Each final file appears atomically by rename; a store already in root is
    replaced only here, once every chunk of the new one is there.

    Each chunk is read once: rows go into room for every input, and the file is cut to the usable rows after."""
    import shutil

    root = Path(root)
    tmp = root / f".{FEATURES_FILE}.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=(len(paths), dim))
    rows: list[str] = []
    skipped: list[tuple[int, str]] = []
    for c in range(n_chunks):
        index, feats, chunk_skipped = read_chunk(root, c)
        out[len(rows) : len(rows) + len(index)] = feats
        rows.extend(paths[i] for i in index.tolist())
        skipped.extend(chunk_skipped)
    out.flush()
    del out
    if len(rows) < len(paths):  # skipped inputs have no row
        _shrink_rows(tmp, len(rows))
    # an older store in root (--overwrite, changed inputs) stays whole until here; without its manifest it is
    # unfinished, so a crash before the new manifest is written leaves the chunks for a rerun to assemble
    (root / MANIFEST_FILE).unlink(missing_ok=True)
    tmp.replace(root / FEATURES_FILE)
    manifest = {**manifest, "paths": rows, "skipped": [{"path": paths[i], "reason": r} for i, r in sorted(skipped)]}
    atomic_write_json(root / MANIFEST_FILE, manifest)
    shutil.rmtree(partial_dir(root), ignore_errors=True)
    return load_store(root)
