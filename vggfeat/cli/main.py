"""The `vggfeat` command: a click group whose subcommands live one per module and load on demand."""

from __future__ import annotations

import errno
import importlib
import io
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click

from vggfeat import __version__
from vggfeat.errors import VggfeatError
from vggfeat.utils.cpus import prepare_process
from vggfeat.utils.distributed import env_info

# command name -> "module:attribute"; modules import torch and friends inside their functions only
COMMANDS = {
    "extract": "vggfeat.cli.extract:extract",
    "models": "vggfeat.cli.models:models",
    "train": "vggfeat.cli.train:train",
    "evaluate": "vggfeat.cli.evaluate:evaluate",
    "mean-rgb": "vggfeat.cli.mean_rgb:mean_rgb",
    "linear-probe": "vggfeat.cli.linear_probe:linear_probe",
    "knn-probe": "vggfeat.cli.knn_probe:knn_probe",
    "index": "vggfeat.cli.index:index",
    "demo": "vggfeat.cli.demo:demo",
    "weights": "vggfeat.cli.weights:weights",
    "reproduce": "vggfeat.cli.reproduce:reproduce",
    "store": "vggfeat.cli.store:store",
    "synthetic": "vggfeat.cli.synthetic:synthetic",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        with said_once():  # a mistyped command or option under torchrun
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context):
        # a user-facing error is one red line and exit 1; anything else is a bug and keeps its traceback
        with said_once():
            try:
                return super().invoke(ctx)
            except VggfeatError as e:
                raise click.ClickException(str(e)) from None
            except OSError as e:  # a full disk or a folder we may not write is the user's to fix, not a bug
                fix = _OS_FIXES.get(e.errno) if e.errno is not None else None
                if fix is None:
                    raise
                where = f"{e.filename}: " if e.filename else ""
                raise click.ClickException(f"{where}{e.strerror or e}; {fix}") from None


# how long a rank other than 0 waits, after its error, for torchrun to stop it (which it does once rank 0 has
# exited with that error, printed); a process still running then met an error of its own, and says it. Generous:
# rank 0 may reach the same error seconds later on a loaded machine, and a second copy of the line is the bug
OTHER_RANK_GRACE_S = 30.0


@contextmanager
def said_once() -> Iterator[None]:
    """Under torchrun every process meets the same mistake (an option, a store with other settings): rank 0
    prints the Error line and the others exit with its code without printing it again."""
    try:
        yield
    except click.ClickException as e:
        rank = env_info().rank
        if rank == 0:
            raise
        time.sleep(OTHER_RANK_GRACE_S)
        click.ClickException(f"(rank {rank}) {e.format_message()}").show()
        raise SystemExit(e.exit_code) from None


# errno -> what to do; every command writes its results atomically and resumes, so a rerun loses nothing
_OS_FIXES = {
    errno.ENOSPC: "free some space (or choose an output folder on another disk) and run the same command again",
    errno.EDQUOT: "free some space (or choose an output folder on another disk) and run the same command again",
    errno.EROFS: "choose an output folder on a writable disk",
    errno.EACCES: "check the folder's permissions, or choose another output folder",
    errno.EPERM: "check the folder's permissions, or choose another output folder",
}


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vggfeat")
def cli() -> None:
    """Very deep ConvNets (Simonyan & Zisserman, ICLR 2015): the paper's six nets, trained with its
    recipe, their dense multi-scale descriptors and linear probes on transfer benchmarks.

    \b
    Start with:
      vggfeat demo              the whole pipeline on generated data, a few minutes on a CPU
      vggfeat models            the six nets of Table 1 with their sizes
      vggfeat COMMAND --help    what a command does and its options
    """
    # a file name that is not UTF-8 (kept with surrogate escapes, as os.fsdecode gives it) prints as its own bytes,
    # as ls prints it, instead of stopping the command with a UnicodeEncodeError under a UTF-8 locale
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    # threads sized to the CPUs this process may use (affinity, cgroup quota), waiting passively at barriers:
    # every command that computes runs sized, and does not collapse when the cores are shared
    prepare_process()
