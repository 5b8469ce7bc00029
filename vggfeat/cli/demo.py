"""`vggfeat demo`: the whole paper pipeline on embedded, generated data, in minutes on a laptop CPU."""

from __future__ import annotations

import errno
import logging

import click

from vggfeat import defaults
from vggfeat.cli.params import batch_size_option, device_option, workers_option
from vggfeat.demo.config import DEMO_BATCH_SIZE, DEMO_WORKERS
from vggfeat.demo.report import summary_lines


@click.command(context_settings={"max_content_width": 100})
@click.option(
    "-o",
    "--out",
    default=str(defaults.out_dir("demo")),
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for everything the demo makes; the report is OUT/report. Rerunning resumes.",
)
@click.option("--quick", is_flag=True, help="Less data and fewer epochs: about 10 s (the tests use it).")
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Redraw everything random (data, initialisation, order, the random net); S > 0 keeps its own "
    "folders in OUT (report-seedS, ...).",
)
@device_option(default="cpu", more="The demo's numbers are the CPU's; a GPU's differ by float rounding.")
@batch_size_option(default=DEMO_BATCH_SIZE, help="Images per forward pass when describing the target images.")
@workers_option(default=DEMO_WORKERS, help="Loader processes when describing the target images (its images are small).")
def demo(out: str, quick: bool, seed: int, device: str, batch_size: int, workers: int) -> None:
    """Train a net, transfer its features to a new task, and compare with a random net - no downloads.

    \b
    1. net A (narrow) trained from scratch on generated shapes and textures (recipes/demo/vgg_a.yaml;
       --quick: single VOC pictograms, vgg_a_quick.yaml)
    2. net D initialised from A, then trained (recipes/demo/vgg_d.yaml; Sect. 3.1)
    3. a generated target task in the VOC2007 layout: multi-label scenes of 20 classes, unseen (--quick:
       the source's 10 among them)
    4. fc7 descriptors (multi-scale, flip-averaged; Appendix B) -> linear SVMs (11-point mAP) and faiss kNN
    5. the same for a randomly initialised net D: what does training add?

    About 1.5 minutes on 2 CPU cores; --quick about 10 s. Writes OUT/report/demo.md, demo.json and plots.
    """
    from vggfeat.demo.pipeline import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        report = run_demo(
            out,
            quick=quick,
            seed=seed,
            device=device,
            batch_size=batch_size,
            workers=workers,
            progress=True,
            echo=lambda m: click.secho(m, bold=True),
        )
    except KeyboardInterrupt:
        again = f"vggfeat demo --out {out}" + (" --quick" if quick else "") + (f" --seed {seed}" if seed else "")
        again += f" --device {device}" if device != "cpu" else ""
        again += f" --batch-size {batch_size}" if batch_size != DEMO_BATCH_SIZE else ""
        again += f" --workers {workers}" if workers != DEMO_WORKERS else ""
        click.secho(
            f"\ninterrupted: run `{again}` again to resume",
            fg="yellow",
            err=True,
        )
        raise SystemExit(130) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise click.ClickException(
                f"the disk is full while writing to {out}: free some space, or use --out "
                "on another disk, and run the demo again (it resumes)"
            ) from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise click.ClickException(
                f"cannot write to {out}: {e.strerror}; choose another folder with --out"
            ) from None
        raise
    click.echo("")
    for line in summary_lines(report):
        click.echo(line)
    folder = f"{out}/report" + (f"-seed{seed}" if seed else "")
    click.echo(f"\nreport: {folder}/demo.md (+ demo.json, training_curve.png, per_class_ap.png)")
