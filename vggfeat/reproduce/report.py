"""Table 11 / Table 12 as we measured them, the paper's numbers beside ours and labelled as the paper's:
terminal lines, markdown, JSON and a PNG bar chart, each written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vggfeat.features.protocol import FUSION_L2_HELP
from vggfeat.utils.files import atomic_write_figure, atomic_write_json, atomic_write_text, display_name


def _fmt(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} +- {std:.1f}"


def _paper(cell: dict[str, Any]) -> str:
    return "-" if cell.get("paper") is None else _fmt(*cell["paper"])


def table_lines(result: dict[str, Any]) -> list[str]:
    """The terminal table: per row, ours and the paper's value in every column; reasons for empty columns."""
    cols = result["columns"]
    cells = {
        c["id"]: [_fmt(r["cells"][c["id"]].get("ours"), r["cells"][c["id"]].get("std")) for r in result["rows"]]
        + [_paper(r["cells"][c["id"]]) for r in result["rows"]]
        for c in cols
    }
    widths = {c["id"]: max(len(c["id"]), *(len(v) for v in cells[c["id"]])) for c in cols}
    name_w = max(len(r["method"]) for r in result["rows"]) + 8
    lines = [
        f"{result['table']} (%): ours / paper",
        " " * name_w + "".join(f"  {c['id']:>{widths[c['id']]}}" for c in cols),
    ]
    for row in result["rows"]:
        for who in ("ours", "paper"):
            values = [
                _fmt(row["cells"][c["id"]].get("ours"), row["cells"][c["id"]].get("std"))
                if who == "ours"
                else _paper(row["cells"][c["id"]])
                for c in cols
            ]
            label = f"{row['method']} ({who})"
            lines.append(
                f"{label:<{name_w}}" + "".join(f"  {v:>{widths[c['id']]}}" for v, c in zip(values, cols, strict=True))
            )
    lines.append(f"'paper' rows: {result['paper_label']}.")
    if fusion := result["settings"].get("fusion_l2"):
        lines.append(f"D & E: fusion_l2: {fusion} ({FUSION_L2_HELP[fusion]})")
    for c in cols:
        if c["status"] == "missing":
            lines.append(f"{c['id']}: empty - {c['reason']}")
    lines += _excluded(result)
    return lines


def _excluded(result: dict[str, Any]) -> list[str]:
    """One line per column whose classes were not all scored: which, and why (its report has them per class)."""
    out = []
    for c in result["columns"]:
        excluded: dict[str, str] = {}
        for row in result["rows"]:
            excluded.update(row["cells"][c["id"]].get("excluded") or {})
        if excluded:
            names = ", ".join(f"{display_name(k)} ({v})" for k, v in excluded.items())
            out.append(f"{c['id']}: {len(excluded)} classes excluded from ours: {names}")
    return out


def markdown(result: dict[str, Any]) -> str:
    cols = result["columns"]
    out = [
        f"# {result['table']}: our numbers beside the paper's",
        "",
        "| method | " + " | ".join(c["title"] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for row in result["rows"]:
        cells = [row["cells"][c["id"]] for c in cols]
        out.append(
            f"| **{row['method']} (ours)** | "
            + " | ".join(f"**{_fmt(x.get('ours'), x.get('std'))}**" for x in cells)
            + " |"
        )
        out.append(f"| {row['method']} - paper (reference) | " + " | ".join(_paper(x) for x in cells) + " |")
    out += ["", f"_{result['paper_label']}._", ""]
    missing = [c for c in cols if c["status"] == "missing"]
    if missing:
        out += ["## Empty columns", ""] + [f"- {c['title']}: {c['reason']}" for c in missing] + [""]
    if excluded := _excluded(result):
        out += ["## Classes left out of our numbers", ""] + [f"- {line}" for line in excluded] + [""]
    nets = result["nets"]
    out += [
        "## Settings",
        "",
        f"- net D: {nets['D'][0]} ({nets['D'][1] or 'RANDOM init'})",
        f"- net E: {nets['E'][0]} ({nets['E'][1] or 'RANDOM init'})",
        f"- `{result['settings']}`",
        "- per-benchmark reports (per class, chosen C, features): "
        + ", ".join(f"`{x['report']}`" for row in result["rows"] for x in row["cells"].values() if x.get("report")),
        "",
    ]
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars per column: ours (solid) and the paper's (hatched) for D, E and D & E."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = result["columns"]
    fig, ax = plt.subplots(figsize=(2.6 + 2.2 * len(cols), 4.8))
    width = 0.13
    for k, row in enumerate(result["rows"]):
        ours = [row["cells"][c["id"]].get("ours") for c in cols]
        paper = [(row["cells"][c["id"]].get("paper") or (None,))[0] for c in cols]
        x = np.arange(len(cols)) + (k - 1) * 2 * width
        colour = f"C{k}"
        ax.bar(
            x - width / 2,
            [np.nan if v is None else v for v in ours],
            width,
            color=colour,
            label=f"{row['method']} (ours)",
        )
        ax.bar(
            x + width / 2,
            [np.nan if v is None else v for v in paper],
            width,
            color="white",
            edgecolor=colour,
            hatch="//",
            label=f"{row['method']} (paper)",
        )
    for i, c in enumerate(cols):
        if c["status"] == "missing":  # our bars are absent there: say why rather than leave a silent gap
            ax.text(i, 3, "no data here\n(see .md)", ha="center", fontsize=7, color="grey")
    ax.set_xticks(np.arange(len(cols)), [c["title"].replace(" (", "\n(") for c in cols], fontsize=7)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title(f"{result['table']}: ours (solid) vs paper (hatched, reference)")
    ax.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22))  # below: never over a bar
    fig.tight_layout()
    atomic_write_figure(fig, path)
    return path


def write_table(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """OUT/<table>.json, .md and .png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = result["table"]
    files = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "plot": out / f"{stem}.png"}
    atomic_write_json(files["json"], {**result, "files": {k: str(v) for k, v in files.items()}})
    atomic_write_text(files["markdown"], markdown(result))
    plot(result, files["plot"])
    return files
