"""How many labelled samples each training tar shard holds, read once and cached in the run folder: the counts
fix the steps of an epoch and cut the epoch's sample stream into equal shares for the processes before any
reading (Sect. 3.1's fixed-size global batches), so no process pads, repeats or drops a sample."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vggfeat.data.tar_shards import TarProblem, TarSample, iter_tar_samples
from vggfeat.errors import DatasetError
from vggfeat.utils.files import atomic_write_json, parse_json, read_dataset_text

log = logging.getLogger(__name__)
LABEL_EXT = "cls"  # webdataset's class-index member: ASCII digits


@dataclass(frozen=True)
class ShardCount:
    url: str
    size: int  # bytes, and mtime_ns: a changed shard is counted again
    mtime_ns: int
    samples: int  # samples with an image and a valid label, the ones training reads
    problems: int  # samples left out (no image, no or a bad label, damage)
    max_label: int  # -1 when the shard has no sample


def labelled_samples(url: str) -> Generator[tuple[TarSample, int] | TarProblem, None, None]:
    """The shard's samples with their integer .cls label, in tar order; a sample without one is a TarProblem.
    The one filter both the counting and the reading apply, so their counts agree."""
    for item in iter_tar_samples(url):
        if isinstance(item, TarProblem):
            yield item
            continue
        raw = item.extras.get(LABEL_EXT)
        try:
            label = int(raw.decode("ascii").strip()) if raw is not None else -1
        except (UnicodeDecodeError, ValueError):
            label = -1
        if label < 0:
            what = "no .cls member" if raw is None else f"a .cls member that is not a class index ({raw[:20]!r})"
            yield TarProblem(item.key, url, f"{what}; training reads labelled samples only")
        else:
            yield item, label


def count_shard(url: str) -> ShardCount:
    st = os.stat(url)
    samples, problems, max_label = 0, 0, -1
    for item in labelled_samples(url):
        if isinstance(item, TarProblem):
            problems += 1
            log.warning("tar shard %s: sample %r left out: %s", url, item.key, item.reason)
        else:
            samples += 1
            max_label = max(max_label, item[1])
    return ShardCount(url, st.st_size, st.st_mtime_ns, samples, problems, max_label)


def _read_index(path: Path) -> dict[str, ShardCount]:
    """The counts in a shard index file by url; a damaged file or entry is left out (its shards counted again)."""
    if not path.exists():
        return {}
    try:  # read bounded: a FIFO there is named (a DatasetError, a ValueError), never waited on
        entries = parse_json(read_dataset_text(path, "shard index"))["shards"]
        if not isinstance(entries, list):
            raise TypeError(f"its shards are a {type(entries).__name__}, not a list")
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s is not a shard index (%s); counting its shards again", path, e)
        return {}
    counts = [_checked(e) for e in entries]
    if None in counts:
        log.warning("%s: %d damaged entries; counting their shards again", path, counts.count(None))
    return {c.url: c for c in counts if c is not None}


def _checked(entry: object) -> ShardCount | None:
    """The entry as a ShardCount if it has exactly its fields, with values a count can have."""
    if not isinstance(entry, dict) or set(entry) != {f.name for f in fields(ShardCount)}:
        return None
    c = ShardCount(**entry)
    ints = (c.size, c.mtime_ns, c.samples, c.problems, c.max_label)
    if not isinstance(c.url, str) or any(type(v) is not int for v in ints):  # bool is an int subclass
        return None
    if min(c.size, c.samples, c.problems) < 0 or c.max_label < -1 or (c.samples == 0) != (c.max_label == -1):
        return None
    return c


def _fresh(count: ShardCount | None, url: str) -> ShardCount | None:
    """The cached count of `url` if the file still has the size and mtime it was counted at."""
    st = os.stat(url)
    if count is not None and (count.size, count.mtime_ns) == (st.st_size, st.st_mtime_ns):
        return count
    return None


def index_shards(
    urls: list[str], cache: Path, *, rank: int = 0, world: int = 1, sync: Callable[[], None] = lambda: None
) -> list[ShardCount]:
    """The count of every shard, from `cache` (a JSON file) where the shard's size and mtime are unchanged, else
    by reading the shard. Under torchrun every process calls this: the shards to count are dealt over the
    processes (`sync` is their barrier), each writes its part beside `cache`, rank 0 merges them into it."""
    known = _read_index(cache)
    out = {url: _fresh(known.get(url), url) for url in urls}
    todo = [url for url, count in out.items() if count is None]
    if todo:
        part = cache.with_name(f"{cache.stem}.part{rank}.json")
        mine = [count_shard(url) for url in todo[rank::world]]
        atomic_write_json(part, {"shards": [asdict(c) for c in mine]})
        sync()
        for r in range(world):
            out.update(_read_index(part.with_name(f"{cache.stem}.part{r}.json")))
        sync()  # every process has read every part
        if rank == 0:
            log.info("counted the samples of %d tar shards (%d cached)", len(todo), len(urls) - len(todo))
            atomic_write_json(cache, {"shards": [asdict(c) for c in out.values() if c is not None]})
        part.unlink(missing_ok=True)
    lost = [url for url, count in out.items() if count is None]
    if lost:
        raise DatasetError(
            f"the counts of {len(lost)} tar shards (first {lost[0]}) written by other processes are not in "
            f"{cache.parent}: the run folder must be one folder shared by every process"
        )
    counts = [c for url in urls if (c := out[url]) is not None]  # every one, after the check above
    if not any(c.samples for c in counts):
        raise DatasetError(f"no labelled sample in the {len(urls)} tar shards from {urls[0]} on (see the warnings)")
    return counts


def index_digest(counts: list[ShardCount]) -> str:
    """What a checkpoint records of the shards: a resumed run must read the same samples in the same order. File
    names rather than paths, so a dataset moved to another folder (another node's scratch) still resumes."""
    text = json.dumps([(os.path.basename(c.url), c.size, c.samples) for c in counts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
