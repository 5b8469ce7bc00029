"""The demo's report folder: demo.json (every number), demo.md, training_curve.png and per_class_ap.png.
The probe numbers are the dicts the probes' own report files were written from, so the two never disagree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vggfeat.config import to_dict
from vggfeat.demo.config import DemoConfig
from vggfeat.utils.files import atomic_write_figure, atomic_write_json, atomic_write_text


def _curve(summary: dict[str, Any]) -> list[dict[str, float]]:
    return [
        {"epoch": h["epoch"], "val_top1": round(100 * h["val_top1"], 2), "val_top5": round(100 * h["val_top5"], 2)}
        for h in summary["history"]
    ]


def _mean_of(draws: list[dict[str, Any]]) -> dict[str, Any]:
    """One random net's results as they are; several: their mean (the baseline) and each one's under "draws"."""
    if len(draws) == 1:
        return draws[0]

    def mean(values: list[float | None]) -> float | None:  # None: a class without test positives, for every net
        numbers = [v for v in values if v is not None]
        return None if len(numbers) < len(values) else round(sum(numbers) / len(numbers), 2)

    classes = draws[0]["per_class_ap"]
    return {
        "linear_map": mean([d["linear_map"] for d in draws]),
        "knn_map": mean([d["knn_map"] for d in draws]),
        "per_class_ap": {c: mean([d["per_class_ap"][c] for d in draws]) for c in classes},
        "draws": draws,
    }


def random_label(report: dict[str, Any]) -> str:
    """The baseline's column title: "random net D", or "random D, mean of N" for N random nets."""
    n = len(report["results"]["random"].get("draws", [None]))
    return "random net D" if n == 1 else f"random D, mean of {n}"


def demo_dict(
    cfg: DemoConfig,
    quick: bool,
    runs: dict[str, Path],
    summaries: dict[str, dict],
    probes: dict[str, dict[str, tuple[dict, Path]]],
    timings: dict[str, float],
    seed: int = 0,
    source: str = "generated shapes and textures",
    target: str = "classes the source never saw",
    shared_classes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """`probes`: per net ("trained", then the random baselines "random", "random2", ...), per probe ("linear",
    "knn"), (the report dict write_report wrote, its JSON file); `source`, `target`: what the source's and the
    target's classes are, in words; `shared_classes`: the target classes the source had too, whose linear-SVM
    mAP is then reported apart from the others' (by_source_class). Several random nets: results["random"] holds
    their mean mAP and per-class AP, and each net's own results under "draws"."""
    per_net: dict[str, dict[str, Any]] = {}
    for tag, reports in probes.items():
        (linear, linear_file), (knn, knn_file) = reports["linear"], reports["knn"]
        per_net[tag] = {
            "linear_map": linear["headline"],
            "knn_map": knn["headline"],
            "per_class_ap": {r["class"]: r["value"] for r in linear["per_class"]},
            "chosen_C": {r["class"]: r["chosen_C"][0] for r in linear["per_class"]},
            "linear_report": str(linear_file),
            "knn_report": str(knn_file),
            "features": linear["features"],
        }
    results = {"trained": per_net.pop("trained"), "random": _mean_of(list(per_net.values()))}
    extra = {"by_source_class": _by_source_class(results, shared_classes)} if shared_classes else {}
    return {
        "quick": quick,
        "seed": seed,
        "source": source,
        "target": target,
        "config": to_dict(cfg),
        "training": {name: {"run": str(runs[name]), "curve": _curve(s)} for name, s in summaries.items()},
        "results": results,
        "margin": {
            "linear_map": round(results["trained"]["linear_map"] - results["random"]["linear_map"], 2),
            "knn_map": round(results["trained"]["knn_map"] - results["random"]["knn_map"], 2),
        },
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        **extra,
    }


def _by_source_class(results: dict[str, Any], shared: tuple[str, ...]) -> dict[str, Any]:
    """Linear-SVM mAP of the trained and random nets over the target classes the source had and over the rest:
    does training help only on the classes it saw?"""
    out: dict[str, Any] = {}
    for part, keep in (("source", lambda c: c in shared), ("other", lambda c: c not in shared)):
        row: dict[str, Any] = {}
        for net in ("trained", "random"):
            aps = [v for c, v in results[net]["per_class_ap"].items() if keep(c) and v is not None]
            row[net] = round(sum(aps) / len(aps), 2) if aps else None
        row["classes"] = sum(1 for c in results["trained"]["per_class_ap"] if keep(c))
        out[part] = row
    return out


def _split_rows(report: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(label, trained, random) rows of by_source_class, when the report has one (halves without an AP left out)."""
    split = report.get("by_source_class", {})
    labels = {"source": "the source's {} classes", "other": "the other {}"}
    return [
        (f"linear SVMs, {labels[part].format(row['classes'])}", row["trained"], row["random"])
        for part, row in split.items()
        if row["trained"] is not None and row["random"] is not None
    ]


def summary_lines(report: dict[str, Any]) -> list[str]:
    r, t = report["results"], report["training"]
    rl = random_label(report)
    w = max(13, len(rl))
    lines = [f"{'voc2007 (generated), 11-point mAP %':<38} {'trained net D':>14} {rl:>{w}} {'difference':>11}"]
    for key, name in (("linear_map", "linear SVMs"), ("knn_map", "kNN (faiss)")):
        lines.append(
            f"{name:<38} {r['trained'][key]:>14.1f} {r['random'][key]:>{w}.1f} {report['margin'][key]:>+11.1f}"
        )
    for name, tv, rv in _split_rows(report):
        lines.append(f"{name:<38} {tv:>14.1f} {rv:>{w}.1f} {tv - rv:>+11.1f}")
    lines += ["", f"{'class AP %':<38} {'trained':>14} {'random':>{w}}"]
    for c, v in r["trained"]["per_class_ap"].items():
        rv = r["random"]["per_class_ap"][c]
        lines.append(f"{c:<38} {'-' if v is None else f'{v:.1f}':>14} {'-' if rv is None else f'{rv:.1f}':>{w}}")
    if "draws" in r["random"]:
        each = ", ".join(f"{d['linear_map']:.1f}/{d['knn_map']:.1f}" for d in r["random"]["draws"])
        lines += ["", f"random nets D, linear/kNN mAP each: {each}"]
    a, d = t["net_a"]["curve"], t["net_d"]["curve"]
    lines += [
        "",
        f"source task val top-1 %: net A {a[-1]['val_top1']:.1f} after {len(a)} epochs, "
        f"net D {d[-1]['val_top1']:.1f} after {len(d)} epochs",
    ]
    lines.append(f"total {report['seconds']['total']:.0f} s")
    return lines


def markdown(report: dict[str, Any]) -> str:
    r, m = report["results"], report["margin"]
    out = [
        "# vggfeat demo" + (" (--quick)" if report["quick"] else ""),
        "",
        f"Net A trained from scratch on {report['source']}, net D initialised "
        "from A and trained (Sect. 3.1); their fc7 descriptors (multi-scale, flip-averaged, Appendix B) transferred "
        f"to a generated VOC2007-layout task of {report['target']}, with "
        "linear SVMs and faiss kNN; the same net D "
        "randomly initialised as the baseline"
        + (f" ({len(r['random']['draws'])} initialisations, their mean)" if "draws" in r["random"] else "")
        + ". All numbers are measured by this run.",
        "",
        f"| voc2007 (generated), 11-point mAP % | trained net D | {random_label(report)} | difference |",
        "|---|---|---|---|",
        f"| linear SVMs | {r['trained']['linear_map']:.1f} | {r['random']['linear_map']:.1f} "
        f"| {m['linear_map']:+.1f} |",
        f"| kNN (faiss) | {r['trained']['knn_map']:.1f} | {r['random']['knn_map']:.1f} | {m['knn_map']:+.1f} |",
        *(f"| {name} | {tv:.1f} | {rv:.1f} | {tv - rv:+.1f} |" for name, tv, rv in _split_rows(report)),
        "",
        "![per-class AP](per_class_ap.png)",
        "",
        "| class | AP % trained | AP % random | C (trained) |",
        "|---|---|---|---|",
    ]
    for c, v in r["trained"]["per_class_ap"].items():
        rv = r["random"]["per_class_ap"][c]
        out.append(
            f"| {c} | {'-' if v is None else f'{v:.1f}'} | {'-' if rv is None else f'{rv:.1f}'} | "
            f"{r['trained']['chosen_C'][c]:g} |"
        )
    out += [
        "",
        "## Training on the source task",
        "",
        "![training curve](training_curve.png)",
        "",
        "| net | epochs | final val top-1 % | final val top-5 % |",
        "|---|---|---|---|",
    ]
    for name, t in report["training"].items():
        last = t["curve"][-1]
        out.append(f"| {name} (`{t['run']}`) | {len(t['curve'])} | {last['val_top1']:.1f} | {last['val_top5']:.1f} |")
    out += [
        "",
        "Probe reports: " + ", ".join(f"`{net[k]}`" for net in _nets(r) for k in ("linear_report", "knn_report")),
        "",
        "Seconds per step: " + ", ".join(f"{k} {v:g}" for k, v in report["seconds"].items()),
        "",
    ]
    return "\n".join(out)


def _nets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every net's own results: the trained net's, then each random net's."""
    return [results["trained"], *results["random"].get("draws", [results["random"]])]


def plots(report: dict[str, Any], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, t in report["training"].items():
        ax.plot([c["epoch"] for c in t["curve"]], [c["val_top1"] for c in t["curve"]], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("source val top-1 %")
    ax.set_title("training on the generated source task")
    ax.legend()
    fig.tight_layout()
    atomic_write_figure(fig, folder / "training_curve.png", dpi=110)

    classes = list(report["results"]["trained"]["per_class_ap"])
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, tag in enumerate(("trained", "random")):
        vals = [report["results"][tag]["per_class_ap"][c] or 0.0 for c in classes]
        name = "trained net D" if tag == "trained" else random_label(report)
        ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=f"{name} ({report['results'][tag]['linear_map']:.1f} mAP)")
    ax.set_xticks(x, classes, rotation=60, fontsize=7)
    ax.set_ylabel("AP %")
    ax.set_title("linear SVMs on generated VOC2007: per-class AP")
    ax.legend()
    fig.tight_layout()
    atomic_write_figure(fig, folder / "per_class_ap.png", dpi=110)


def write_demo_report(folder: Path, **parts: Any) -> dict[str, Any]:  # parts: demo_dict's arguments
    folder.mkdir(parents=True, exist_ok=True)
    report = demo_dict(**parts)
    plots(report, folder)
    atomic_write_text(folder / "demo.md", markdown(report))
    atomic_write_json(folder / "demo.json", report)  # last: its presence marks a finished demo
    return report
