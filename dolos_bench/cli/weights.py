"""``bench weights ls`` and ``bench weights fetch NAME``: the weights catalogue from the command line."""

from __future__ import annotations

import click

from ..weights import cache_dir, catalogue, fetch, fetch_hub, find_entry, require_entry
from ..weights.cache import check_file, entry_folder, find_file, missing_files
from ..weights.catalogue import Entry
from ..weights.resolve import hub_snapshot
from .commands import console, main


def _status(entry: Entry) -> tuple[str, str]:
    """(status, where) of one entry, as ``ls`` prints them."""
    if entry.kind == "hub":
        snapshot = hub_snapshot(entry.source, entry.revision)
        if snapshot is None:
            return "missing", "-"
        return f"present (Hub cache, commit {snapshot.name[:12]}, files checked by huggingface_hub)", str(snapshot)
    if entry.kind == "folder":
        missing = missing_files(entry)
        if len(missing) == len(entry.files):
            return "missing", "-"
        if missing:
            return f"incomplete (lacks {', '.join(missing)})", str(entry_folder(entry))
        return "present, unverified (no published checksums)", str(entry_folder(entry))
    found = find_file(entry)
    if found is None:
        return "missing", "-"
    check = check_file(entry, found)
    words = {"verified": f"verified ({check.expected})",
             "mismatch": f"WRONG FILE (expected {check.expected})",
             "unverifiable": "present, unverified (no published checksum; sha256 unknown)"}
    return words[check.status], str(found)


@main.group("weights", short_help="List and fetch model weights (catalogue, cache, checksums).")
def weights_group() -> None:
    """Model weights the built-in stages use: where they come from and whether they are here."""


@weights_group.command("ls", short_help="Which weights are present, where, verified or not.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Hash files present (remembered by size and mtime; --no-check lists the catalogue only).")
def ls_command(check: bool) -> None:
    click.echo(f"cache: {cache_dir()}")
    for entry in catalogue().values():
        status, where = _status(entry) if check else ("-", "-")
        checksum = entry.checksum or "sha256 unknown (none published)"
        if entry.kind == "hub":
            checksum = "per-file sha256 from the Hub"
        click.echo(f"{entry.name}  [{entry.kind}] {status}")
        click.echo(f"    source: {entry.source}")
        what = entry.filename or (f"folder of {', '.join(entry.files)}" if entry.kind == "folder" else "(repository)")
        click.echo(f"    file: {what}  checksum: {checksum}")
        click.echo(f"    licence: {entry.licence}  used by: {', '.join(entry.used_by) or '-'}")
        if where != "-":
            click.echo(f"    at: {where}")
        if entry.manual:
            into = "FOLDER" if entry.kind == "folder" else "FILE"
            click.echo(f"    manual download: {entry.page or entry.source}, then `bench weights fetch {entry.name} --from {into}`")
        if entry.convert_hint:
            click.echo(f"    {entry.convert_hint}")


@weights_group.command("fetch", short_help="Download NAME (a catalogue entry or a Hub id) with checksum checks.")
@click.argument("name")
@click.option("--from", "from_file", type=click.Path(), default=None,
              help="A file downloaded by hand (a folder, for folder entries): checked, then copied into the cache.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fetch_command(name: str, from_file: str | None, quiet: bool) -> None:
    if "/" in name and find_entry(name) is None:  # any Hub repository, not only the catalogue's
        click.echo(f"{name}: {fetch_hub(name, progress=not quiet)}")
        return
    entry = require_entry(name)
    got = fetch(entry, from_file=from_file, progress=not quiet)
    if got.check is None:
        click.echo(f"{entry.name}: {got.path}")
    elif got.check.status == "verified":
        click.echo(f"{entry.name}: {got.path} (verified, {got.check.expected})")
    else:
        console.print(f"{entry.name}: {got.path} (no published checksum; its sha256 is {got.check.sha256})",
                      highlight=False, markup=False)
