"""Folder entries of the weights catalogue (Pluralistic's two-file checkpoints): fetched by hand, together."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dolos_bench.cli import main
from dolos_bench.weights import WeightsError, fetch, require_entry, resolve_weights
from dolos_bench.weights.cache import CACHE_ENV, entry_folder
from dolos_bench.weights.catalogue import Entry
from dolos_bench.weights.fetch import FetchError

NAME = "pluralistic-celebahq-random"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def downloaded(tmp_path: Path, names: tuple[str, ...] = ("latest_net_E.pth", "latest_net_G.pth")) -> Path:
    folder = tmp_path / "Downloads" / "celeba_random"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(name.encode())
    return folder


def test_the_catalogue_names_both_pluralistic_models() -> None:
    for name in (NAME, "pluralistic-celebahq-center"):
        entry = require_entry(name)
        assert entry.kind == "folder" and entry.files == ("latest_net_E.pth", "latest_net_G.pth") and entry.manual
        assert "generator:pluralistic" in entry.used_by and "CC BY-NC" in entry.licence
    with pytest.raises(ValueError, match="lists its files"):
        Entry("x", "folder", "https://example.org", licence="-", used_by=(), manual=True)


def test_missing_until_fetched_from_a_folder_then_it_resolves(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(WeightsError, match=f"lacks latest_net_E.pth, latest_net_G.pth.*--from FOLDER"):
        resolve_weights(NAME, stage="generators[0] pluralistic", expect="folder")
    with pytest.raises(FetchError, match="by hand"):
        fetch(require_entry(NAME))
    source = downloaded(tmp_path)
    got = fetch(require_entry(NAME), from_file=source)
    assert got.path == entry_folder(require_entry(NAME)) and got.check is None
    assert sorted(p.name for p in got.path.iterdir()) == ["latest_net_E.pth", "latest_net_G.pth"]
    assert (source / "latest_net_E.pth").is_file()  # the user's copy is left alone
    resolved = resolve_weights(NAME, stage="generators[0] pluralistic", expect="folder")
    assert resolved.path == got.path and resolved.origin == "cache"
    with pytest.raises(WeightsError, match="takes a file"):
        resolve_weights(NAME, stage="x", expect="file")


def test_an_incomplete_folder_copies_nothing(tmp_path: Path, cache: Path) -> None:
    source = downloaded(tmp_path, names=("latest_net_G.pth",))
    with pytest.raises(FetchError, match="lacks latest_net_E.pth; nothing was copied"):
        fetch(require_entry(NAME), from_file=source)
    assert not entry_folder(require_entry(NAME)).exists()
    with pytest.raises(FetchError, match="not a folder"):
        fetch(require_entry(NAME), from_file=source / "latest_net_G.pth")


def test_refetching_replaces_the_folder_whole(tmp_path: Path, cache: Path) -> None:
    first = downloaded(tmp_path)
    fetch(require_entry(NAME), from_file=first)
    second = tmp_path / "again"
    second.mkdir()
    for name in ("latest_net_E.pth", "latest_net_G.pth"):
        (second / name).write_bytes(b"new " + name.encode())
    fetch(require_entry(NAME), from_file=second)
    folder = entry_folder(require_entry(NAME))
    assert (folder / "latest_net_E.pth").read_bytes() == b"new latest_net_E.pth"
    assert not list(cache.glob(".partial-*"))  # no staging left behind


def test_ls_and_fetch_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    listing = runner.invoke(main, ["weights", "ls"])
    assert listing.exit_code == 0
    block = listing.output.split(f"{NAME}  [folder]")[1].split("\n\n")[0]
    assert block.startswith(" missing") and "folder of latest_net_E.pth, latest_net_G.pth" in block
    assert f"bench weights fetch {NAME} --from FOLDER" in block
    result = runner.invoke(main, ["weights", "fetch", NAME, "--from", str(downloaded(tmp_path))])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(main, ["weights", "ls"])
    assert listing.output.split(f"{NAME}  [folder]")[1].startswith(" present, unverified")
