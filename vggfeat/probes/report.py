"""Probe reports: per-class table, headline, the paper's Table 11 row beside ours (labelled as the paper's),
chosen C per class, feature settings and weight hashes - as JSON, markdown, a PNG plot and a terminal table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vggfeat import metrics
from vggfeat.benchmarks.registry import get_benchmark
from vggfeat.features.protocol import FUSION_L2_HELP
from vggfeat.probes.run import ProbeResult
from vggfeat.utils.files import atomic_write_figure, atomic_write_json, atomic_write_text, display_name

PAPER_LABEL = "paper (Simonyan & Zisserman 2015, Table 11) - reference, not measured here"


def _pct(v: float) -> float:
    return round(100.0 * float(v), 2)


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.1f}" if std is None else f"{mean:.1f} +- {std:.1f}"


def _value(row: dict[str, Any]) -> str:
    return "-" if row["value"] is None else f"{row['value']:.1f}"


def _why(row: dict[str, Any]) -> str:
    """' (excluded: no positives in trainval)' for a class left out of the headline, else ''."""
    return f" (excluded: {row['excluded']})" if row.get("excluded") else ""


def report_dict(result: ProbeResult) -> dict[str, Any]:
    """Everything the report shows, in percent, JSON-ready: a class without a value (no positives in train or
    test) has value None and says why under "excluded"; "excluded_classes" lists them all."""
    per_class = result.per_class
    chosen = [s.chosen_C for s in result.splits]
    excluded = result.excluded
    rows = []
    for k, name in enumerate(result.classes):
        row = {
            "class": name,
            "value": _pct(per_class[k]) if np.isfinite(per_class[k]) else None,
            "per_split": [_pct(s.per_class[k]) if np.isfinite(s.per_class[k]) else None for s in result.splits],
        }
        if name in excluded:
            row["excluded"] = excluded[name]
        if chosen[0] is not None:
            row["chosen_C"] = [float(c[k]) for c in chosen if c is not None]  # every split has one, or none
        rows.append(row)
    bench = get_benchmark(result.benchmark)
    # the paper's numbers are printed as references beside measured ones - never as our results
    paper = {r.method: {"mean": r.mean, "std": r.std} for r in bench.paper_rows}
    table = bench.paper_rows[0].table if bench.paper_rows else "Table 11"
    return {
        "benchmark": result.benchmark,
        "method": result.method,
        "metric": result.metric,
        "metric_title": bench.metric_title,
        "headline_name": bench.headline,
        "headline": _pct(result.headline),
        "headline_std": _pct(result.headline_std) if len(result.splits) > 1 else None,
        "per_split": [
            {"split": s.split, "headline": _pct(s.headline), "seconds": round(s.seconds, 3)} for s in result.splits
        ],
        "per_class": rows,
        "excluded_classes": excluded,  # {class: why}: not in the headline
        # key kept from when every benchmark was Table 11's; "table" says which table (voc2012-action: Table 12)
        "paper_table11": {"label": PAPER_LABEL.replace("Table 11", table), "table": table, "rows": paper}
        if paper
        else None,
        "features": result.features,
        "params": result.params,
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The terminal table: per class, then ours beside the paper's rows."""
    name_w = max(12, *(len(display_name(r["class"])) for r in report["per_class"]))
    has_c = "chosen_C" in report["per_class"][0]
    unit = report["metric_title"].split(" ")[0]
    lines = [f"{'class':<{name_w}}  {unit + ' %':>8}" + ("  C (per split)" if has_c else "")]
    for r in report["per_class"]:
        cs = "  " + ",".join(f"{c:g}" for c in r["chosen_C"]) if has_c else ""
        lines.append(f"{display_name(r['class']):<{name_w}}  {_value(r):>8}{cs}{_why(r)}")
    head = _fmt(report["headline"], report["headline_std"])
    lines.append("")
    lines.append(
        f"{report['benchmark']} {report['headline_name']} (ours, {report['method']}, "
        f"{len(report['per_split'])} split(s)): {head} %{_coverage(report)}"
    )
    if report["paper_table11"]:
        lines.append(f"{report['paper_table11']['label']}:")
        for row, v in report["paper_table11"]["rows"].items():
            lines.append(f"  {row:<20} {_fmt(v['mean'], v['std'])} %")
    return lines


def _coverage(report: dict[str, Any]) -> str:
    """', 19 of 20 classes (bird excluded: ...)' when some class has no value; '' when all have one."""
    excluded = report.get("excluded_classes") or {}
    if not excluded:
        return ""
    names = ", ".join(display_name(c) for c in list(excluded)[:5]) + (", ..." if len(excluded) > 5 else "")
    n = len(report["per_class"])
    return f", {n - len(excluded)} of {n} classes ({names} excluded: see the class rows)"


def markdown(report: dict[str, Any]) -> str:
    f = report["features"]
    nets = ", ".join(
        f"{m['model']} ({'weights sha256 ' + m['weights_sha256'][:16] if m.get('weights_sha256') else 'RANDOM init'})"
        for m in f.get("models") or []
    )
    head = _fmt(report["headline"], report["headline_std"])
    out = [
        f"# {report['benchmark']}: {report['method']}",
        "",
        f"**{report['headline_name']} (ours): {head} %** over {len(report['per_split'])} split(s)"
        f"{_coverage(report)}; metric: {report['metric_title']}.",
        "",
    ]
    if report["paper_table11"]:
        out += ["| method | " + report["headline_name"] + " % |", "|---|---|", f"| **ours** ({nets}) | **{head}** |"]
        for row, v in report["paper_table11"]["rows"].items():
            table = report["paper_table11"].get("table", "Table 11")
            out.append(f"| {row} - paper, {table} (reference) | {_fmt(v['mean'], v['std'])} |")
        out += ["", f"_{report['paper_table11']['label']}._", ""]
    has_c = "chosen_C" in report["per_class"][0]
    out += [
        "| class | " + report["metric_title"] + " % |" + (" chosen C (per split) |" if has_c else ""),
        "|---|---|" + ("---|" if has_c else ""),
    ]
    for r in report["per_class"]:
        cs = f" {', '.join(f'{c:g}' for c in r['chosen_C'])} |" if has_c else ""
        out.append(f"| {display_name(r['class'])} | {_value(r)}{_why(r)} |" + cs)
    out += [
        "",
        "## Features",
        "",
        f"- store: `{f.get('store')}`"
        if not f.get("stacked_from")
        else "- stores (fused in memory): " + ", ".join(f"`{x}`" for x in f["stacked_from"]),
        f"- nets: {nets}",
        f"- layer {f.get('layer')}, scales {f.get('scales')}, aggregate {f.get('aggregate')}, flip {f.get('flip')}, "
        f"L2 {f.get('l2')}, {f.get('dim')}-D",
        *(
            [f"- fusion: {FUSION_L2_HELP[f['fusion_l2']]} (`--fusion-l2 {f['fusion_l2']}`)"]
            if f.get("fusion_l2") in FUSION_L2_HELP
            else []
        ),
        "",
        "## Settings",
        "",
        f"`{report['params']}`",
        "",
    ]
    return "\n".join(out)


def plot(result: ProbeResult, path: Path) -> None:
    """VOC: precision-recall curves of every class (split 0). Caltech/folder: per-class recall, sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = result.splits[0]
    if result.metric in ("voc07_ap", "voc12_ap"):
        fig, ax = plt.subplots(figsize=(8, 6))
        for k, name in enumerate(result.classes):
            precision, recall = metrics.precision_recall(split.scores[:, k], split.labels[:, k])
            value = split.per_class[k]
            shown = f"{100 * value:.0f}" if np.isfinite(value) else "excluded"
            ax.plot(recall, precision, lw=1, label=f"{display_name(name)} {shown}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=6, ncol=2, loc="lower left")
    else:
        values = 100 * result.per_class
        order = np.argsort(values)
        fig, ax = plt.subplots(figsize=(8, max(3, 0.12 * len(values))))
        ax.barh(np.arange(len(values)), values[order])
        ax.set_yticks(np.arange(len(values)), [display_name(result.classes[i]) for i in order], fontsize=5)
        ax.set_xlabel("recall %")
    ax.set_title(
        f"{result.benchmark}: {result.method}, {get_benchmark(result.benchmark).headline} {100 * result.headline:.1f} %"
    )
    fig.tight_layout()
    atomic_write_figure(fig, path)


def report_files(out: str | Path, stem: str) -> dict[str, Path]:
    """The files `write_report` writes: OUT/STEM.json, OUT/STEM.md, OUT/STEM.png."""
    out = Path(out)
    return {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}


def write_report(
    result: ProbeResult,
    out: str | Path,
    stem: str,
    *,
    with_plot: bool = True,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write STEM.json, STEM.md and STEM.png into OUT (each atomically; the plot, about 0.2 s, only
    `with_plot`); returns the report dict written to STEM.json, so callers need not read it back
    (`report_files` names the files). `identity` (what the probe was computed from) is recorded in the JSON."""
    Path(out).mkdir(parents=True, exist_ok=True)
    report = report_dict(result)
    if identity is not None:
        report["identity"] = identity
    paths = report_files(out, stem)
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["markdown"], markdown(report))
    if with_plot:
        plot(result, paths["plot"])
    return report
