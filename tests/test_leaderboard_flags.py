"""The leaderboard marks results on data that no dolos-bench manifest vouched for (verified: false)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from dolos_bench.report.leaderboard import UNVERIFIED_MARK, UNVERIFIED_NOTE, build_leaderboard
from dolos_bench.results import Results, load_results, save_results

DATA = Path(__file__).parent / "data" / "results"


def with_verified(tmp_path: Path, src: str, name: str, verified: bool | None) -> Path:
    r = load_results(DATA / src)
    dataset = r.dataset.model_copy(update={"verified": verified})
    return save_results(Results.model_validate(r.model_copy(update={"dataset": dataset}).model_dump()), tmp_path / name)


def test_unverified_rows_are_marked_in_every_format(tmp_path: Path) -> None:
    files = [with_verified(tmp_path, "eval_ela.json", "ela.json", False),
             with_verified(tmp_path, "eval_noise.json", "noise.json", True),
             with_verified(tmp_path, "eval_patchforensics.json", "pf.json", None)]
    out = tmp_path / "site"
    build_leaderboard(files, out, title="flags")
    md = (out / "leaderboard.md").read_text()
    rows = {line.split(" | ")[1]: line for line in md.splitlines() if line.startswith("| ") and " | " in line}
    assert f"/test {UNVERIFIED_MARK} |" in rows["ela"]
    assert UNVERIFIED_MARK not in rows["noise"] and UNVERIFIED_MARK not in rows["patchforensics"]  # None: not recorded
    assert UNVERIFIED_NOTE in md
    table = {r["label"]: r for r in csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text()))}
    assert (table["ela"]["dataset_verified"], table["noise"]["dataset_verified"], table["patchforensics"]["dataset_verified"]) \
        == ("false", "true", "")
    page = (out / "index.html").read_text()
    assert page.count('class="unverified"') == 1 and "unverified-note" in page
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(str(r["dataset_verified"]) for r in board["rows"]) == ["False", "None", "True"]


def test_no_note_when_every_dataset_is_verified(tmp_path: Path) -> None:
    files = [with_verified(tmp_path, "eval_ela.json", "ela.json", True)]
    build_leaderboard(files, tmp_path / "site", title="flags")
    assert UNVERIFIED_NOTE not in (tmp_path / "site" / "leaderboard.md").read_text()
    assert "unverified-note" not in (tmp_path / "site" / "index.html").read_text()


def test_runs_of_one_model_are_told_apart_by_their_run_folder(tmp_path: Path) -> None:
    """A cross-generator study scores one model id per train set: the labels name the run folders."""
    from dolos_bench.report.leaderboard import load_entries

    files = []
    for run in ("repaint", "lama"):
        r = load_results(DATA / "eval_patchforensics.json")
        model = r.model.model_copy(update={"path": None, "options": {**r.model.options, "weights": f"study/runs/{run}/"}})
        files.append(save_results(Results.model_validate(r.model_copy(update={"model": model}).model_dump()),
                                  tmp_path / f"{run}.json"))
    assert [e.label for e in load_entries(files)] == ["patchforensics (repaint)", "patchforensics (lama)"]
    assert [e.label for e in load_entries(files[:1])] == ["patchforensics"]  # alone: the plain id
