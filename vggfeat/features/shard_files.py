"""Writing a sharded feature store: a shard appears whole or not at all, and the store knows which are done.

A shard's `emb/<i>.npy` and `meta/<i>.parquet` are written under names that end in neither suffix, renamed
into place npy first, then parquet, and only then recorded done in `shards/<i>.json` (rows, skipped inputs
with reasons, sizes and sha256 of both files). A reader (ours, or embedding-reader globbing `*.npy`) never
meets a half-written file, and a shard without its record is not done, however far it got. The store-level
manifest.json is rebuilt from the records under a lock, so parts running at once never lose each other's shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import reprlib
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from vggfeat.utils.files import atomic_write_json, load_json_file, sha256_file
from vggfeat.utils.locks import folder_lock

from .store_layout import DONE_DIR, EMB_DIR, FORMAT, MANIFEST_FILE, META_DIR, PLAN_FILE, StoreError, emb_file, meta_file

log = logging.getLogger(__name__)
MANIFEST_LOCK_OF = "manifest"  # folder_lock's lock file of root/manifest: root/.manifest.lock
MANIFEST_LOCK = f".{MANIFEST_LOCK_OF}.lock"
REPLACE = "rerun the extraction with --overwrite"


def shard_name(i: int, n: int) -> str:
    """Zero-padded, so lexicographic order is shard order (6 digits, more past a million shards)."""
    return f"{i:0{max(6, len(str(max(n - 1, 0))))}d}"


def record_file(root: Path, name: str) -> Path:
    return Path(root) / DONE_DIR / f"{name}.json"


def failed_file(root: Path, name: str) -> Path:
    return Path(root) / DONE_DIR / f"{name}.failed.json"


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def meta_table(columns: dict[str, list]) -> Any:
    """The parquet table of one shard; a path that is not UTF-8 keeps its bytes in `path_raw`."""
    import pyarrow as pa

    paths: list[str] = []
    raw: list[bytes | None] = []
    for p in columns["path"]:
        try:
            p.encode("utf-8")
            paths.append(p)
            raw.append(None)
        except UnicodeEncodeError:  # a file name in another encoding: shown escaped, kept exactly
            paths.append(os.fsencode(p).decode("utf-8", "backslashreplace"))
            raw.append(os.fsencode(p))
    keys = [k.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for k in columns["key"]]
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "key": pa.array(keys, pa.string()),
            "size": pa.array(columns["size"], pa.int64()),
            "mtime_ns": pa.array(columns["mtime_ns"], pa.int64()),
            "sha256": pa.array(columns["sha256"], pa.string()),
            "path_raw": pa.array(raw, pa.binary()),
        }
    )


def write_shard(root: Path, name: str, feats: np.ndarray, columns: dict[str, list], record: dict[str, Any]) -> dict:
    """Write shard `name` whole: both files under temporary names, renamed into place (npy, then parquet), then
    its done record. Returns the record. `feats` (N, D) is already in the store's dtype; `columns` has N rows."""
    import pyarrow.parquet as pq

    root = Path(root)
    if len(columns["path"]) != len(feats):
        raise ValueError(f"shard {name}: {len(feats)} rows but {len(columns['path'])} metadata rows")
    emb, meta = emb_file(root, name), meta_file(root, name)
    emb.parent.mkdir(parents=True, exist_ok=True)
    meta.parent.mkdir(parents=True, exist_ok=True)
    record_file(root, name).parent.mkdir(parents=True, exist_ok=True)
    tmp_emb = emb.with_name(f".{name}.emb.tmp-{os.getpid()}")
    tmp_meta = meta.with_name(f".{name}.meta.tmp-{os.getpid()}")
    try:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(feats))
        emb_data = buf.getvalue()
        _write_synced(tmp_emb, emb_data)
        buf = io.BytesIO()
        pq.write_table(meta_table(columns), buf)
        meta_data = buf.getvalue()
        _write_synced(tmp_meta, meta_data)
        # sizes and hashes of the bytes just written, from memory: no second read of the files
        files = {
            "emb_bytes": len(emb_data),
            "meta_bytes": len(meta_data),
            "emb_sha256": hashlib.sha256(emb_data).hexdigest(),
            "meta_sha256": hashlib.sha256(meta_data).hexdigest(),
        }
        os.replace(tmp_emb, emb)  # the npy first: a .parquet is never without its .npy
        os.replace(tmp_meta, meta)
    except BaseException:  # a full disk, Ctrl-C: no temporary left behind
        tmp_emb.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise
    record = {**record, "name": name, "rows": len(feats), **files}
    atomic_write_json(record_file(root, name), record)
    failed_file(root, name).unlink(missing_ok=True)
    return record


def read_done_record(root: Path, name: str) -> dict | None:
    try:
        record = load_json_file(record_file(root, name))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_count(value: Any) -> TypeGuard[int]:
    """A whole number of at least 0 (JSON's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _record_fault(record: dict) -> str | None:
    """What is wrong with a done record's rows and skipped inputs, which the store's readers count and list."""
    rows, skipped = record.get("rows"), record.get("skipped", [])
    if not is_count(rows):
        return f"rows {reprlib.repr(rows)}"
    if not isinstance(skipped, list) or not all(
        isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("reason"), str) for s in skipped
    ):
        return "skipped is not a list of {path, reason}"
    return None


class Problem(str):
    """Why a shard is not done, in a few words naming the file at fault; `damaged` when it has a done record
    whose files are not what the record says (as opposed to a shard never finished or made from other inputs)."""

    damaged = False


def _damaged(why: str) -> Problem:
    problem = Problem(why)
    problem.damaged = True
    return problem


def shard_problem(
    root: Path, name: str, identity: dict[str, Any] | None = None, verify: bool = False
) -> Problem | None:
    """None when shard `name` is done (and, given `identity`, made from those settings and inputs); otherwise
    why not (a Problem). Files are checked by size, and with `verify` by sha256."""
    return checked_record(root, name, identity, verify)[1]


def checked_record(
    root: Path, name: str, identity: dict[str, Any] | None = None, verify: bool = False
) -> tuple[dict | None, Problem | None]:
    """(shard `name`'s done record, None) when the shard is done, as `shard_problem` checks it; (None, why not)
    otherwise. The record is read once, so what is checked is what the caller counts."""
    record = read_done_record(root, name)
    if record is None:
        if emb_file(root, name).exists() or meta_file(root, name).exists():
            return None, Problem("half-written (files without a done record)")
        return None, Problem("not started")
    wrong = _record_fault(record)
    if wrong:  # what its readers would count or list is not there
        return None, _damaged(f"{record_file(root, name)}: not a done record ({wrong}) (damaged)")
    for key, value in (identity or {}).items():
        if record.get(key) != value:
            return None, Problem(f"made from other {key.replace('_sha256', '')}")
    for path, size in (
        (emb_file(root, name), record.get("emb_bytes")),
        (meta_file(root, name), record.get("meta_bytes")),
    ):
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            why = f"{path} is {'missing' if actual is None else f'{actual} bytes'}, recorded {size} (damaged)"
            return None, _damaged(why)
    if verify:
        for path, digest in (
            (emb_file(root, name), record.get("emb_sha256")),
            (meta_file(root, name), record.get("meta_sha256")),
        ):
            if sha256_file(path) != digest:
                return None, _damaged(f"{path} does not match its recorded sha256 (damaged)")
    return record, None


def clear_shard(root: Path, name: str) -> None:
    """Remove whatever a shard left (its record first, so it is never done with files half gone)."""
    record_file(root, name).unlink(missing_ok=True)
    emb_file(root, name).unlink(missing_ok=True)
    meta_file(root, name).unlink(missing_ok=True)


def record_failure(root: Path, name: str, reason: str) -> None:
    failed_file(root, name).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(failed_file(root, name), {"name": name, "reason": reason})


@contextlib.contextmanager
def manifest_lock(root: Path) -> Iterator[None]:
    """A lock around reading the done records and writing manifest.json, waited for (parts finish at once):
    `.manifest.lock` inside the store (utils.locks.folder_lock of its `manifest`)."""
    with folder_lock(Path(root) / MANIFEST_LOCK_OF, "written", "", wait=True):
        yield


def read_plan(root: Path, replacing: bool = False) -> dict | None:
    """The store's plan.json, None when there is none. A plan that does not read or is not a plan (`check_plan`)
    is a StoreError naming it - or with `replacing` (the caller is about to replace the store), a plan of no
    settings, which is nobody's."""
    path = Path(root) / PLAN_FILE
    try:
        plan = load_json_file(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if replacing:
            return {}
        raise StoreError(f"{path}: unreadable ({e}); {REPLACE}") from None
    try:
        return check_plan(plan, path)
    except StoreError:
        if replacing:
            return {}
        raise


def check_plan(plan: Any, path: Path) -> dict:
    """`plan` when it is what extract writes to plan.json, as far as its readers use it; else a StoreError."""
    check_shard_list(plan, path, REPLACE)
    for key in ("settings", "store"):
        if not isinstance(plan.get(key), dict):
            raise StoreError(f'{path}: "{key}" must be an object; {REPLACE}')
    check_rows_format(plan["store"], path, REPLACE)
    for name, value in (("command", plan.get("command")), ("cwd", plan["store"].get("cwd"))):
        if value is not None and not isinstance(value, str):
            raise StoreError(f"{path}: {name} {reprlib.repr(value)} is not text; {REPLACE}")
    return plan


def check_shard_list(doc: Any, path: Path, fix: str) -> list[str]:
    """The shard names a plan or manifest lists: a list of objects whose names are distinct shard numbers (a name
    becomes file names in the store, so a path never passes). Anything else is a StoreError."""
    shards = doc.get("shards") if isinstance(doc, dict) else None
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise StoreError(f'{path}: "shards" must be a list of objects; {fix}')
    names, seen = [s.get("name") for s in shards], set()
    for name in names:
        if not isinstance(name, str) or not name.isascii() or not name.isdigit():
            raise StoreError(f"{path}: shard name {reprlib.repr(name)} is not a shard number; {fix}")
        if name in seen:  # its rows would be counted, indexed and probed twice
            raise StoreError(f"{path}: shard {name} is listed twice; {fix}")
        seen.add(name)
    return names


def check_rows_format(facts: Any, path: Path, fix: str) -> None:
    """A StoreError unless `facts` (a plan's "store", a manifest) record rows of a positive whole `dim` and a
    float `dtype`."""
    dim, dtype = (facts.get("dim"), facts.get("dtype")) if isinstance(facts, dict) else (None, None)
    if not is_count(dim) or dim < 1:
        raise StoreError(f"{path}: dimension {reprlib.repr(dim)} is not a positive whole number; {fix}")
    try:
        ok = isinstance(dtype, str) and np.dtype(dtype).kind == "f"
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise StoreError(f"{path}: dtype {reprlib.repr(dtype)} is not a float type; {fix}")


@dataclass
class StoreStatus:
    root: Path
    shards: list[str]
    done: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # name -> why not done
    failed: dict[str, str] = field(default_factory=dict)  # name -> the reason its last try failed
    # name -> why: shards with a done record whose files are not what it says (listed as missing or failed too)
    damaged: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    skipped: int = 0
    command: str | None = None
    cwd: str | None = None  # where the command was run (its relative paths are relative to it)
    manifest: dict | None = None  # manifest.json as the done records say it is (with `rebuild`)

    @property
    def complete(self) -> bool:
        return bool(self.shards) and len(self.done) == len(self.shards)

    def finish_command(self) -> str:
        if self.command:
            return f"cd {shlex.quote(self.cwd)} && {self.command}" if self.cwd else self.command
        return f"`vggfeat extract` with the same inputs and settings into {self.root}"

    def summary(self, one_line: bool = False) -> str:
        head = (
            f"{len(self.done)} of {len(self.shards)} shards done ({self.rows} rows, {self.skipped} inputs skipped), "
            f"{len(self.missing)} missing, {len(self.failed)} failed"
        )
        if one_line:
            first = next(iter({**self.missing, **self.failed}.items()), None)
            example = f" (e.g. shard {first[0]}: {first[1]})" if first else ""
            return f"{head}{example}; finish it with: {self.finish_command()}"
        lines = [head]
        for name, why in self.failed.items():
            lines.append(f"  failed  {name}: {why}")
        for name, why in list(self.missing.items())[:20]:
            lines.append(f"  missing {name}: {why}")
        if len(self.missing) > 20:
            lines.append(f"  ... and {len(self.missing) - 20} more missing")
        if not self.complete:
            lines.append(f"finish it with: {self.finish_command()}")
        return "\n".join(lines)


def store_status(root: Path, rebuild: bool = False, verify: bool = False) -> StoreStatus:
    """Shards done, missing and failed, from plan.json and the done records (with `verify`, each file's sha256
    checked too); with `rebuild`, manifest.json is rewritten (under its lock) when it does not say what the
    records say."""
    root = Path(root)
    plan = read_plan(root)
    if plan is None:
        try:
            manifest = load_json_file(root / MANIFEST_FILE)
        except (OSError, ValueError):
            raise StoreError(f"{root}: not a sharded feature store (no {PLAN_FILE})") from None
        names = check_shard_list(manifest, root / MANIFEST_FILE, REPLACE)
        plan = {"shards": [{"name": n} for n in names], "command": None}
    cwd = plan.get("store", {}).get("cwd")
    status = StoreStatus(root, [s["name"] for s in plan["shards"]], command=plan.get("command"), cwd=cwd)
    identity = {"settings_sha256": plan["settings_sha256"]} if "settings_sha256" in plan else None
    records = []
    for name in status.shards:
        record, problem = checked_record(root, name, identity, verify)
        if record is not None:
            status.done.append(name)
            status.rows += int(record["rows"])
            status.skipped += len(record.get("skipped", []))
            records.append(record)
            continue
        assert problem is not None  # no record comes with why not
        if problem.damaged:
            status.damaged[name] = problem
        try:
            status.failed[name] = load_json_file(failed_file(root, name))["reason"]
        except (OSError, ValueError, KeyError, TypeError):
            status.missing[name] = problem
    if rebuild and "settings" in plan:
        status.manifest = write_manifest(root, plan, status, records)
    return status


def write_manifest(root: Path, plan: dict, status: StoreStatus, records: list[dict]) -> dict:
    """manifest.json from the plan and the done records: store-level facts and the shard list, no per-row data.
    Written only when it changes; `complete` says whether every planned shard is done."""
    keep = ("name", "rows", "emb_bytes", "meta_bytes", "emb_sha256", "meta_sha256", "source", "problem")
    manifest = {
        "format": FORMAT,
        **plan["store"],
        "settings": plan["settings"],
        "complete": status.complete,
        "rows": status.rows,
        "n_skipped": status.skipped,
        "layout": {"emb": f"{EMB_DIR}/<shard>.npy", "meta": f"{META_DIR}/<shard>.parquet"},
        "shards": [{**{k: r[k] for k in keep if k in r}, "skipped": len(r.get("skipped", []))} for r in records],
    }
    path = root / MANIFEST_FILE

    def current() -> bool:
        try:
            return load_json_file(path) == manifest
        except (OSError, ValueError):
            return False

    if current():  # nothing to write: a reader of a finished store (perhaps read-only) writes nothing
        return manifest
    try:
        with manifest_lock(root):
            if not current():
                atomic_write_json(path, manifest)
    except PermissionError as e:  # a store we may only read: its status is still known from the records
        log.warning("%s: cannot update %s (%s)", root, MANIFEST_FILE, e.strerror)
    return manifest


def finish_command(argv: list[str]) -> str:
    """The command that finishes whatever is missing: the command line as typed, less the options that split
    the work (--part, --array, --launcher, --slurm-*): one process then does every shard not done."""
    drop_with_value = {"--part", "--array", "--launcher"}
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in drop_with_value or flag.startswith("--slurm-"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return shlex.join(os.fsencode(a).decode("utf-8", "backslashreplace") for a in out)
