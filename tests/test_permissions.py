"""Files a user can share: every file and folder the commands write gets what the umask gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from dolos_bench.cli import main

from helpers import build_tiny


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix() + ("/" if p.is_dir() else ""): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")]}


def test_build_eval_stress_export_and_leaderboard_write_0644_files_and_0755_folders(tmp_path: Path, umask_022) -> None:
    data = build_tiny(tmp_path, images=4)
    runner = CliRunner()
    results = tmp_path / "results"
    for args in (
        ["eval", "noise", "--data", str(data), "--split", "train", "--bootstrap", "5", "--out", str(results / "noise.json"), "--quiet"],
        ["stress", "noise", "--data", str(data), "--split", "train", "--bootstrap", "0", "--only", "jpeg",
         "--out", str(results / "noise-stress.json"), "--quiet"],
        ["export", str(data), "--format", "dolos", "--out", str(tmp_path / "exported")],
        ["leaderboard", str(results / "noise.json"), str(results / "noise-stress.json"), "--out", str(tmp_path / "site")],
    ):
        outcome = runner.invoke(main, args)
        assert outcome.exit_code == 0, (args[0], outcome.output)
    for root in (data, results, tmp_path / "exported", tmp_path / "site"):
        found = modes(root)
        assert found, root
        wrong = {name: oct(mode) for name, mode in found.items() if mode != (0o755 if name.endswith("/") else 0o644)}
        assert not wrong, (root, wrong)
