"""Tables 11 and 12 of the paper in one call: every benchmark found under a data root, probed with the paper's
settings (Appendix B) for net D, net E and their late fusion D & E, our numbers beside the paper's.

Each row is probed as `linear-probe` probes (probes.benchmark.probe_benchmark): each net's descriptors of a
benchmark are extracted once into a cached store (OUT/<benchmark>/features/...), and the D & E row fuses the
D and E stores, extracting nothing. Each finished row is written to
OUT/<benchmark>/rows/<row>.json with a key of everything it depends on (weights by content, protocol, probe
options, samples, labels, images' size and mtime), so a rerun only does what is missing or changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vggfeat import defaults
from vggfeat.benchmarks.base import DatasetError, benchmark_images, resolve_root
from vggfeat.benchmarks.registry import get_benchmark, load_benchmark
from vggfeat.benchmarks.voc2012_action import IMAGE_AND_BOX, IMAGE_ONLY
from vggfeat.benchmarks.voc_action import ActionProbeSplit
from vggfeat.errors import InputError
from vggfeat.features.runtime import Runtime
from vggfeat.probes.benchmark import LinearProbe, extraction_settings, features_key, probe_benchmark
from vggfeat.probes.report import report_files
from vggfeat.reproduce.report import write_table
from vggfeat.utils.files import atomic_write_json, load_json_file
from vggfeat.utils.inputs import input_identities
from vggfeat.weight_sources import NAME_PREFIXES, RANDOM

if TYPE_CHECKING:
    from vggfeat.probes.run import ProbeResult

log = logging.getLogger(__name__)

ROWS = {"D": "VGG Net-D", "E": "VGG Net-E", "D&E": "VGG Net-D & Net-E"}
TABLE11 = ("voc2007", "voc2012", "caltech101", "caltech256")
# Table 12 (VOC-2012 action, mAP %): one benchmark, two descriptor settings as columns
TABLE12 = ("voc2012-action:image", "voc2012-action:image+box")
TABLES = {"table11": TABLE11, "table12": TABLE12}
TITLES = {
    "voc2007": "VOC-2007 (mAP)",
    "voc2012": "VOC-2012 val (mAP)",
    "caltech101": "Caltech-101 (mean class recall)",
    "caltech256": "Caltech-256 (mean class recall)",
    "voc2012-action:image": "VOC-2012 action val, image only (mAP)",
    "voc2012-action:image+box": "VOC-2012 action val, image + person box (mAP)",
}
PAPER_LABEL = "paper (Simonyan & Zisserman 2015, {table}) - reference, not measured here"


@dataclass(frozen=True)
class Nets:
    """Net D and net E: (model name or 'auto', weight file or None for a random net)."""

    d: tuple[str, str | None]
    e: tuple[str, str | None]


@dataclass
class ReproduceOptions:
    """How to probe: the paper's settings unless overridden (tests pass small scales)."""

    scales: tuple[int, ...] | None = None  # None: each benchmark's Appendix B scales
    layer: str = defaults.LAYER
    Cs: tuple[float, ...] = defaults.COSTS
    holdout: float = defaults.HOLDOUT
    seed: int = defaults.SEED
    splits: int = defaults.SPLITS  # Caltech: the paper's three random splits
    runtime: Runtime | None = None  # device, batch size, loader workers of the extractions
    fusion_l2: str = defaults.FUSION_L2  # D & E: each net L2-normalised before stacking, or only the whole
    progress: bool = True  # extraction progress bars


def paper_value(column: str, row: str) -> tuple[float, float | None] | None:
    """The paper's (mean, std) for a cell of Table 11 or 12 (from the benchmark's paper rows), or None where
    the paper gives none (Table 12 has only D & E)."""

    benchmark, _, variant = column.partition(":")
    if variant:
        method = {"image": IMAGE_ONLY, "image+box": IMAGE_AND_BOX}[variant] if row == "D&E" else None
    else:
        method = ROWS[row]
    found = [(r.mean, r.std) for r in get_benchmark(benchmark).paper_rows if r.method == method]
    return found[0] if found else None


def table_of(column: str) -> str:
    return "Table 12" if column.startswith("voc2012-action") else "Table 11"


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Column:
    """One benchmark of the table: its splits loaded once, and what its rows' numbers depend on in the data."""

    def __init__(self, benchmark: str, root: Path, out: Path, nets: Nets, options: ReproduceOptions) -> None:
        self.benchmark, self.root, self.out, self.options = benchmark, root, out, options
        self.nets = {"D": [nets.d], "E": [nets.e], "D&E": [nets.d, nets.e]}
        self.splits = load_benchmark(
            benchmark, root, seed=options.seed, splits=options.splits, splits_dir=out / "splits"
        )
        self.samples = self._samples_key()

    def _samples_key(self) -> str:
        """What a row depends on in the data: each split's samples with their labels and classes, and every
        image's identity (size, mtime_ns, as a store records it), plus the person boxes of voc2012-action. Labels
        enter as read (not the list files' bytes): a label flipped in any file the reader uses changes them."""
        if self.benchmark == "voc2012-action":
            first = self.splits[0]
            assert isinstance(first, ActionProbeSplit)  # the voc2012-action benchmark's splits
            assert first.train_action is not None and first.test_action is not None
            action = (first.train_action, first.test_action)
            images = sorted({p for a in action for p in a.image_paths})
            boxes = [a.boxes.tolist() for a in action]
        else:
            images, boxes = benchmark_images(self.splits), None
        samples = [
            (s.classes, s.train_paths, s.train_labels.tolist(), s.test_paths, s.test_labels.tolist())
            for s in self.splits
        ]
        return _key(
            {"samples": samples, "images": list(zip(images, input_identities(images), strict=True)), "boxes": boxes}
        )

    def key(self, row: str, variant: str) -> str:
        """A finished row's key: everything its numbers depend on (features, probe options, data)."""
        o = self.options
        settings = extraction_settings(self.benchmark, self.nets[row], layer=o.layer, scales=o.scales, seed=o.seed)
        return _key(
            {
                "features": features_key(settings, o.fusion_l2, runtime=o.runtime),
                "variant": variant,
                "Cs": o.Cs,
                "holdout": o.holdout,
                "seed": o.seed,
                "samples": self.samples,
            }
        )

    def probe(self, row: str, variant: str, stem: str) -> ProbeResult:
        """The row's linear probe, as `linear-probe` runs it (probe_benchmark): D & E fuses the D and E stores,
        so with per-net fusion nothing is extracted again."""
        o = self.options
        outcome = probe_benchmark(
            self.benchmark,
            self.root,
            probe=LinearProbe(Cs=tuple(o.Cs), holdout=o.holdout),
            nets=self.nets[row],
            layer=o.layer,
            scales=o.scales,
            fusion_l2=o.fusion_l2,
            runtime=o.runtime,
            out=self.out,
            seed=o.seed,
            box=variant == "image+box",
            overwrite=True,  # the row's key (checked above) already says whether this report is stale
            stem=stem,
            splits=self.splits,
            progress=o.progress,
            echo=log.debug,
        )
        return outcome.result  # type: ignore[return-value]


def _cell(result: ProbeResult, report_file: Path) -> dict[str, Any]:
    per_split = [round(100 * s.headline, 2) for s in result.splits]
    return {
        "ours": round(100 * result.headline, 2),
        "std": round(100 * result.headline_std, 2) if len(result.splits) > 1 else None,
        "per_split": per_split,
        "report": str(report_file),
        "excluded": result.excluded,  # {class: why}: not in "ours"
    }


def reproduce_table(
    table: str,
    root: str | Path | None,
    out: str | Path,
    nets: Nets,
    options: ReproduceOptions | None = None,
    *,
    echo: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Probe every benchmark of `table` found under `root` for D, E and D & E; write OUT/<table>.{json,md,png}
    and return the table as a dict. A benchmark whose data is missing or unusable gets an empty column with
    the reason. Finished rows are reused (same features, grid, hold-out and samples), as are extracted stores."""

    if table not in TABLES:
        raise InputError(f"unknown table {table!r}; choose one of {', '.join(TABLES)}")
    options = options or ReproduceOptions()
    root, out = resolve_root(root), Path(out)
    check_nets(nets)  # a damaged or missing weight file stops here, before any dataset is read or extracted
    columns: list[dict[str, Any]] = []
    rows: dict[str, dict[str, Any]] = {r: {} for r in ROWS}
    loaded: dict[str, _Column | str] = {}
    for column in TABLES[table]:
        benchmark, _, variant = column.partition(":")
        if benchmark not in loaded:
            try:
                loaded[benchmark] = _Column(benchmark, root, out / benchmark, nets, options)
            except DatasetError as e:
                loaded[benchmark] = str(e)
        col = loaded[benchmark]
        info = {"id": column, "benchmark": benchmark, "title": TITLES[column], "table": table_of(column)}
        if isinstance(col, str):
            echo(f"{column}: no usable data, column left empty (reason below the table)")
            columns.append({**info, "status": "missing", "reason": col})
            for r in ROWS:
                rows[r][column] = {"ours": None, "paper": paper_value(column, r)}
            continue
        columns.append({**info, "status": "done", "data": col.splits[0].summary(), "splits": len(col.splits)})
        for r in ROWS:
            key = col.key(r, variant)
            slug = r.replace("&", "").lower() + (f"-{variant}" if variant else "")
            row_file = col.out / "rows" / f"{slug}.json"
            cell = _reuse(row_file, key)
            if cell is None:
                echo(f"{column}: probing {ROWS[r]}")
                result = col.probe(r, variant, f"linear-probe-{slug}")
                cell = _cell(result, report_files(col.out, f"linear-probe-{slug}")["json"])
                row_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(row_file, {"key": key, "cell": cell})
            else:
                echo(f"{column}: {ROWS[r]} reused from {row_file}")
            rows[r][column] = {**cell, "paper": paper_value(column, r)}

    if all(c["status"] == "missing" for c in columns):
        reasons = "; ".join(f"{c['id']}: {c['reason']}" for c in columns)
        raise DatasetError(f"none of {table}'s datasets is under {root} ({reasons}); check --root")
    summary: dict[str, Any] = {
        "table": table,
        "columns": columns,
        "rows": [{"row": r, "method": ROWS[r], "cells": rows[r]} for r in ROWS],
        "paper_label": PAPER_LABEL.format(table="Table 12" if table == "table12" else "Table 11"),
        "nets": {"D": list(nets.d), "E": list(nets.e)},
        "settings": {
            "scales": list(options.scales) if options.scales else "Appendix B per benchmark",
            "layer": options.layer,
            "Cs": list(options.Cs),
            "holdout": options.holdout,
            "seed": options.seed,
            "splits": options.splits,
            "fusion_l2": options.fusion_l2,
        },
    }
    summary["files"] = {k: str(v) for k, v in write_table(summary, out).items()}
    return summary


def check_nets(nets: Nets) -> None:
    """Read each net's weights once before any work (a WeightsError names the file); the read is cached by
    vggfeat.models.mapped, so the extraction that follows does not read the file again."""
    # deferred: vggfeat.models loads torch, which `vggfeat reproduce --help` must not
    from vggfeat.models.resolve import resolve_weights
    from vggfeat.models.weights import infer_architecture, naming_file, read_weights

    for model, weights in (nets.d, nets.e):
        if weights is None:
            continue
        with naming_file(weights):
            path = resolve_weights(weights).path
            assert path is not None  # weights is a file or a name: a random net has weights None
            state, _ = read_weights(path)
            if model == "auto":
                infer_architecture(state)


def _reuse(row_file: Path, key: str) -> dict[str, Any] | None:
    """A finished row's cell when its key matches (same features, grid, samples), else None."""
    try:
        saved = load_json_file(row_file)
    except (OSError, ValueError):
        return None  # none, or unreadable: probe again (rows are written atomically, so this is a hand edit)
    return saved.get("cell") if isinstance(saved, dict) and saved.get("key") == key else None


def parse_net(value: str, random_arch: str = "vgg_d") -> tuple[str, str | None]:
    """--net-d/--net-e -> (model, weights): whatever `--weights` takes (a weight file - vggfeat, torchvision
    .pth or Caffe .caffemodel -, torchvision:vgg16, timm:TAG, hf-hub:..., random), the architecture read from the
    weights; or MODEL=WEIGHTS to name the architecture. A file that does not exist is refused here, before any
    dataset is read."""

    model, sep, weights = value.partition("=")
    if not sep:
        model, weights = "auto", value
    if weights == RANDOM:
        return (random_arch if model == "auto" else model), None
    named = weights.startswith(NAME_PREFIXES)  # torchvision:, timm:, hf-hub: (resolved when extracting)
    if not named and not Path(weights).expanduser().is_file():
        raise InputError(
            f"weight file {weights!r} not found; give a weight file, a name such as torchvision:vgg16, or MODEL=WEIGHTS"
        )
    return model, weights if named else str(Path(weights).expanduser())


def table_columns(table: str) -> Sequence[str]:
    return TABLES[table]
