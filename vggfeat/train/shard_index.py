"""How many labelled samples each training tar shard holds, read once and cached in the run folder: the counts
fix the steps of an epoch and cut the epoch's sample stream into equal shares for the processes before any
reading (Sect. 3.1's fixed-size global batches), so no process pads, repeats or drops a sample."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vggfeat.data.tar_shards import TarProblem, TarSample, iter_tar_samples
from vggfeat.errors import DatasetError
from vggfeat.utils.files import atomic_write_json

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


def labelled_samples(url: str) -> Iterator[tuple[TarSample, int] | TarProblem]:
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


def index_shards(urls: list[str], cache: Path) -> list[ShardCount]:
    """The count of every shard, from `cache` (a JSON file) where the shard's size and mtime are unchanged,
    else by reading the shard; the cache is rewritten when anything was counted."""
    known: dict[str, dict] = {}
    if cache.exists():
        try:
            known = {e["url"]: e for e in json.loads(cache.read_text())["shards"]}
        except (ValueError, KeyError, TypeError):
            log.warning("%s is not a shard index; counting the shards again", cache)
    out, counted = [], 0
    for url in urls:
        st = os.stat(url)
        entry = known.get(url)
        if entry and (entry.get("size"), entry.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            out.append(ShardCount(**entry))
        else:
            out.append(count_shard(url))
            counted += 1
    if counted:
        log.info("counted the samples of %d tar shards (%d cached)", counted, len(urls) - counted)
        atomic_write_json(cache, {"shards": [asdict(c) for c in out]})
    if not any(c.samples for c in out):
        raise DatasetError(f"no labelled sample in the {len(urls)} tar shards from {urls[0]} on (see the warnings)")
    return out


def index_digest(counts: list[ShardCount]) -> str:
    """What a checkpoint records of the shards: a resumed run must read the same samples in the same order."""
    text = json.dumps([(c.url, c.size, c.samples) for c in counts])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
