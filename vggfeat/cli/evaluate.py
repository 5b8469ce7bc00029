"""`vggfeat evaluate`: top-1/top-5 error on a validation set by the paper's dense and multi-crop
protocols and their fusion over nets (Sect. 3.2, Tables 3-7)."""
from __future__ import annotations

import click


@click.command()
@click.option("--weights", "weights", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="A weight file (repeat to fuse several nets: posteriors averaged).")
@click.option("--data-root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset folder with val/<class>/ (class order from train/ if present), or a class-per-folder val set.")
@click.option("--val-labels", type=click.Path(exists=True, dir_okay=False), help="Labels file for a flat val/ folder.")
@click.option("--protocol", type=click.Choice(["dense", "multicrop", "both", "all"]), default="dense", show_default=True,
              help="'both' averages dense and multi-crop posteriors; 'all' reports the three.")
@click.option("--scales", default="256,384,512", show_default=True, help="Test scales Q, comma-separated.")
@click.option("--limit", type=int, default=0, help="Evaluate the first N images only.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def evaluate(weights, data_root, val_labels, protocol, scales, limit, device, as_json) -> None:
    """Top-1 and top-5 error of one or more trained nets on a validation set."""
    import json
    from pathlib import Path

    from vggfeat.data.folder import class_folders, scan_flat, scan_folder, Samples
    from vggfeat.evaluate import evaluate_nets
    from vggfeat.models import load_model
    from vggfeat.utils.device import resolve_device

    root = Path(data_root)
    qs = [int(s) for s in scales.split(",") if s.strip()]
    classes = class_folders(root / "train") if (root / "train").is_dir() else None
    val_root = root / "val" if (root / "val").is_dir() else root
    samples = scan_flat(val_root, val_labels, classes or ()) if val_labels else scan_folder(val_root, classes)
    if limit > 0:
        samples = Samples(samples.paths[:limit], samples.labels[:limit], samples.classes)
    dev = resolve_device(device)
    models = []
    for w in weights:
        m = load_model(w).to(dev)
        m.source = Path(w).name
        models.append(m)
    protocols = ["dense", "multicrop", "both"] if protocol == "all" else [protocol]
    rows = evaluate_nets(models, samples, protocols=protocols, scales=qs, device=dev)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{len(samples)} images, Q = {', '.join(map(str, qs))}")
    click.echo(f"{'net':<32} {'protocol':<10} {'top-1 err':>9} {'top-5 err':>9}")
    for r in rows:
        click.echo(f"{r['net']:<32} {r['protocol']:<10} {100 * r['top1_err']:8.2f}% {100 * r['top5_err']:8.2f}%")
