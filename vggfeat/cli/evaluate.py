"""`vggfeat evaluate`: top-1/top-5 error on a validation set by the paper's dense and multi-crop
protocols and their fusion over nets (Sect. 3.2, Tables 3-7)."""

from __future__ import annotations

import click

from vggfeat.cli.params import SCALES, batch_size_option, device_option, workers_option
from vggfeat.cli.weights import say_default
from vggfeat.data.folder import Samples, class_folders, scan_flat, scan_folder
from vggfeat.utils.device import resolve_device
from vggfeat.utils.progress import progress_bar
from vggfeat.weight_sources import DEFAULT_WEIGHTS, WEIGHTS_HELP


@click.command()
@click.option(
    "--weights",
    "weights",
    multiple=True,
    help="Repeat to fuse several nets (posteriors averaged). " + WEIGHTS_HELP,
)
@click.option(
    "--data-root",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Dataset folder with val/<class>/ (class order from train/ if present), or a class-per-folder val set.",
)
@click.option(
    "--classes",
    "classes_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The net's class list, one class name (wnid) per line in output order (default: train/ folders, "
    "or the val/ folders when there is one per class of the net).",
)
@click.option("--val-labels", type=click.Path(exists=True, dir_okay=False), help="Labels file for a flat val/ folder.")
@click.option(
    "--protocol",
    type=click.Choice(["dense", "multicrop", "both", "all"]),
    default="dense",
    show_default=True,
    help="'both' averages dense and multi-crop posteriors; 'all' reports the three.",
)
@click.option(
    "--scales",
    default="256,384,512",
    show_default=True,
    type=SCALES,
    help="Test scales Q, comma-separated; each at least the net's crop size.",
)
@click.option(
    "--fast-decode",
    is_flag=True,
    help="Decode large JPEGs at 1/2..1/8 size before rescaling (PIL draft mode): faster, not the same "
    "pixels. Default: the exact rescale of the fully decoded image.",
)
@click.option("--limit", type=int, default=0, help="Evaluate the first N images only.")
@device_option()
@batch_size_option(help="Images (dense) or crops (multi-crop) per forward pass; their flipped copies ride along.")
@workers_option()
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as one JSON list instead of a table.")
def evaluate(
    weights,
    data_root,
    classes_file,
    val_labels,
    protocol,
    scales,
    fast_decode,
    limit,
    device,
    batch_size,
    workers,
    quiet,
    as_json,
) -> None:
    """Top-1 and top-5 error of one or more trained nets on a validation set."""
    import json
    from pathlib import Path

    from vggfeat.evaluate import evaluate_nets, read_class_file, resolve_classes
    from vggfeat.evaluate.protocols import check_scales
    from vggfeat.models import load_model

    if not weights:
        weights = (DEFAULT_WEIGHTS,)
        say_default([DEFAULT_WEIGHTS])
    root = Path(data_root)
    qs = scales
    dev = resolve_device(device)
    models = []
    for w in weights:
        m = load_model(w).to(dev)
        m.source = str(w)  # the path as given: two model.safetensors rows stay distinguishable
        models.append(m)
    check_scales(models, qs)
    num_classes = models[0].num_classes
    if classes_file:
        classes, source = read_class_file(classes_file), str(classes_file)
    elif (root / "train").is_dir():
        classes, source = class_folders(root / "train"), str(root / "train")
    else:
        classes, source = None, ""
    val_root = root / "val" if (root / "val").is_dir() else root
    if val_labels:  # labels by class name need a class list; by index they are the net's output indices
        names = classes if classes is not None else tuple(str(i) for i in range(num_classes))
        samples = scan_flat(val_root, val_labels, resolve_classes(names, num_classes, names, source or "the net"))
    else:
        classes = resolve_classes(class_folders(val_root), num_classes, classes, source)
        samples = scan_folder(val_root, classes)
    if limit > 0:
        samples = Samples(samples.paths[:limit], samples.labels[:limit], samples.classes)
    protocols = ["dense", "multicrop", "both"] if protocol == "all" else [protocol]
    bar = None
    if not quiet:
        bar = progress_bar(len(samples) * len(models), unit="img", desc="evaluate")
    try:
        rows = evaluate_nets(
            models,
            samples,
            protocols=protocols,
            scales=qs,
            device=dev,
            progress=bar.update if bar else None,
            fast_decode=fast_decode,
            batch_size=batch_size,
            workers=workers,
        )
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2, allow_nan=False))  # strict JSON: a NaN here is a bug, not a result
        return
    click.echo(f"{len(samples)} images, Q = {', '.join(map(str, qs))}")
    width = max(32, *(len(r["net"]) for r in rows))
    click.echo(f"{'net':<{width}} {'protocol':<10} {'top-1 err':>9} {'top-5 err':>9}")
    for r in rows:
        click.echo(f"{r['net']:<{width}} {r['protocol']:<10} {100 * r['top1_err']:8.2f}% {100 * r['top5_err']:8.2f}%")
