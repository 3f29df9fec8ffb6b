"""The shared file helpers: atomic writes with shareable permissions, hashes, and the output-folder rule."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from dolos_bench.errors import UserError
from dolos_bench.utils import files, outdir


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_get_the_umask_permissions(tmp_path: Path, umask_022) -> None:
    files.atomic_write_bytes(tmp_path / "a.bin", b"x")
    files.atomic_write_text(tmp_path / "sub" / "b.txt", "y")
    files.atomic_write_json(tmp_path / "c.json", {"b": 1, "a": 2})
    with files.atomic_path(tmp_path / "d.parquet", suffix=".parquet", tmp_dir=tmp_path / "tmp") as tmp:
        tmp.write_bytes(b"z")
    for name in ("a.bin", "sub/b.txt", "c.json", "d.parquet"):
        assert mode_of(tmp_path / name) == 0o644, name
    assert mode_of(tmp_path / "sub") == 0o755
    assert (tmp_path / "c.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_stricter_umask_is_respected(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        files.atomic_write_text(tmp_path / "private.txt", "secret")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "private.txt") == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_output(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_hashes_match_hashlib(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "b.bin").write_bytes(b"bb")
    (tmp_path / "w" / "a.bin").write_bytes(b"a" * 3_000_000)
    assert files.sha256_file(tmp_path / "w" / "a.bin") == hashlib.sha256(b"a" * 3_000_000).hexdigest()
    listing = "".join(f"{n}\0{hashlib.sha256(d).hexdigest()}\n" for n, d in (("a.bin", b"a" * 3_000_000), ("b.bin", b"bb")))
    assert files.sha256_tree(tmp_path / "w") == hashlib.sha256(listing.encode()).hexdigest()
    assert files.sha256_path(tmp_path / "w") == files.sha256_tree(tmp_path / "w")


def test_foreign_files_are_listed_and_leftovers_of_our_writes_are_not(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for rel in ("index.html", "data/x.csv", "notes.txt", ".index.html.abc123xy.tmp"):
        (tmp_path / rel).write_text(rel)
    assert outdir.foreign_files(tmp_path, ["index.html", "data/x.csv"]) == ["notes.txt"]
    with pytest.raises(outdir.ForeignFilesError) as err:
        outdir.refuse_foreign(tmp_path, ["index.html"], what="leaderboard")
    message = str(err.value)
    assert "data/x.csv" in message and "notes.txt" in message and "--overwrite" not in message
    assert isinstance(err.value, UserError)


def test_remove_ours_deletes_only_listed_files_and_folders_left_empty(tmp_path: Path) -> None:
    for rel in ("a/b/ours.txt", "a/theirs.txt", "c/ours.txt", ".c.json.q1w2e3r4.tmp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    outdir.remove_ours(tmp_path, ["a/b/ours.txt", "c/ours.txt", "c.json", "../outside.txt", "/etc/passwd"])
    assert outdir.files_under(tmp_path) == ["a/theirs.txt"]
    assert not (tmp_path / "a" / "b").exists() and not (tmp_path / "c").exists()


def test_prepare_output_replaces_only_a_recorded_output(tmp_path: Path) -> None:
    site = tmp_path / "site"
    outdir.prepare_output(site, kind="leaderboard", what="leaderboard", replace=False)  # new folder
    (site / "index.html").write_text("v1")
    outdir.write_record(site, "leaderboard", ["index.html"])
    with pytest.raises(UserError, match="--overwrite"):
        outdir.prepare_output(site, kind="leaderboard", what="leaderboard", replace=False)
    outdir.prepare_output(site, kind="leaderboard", what="leaderboard", replace=True)
    assert outdir.files_under(site) == []
    # a record of another kind does not make the files ours
    (site / "index.html").write_text("v2")
    outdir.write_record(site, "export", ["index.html"])
    with pytest.raises(outdir.ForeignFilesError):
        outdir.prepare_output(site, kind="leaderboard", what="leaderboard", replace=True)
    assert (site / "index.html").read_text() == "v2"


def test_prepare_output_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        outdir.prepare_output(tmp_path / "f", kind="export", what="export", replace=True)
