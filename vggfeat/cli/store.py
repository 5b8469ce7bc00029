"""`vggfeat store status|convert`: where a sharded feature store stands, and rewriting a single-file store."""

from __future__ import annotations

import click

from vggfeat.features.convert import convert_store
from vggfeat.features.shard_files import record_file, store_status
from vggfeat.features.store import is_single_file_store, load_store


@click.group("store", context_settings={"max_content_width": 100})
def store() -> None:
    """Inspect feature stores written by `vggfeat extract`.

    \b
    Examples:
      vggfeat store status feats
      vggfeat store convert old-feats feats
    """


@store.command("status")
@click.argument("out", type=click.Path(file_okay=False, exists=True))
@click.option("--verify", is_flag=True, help="Also check every shard file against its recorded sha256 (reads them).")
def status(out, verify) -> None:
    """Shards of OUT done, missing and failed (with the reason), rows, and the command that finishes it.
    Exit status 0 when the store is complete, 1 otherwise. With --verify, a shard whose file does not match its
    checksum loses its done record, so the finishing command redoes it."""
    if is_single_file_store(out):
        fs = load_store(out)
        click.echo(
            f"{out}: a complete store of the single-file format ({len(fs)} rows, read-only); rewrite it "
            f"as shards with `vggfeat store convert {out} NEW`"
        )
        return
    if verify:
        for name, why in store_status(out, verify=True).damaged.items():
            record_file(out, name).unlink(missing_ok=True)  # never read as done again; the rerun redoes it
            click.echo(f"damaged {name}: {why}; its done record is removed, so the finishing command redoes it")
    st = store_status(out, rebuild=True)
    click.echo(f"{out}: {'complete' if st.complete else 'unfinished'}")
    click.echo(st.summary())
    if not st.complete:
        raise SystemExit(1)


@store.command("convert")
@click.argument("old", type=click.Path(file_okay=False, exists=True))
@click.argument("new", type=click.Path(file_okay=False))
@click.option("--shard-size", default=10_000, show_default=True, type=click.IntRange(min=1), help="Rows per shard.")
def convert(old, new, shard_size) -> None:
    """Rewrite OLD, a store of the single-file format (features.npy + manifest.json), as the sharded store NEW
    (the rows, paths and identities as they are; nothing is recomputed)."""
    fs = convert_store(old, new, shard_size)
    click.echo(f"{len(fs)} rows of {old} -> {new} ({len(fs.shard_names)} shards)")
