"""Scores only on complete, verified data; a local path is a local path; Ctrl-C keeps what it can.

Issue 7, items 2, 6 and 8 for `bench eval` / `bench stress`: an unfinished build is refused, other
folders are scored but marked unverified and fingerprinted by their files, a --limit run never
says complete, a typo'd --data fails at once without the network, and an interrupted run ends
with one line naming what was kept and the command that resumes it, to the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pytest
from click.testing import CliRunner

from dolos_bench.cli import main
from dolos_bench.data.reader import (
    DatasetReadError, NoSuchFolderError, UnfinishedBuildError, open_split, read_rows, resolve_data,
)
from dolos_bench.eval import runner as runner_module
from dolos_bench.eval.api import Localizer, LocalizerOutput
from dolos_bench.results import IncompleteResultsError, ResultsError, load_results
from dolos_bench.eval.config import ScoringConfig
from dolos_bench.eval.runner import EvalInterrupted, run_eval
from dolos_bench.eval.stress import StressInterrupted, run_stress
from dolos_bench.eval.suite import validate_suite_data
from dolos_bench.builder.recipe import load_recipe

from helpers import build_tiny, make_image_folder, results_numbers, tiny_recipe

UNFINISHED = "unfinished build: run `bench build` again to finish it"
SUITE = {
    "name": "tiny", "seed": 1, "metric": "pixel/auc/pooled/all",
    "perturbations": [{"name": "jpeg", "chain": "jpeg(quality={severity})", "severities": [80, 40]}],
}


class Brightness(Localizer):
    """Map = normalised brightness: deterministic and image-dependent."""

    name = "brightness"

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        maps = [im.astype(np.float32).mean(axis=2) / 255.0 for im in images]
        return LocalizerOutput(maps, [float(m.mean()) for m in maps])


class CtrlC(Brightness):
    """Raises KeyboardInterrupt on its call number ``interrupt_at`` (counted over the class), as Ctrl-C would."""

    name = "ctrl-c"
    interrupt_at: ClassVar[int | None] = None
    calls: ClassVar[int] = 0

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        type(self).calls += 1
        if self.interrupt_at is not None and type(self).calls >= self.interrupt_at:
            raise KeyboardInterrupt
        return super().predict(images, ids)


MODEL = f"{__name__}:Brightness"
CTRL_C = f"{__name__}:CtrlC"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("safety"), images=8, perturbations={"probability": 0.0, "chains": []})


@pytest.fixture
def interrupt_at():
    """Arm CtrlC to interrupt at its n-th predict call; disarmed (and reset) after the test."""

    def arm(n: int | None) -> None:
        CtrlC.interrupt_at, CtrlC.calls = n, 0

    yield arm
    arm(None)


def _bench(monkeypatch: pytest.MonkeyPatch, args: list[str]):
    """Invoke `bench ARGS` with sys.argv as a shell would set it (the resume command comes from it)."""
    monkeypatch.setattr(sys, "argv", ["/usr/bin/bench", *args])
    return CliRunner().invoke(main, args)


# -- item 2: complete, verified data -----------------------------------------------------------


def test_unfinished_build_is_refused_by_eval_and_stress(tmp_path: Path) -> None:
    from dolos_bench.builder.pipeline import BuildInterrupted, run_build

    recipe = load_recipe(str(tiny_recipe(tmp_path / "r.yaml", make_image_folder(tmp_path / "src", n=6))), [])
    out = tmp_path / "half"
    with pytest.raises(BuildInterrupted):
        run_build(recipe, out, stop_after_shards=1)
    assert (out / ".dolos-build").is_dir() and not (out / "manifest.json").exists()
    assert any((out / "data").glob("*.parquet"))  # shards exist: scoring them would score part of a dataset
    with pytest.raises(UnfinishedBuildError, match=rf"^{out}: unfinished build: run `bench build` again"):
        open_split(out, "train")
    for command in (["eval", MODEL, "--out", str(tmp_path / "e.json")],
                    ["stress", MODEL, "--out", str(tmp_path / "s.json")]):
        result = CliRunner().invoke(main, [*command, "--data", str(out), "--split", "train", "--quiet"])
        assert result.exit_code == 2, result.output
        assert f"{out}: {UNFINISHED}" in result.output
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "s.json").exists()


def _hf_folder(root: Path, rows: list[dict[str, Any]]) -> Path:
    """A dataset folder as a user makes it with `datasets`: parquet files, no manifest, no card."""
    import datasets

    from dolos_bench.data.schema import features

    (root / "data").mkdir(parents=True)
    ds = datasets.Dataset.from_list(rows, features=features())
    ds.to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def test_a_foreign_folder_is_scored_unverified_with_a_fingerprint_of_its_files(tmp_path: Path, dataset: Path) -> None:
    rows = read_rows(dataset, "train")
    folder = _hf_folder(tmp_path / "one" / "mine", rows)
    out = tmp_path / "foreign.json"
    result = CliRunner().invoke(main, ["eval", MODEL, "--data", str(folder), "--split", "test", "--bootstrap", "0",
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {folder} is not a dolos-bench build checked against a manifest, so the data is "
                     f"unverified (the results say verified: false; fingerprint {load_results(out).dataset.fingerprint[:16]})"]
    info = load_results(out).dataset
    assert info.verified is False and info.split_samples == info.num_samples == len(rows)
    shard = folder / "data" / "test-00000-of-00001.parquet"
    files_digest = hashlib.sha256(
        f"data/{shard.name}\0{hashlib.sha256(shard.read_bytes()).hexdigest()}\n".encode()).hexdigest()
    ids = [r["id"] for r in rows]
    assert info.fingerprint == hashlib.sha256((files_digest + "test" + "\n".join(ids)).encode()).hexdigest()

    # The same numbers as on the verified build it was made from, which says verified: true.
    built = run_eval(ScoringConfig(model=MODEL, data=str(dataset), split="train", bootstrap=0)).results
    assert built.dataset.verified is True and built.metrics == load_results(out).metrics
    # A folder of the same name with other content gets another fingerprint.
    other = _hf_folder(tmp_path / "two" / "mine", rows[:-1])
    assert run_eval(ScoringConfig(model=MODEL, data=str(other), split="test", bootstrap=0)).results.dataset.fingerprint \
        != info.fingerprint
    # No note for verified data.
    clean = CliRunner().invoke(main, ["eval", MODEL, "--data", str(dataset), "--split", "train", "--bootstrap", "0",
                                      "--quiet"])
    assert clean.exit_code == 0 and "note:" not in clean.output


def test_a_limited_run_is_never_complete(tmp_path: Path, dataset: Path) -> None:
    n = len(open_split(dataset, "train"))
    out = tmp_path / "part.json"
    result = CliRunner().invoke(main, ["eval", MODEL, "--data", str(dataset), "--split", "train", "--limit", "5",
                                       "--bootstrap", "0", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (f"note: scored 5 of the {n} samples of split 'train' (--limit): the results say complete: false, "
            "and the leaderboard does not rank them") in result.output
    with pytest.raises(IncompleteResultsError, match=rf"part\.json: results cover 5 of the {n} samples of split "
                                                     r"'train' \(a --limit run\), so they say complete: false"):
        load_results(out)
    partial = load_results(out, allow_incomplete=True)
    assert partial.complete is False and partial.dataset.num_samples == 5 and partial.dataset.split_samples == n
    assert len(out.with_suffix(".samples.jsonl").read_text().splitlines()) == 5

    from dolos_bench.report.leaderboard import build_leaderboard

    with pytest.raises(ResultsError, match="a --limit run"):
        build_leaderboard([out], tmp_path / "board")

    # A limit that does not cut the split scores all of it: complete.
    whole = run_eval(ScoringConfig(model=MODEL, data=str(dataset), split="train", limit=n + 10, bootstrap=0),
                     out=tmp_path / "all.json")
    assert whole.results.complete and load_results(tmp_path / "all.json").dataset.split_samples == n
    sweep = run_stress(ScoringConfig(model=MODEL, data=str(dataset), split="train", limit=3, bootstrap=0),
                       suite=validate_suite_data(SUITE), out=tmp_path / "s.json", plots=None)
    assert sweep.results.complete is False and sweep.results.dataset.num_samples == 3
    assert run_stress(ScoringConfig(model=MODEL, data=str(dataset), split="train", bootstrap=0),
                      suite=validate_suite_data(SUITE), out=tmp_path / "s2.json", plots=None).results.complete is True


# -- item 6: a local path is a local path ------------------------------------------------------


def test_a_typo_fails_at_once_without_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    (tmp_path / "out" / "quickstart").mkdir(parents=True)
    (tmp_path / "out" / "other").mkdir()
    monkeypatch.chdir(tmp_path)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a local path must not reach the network or datasets")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.setattr(datasets, "load_dataset_builder", no_network)
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, ["eval", "ela", "--data", "out/quickstrat", "--out", "r.json", "--quiet"])
    assert time.perf_counter() - t0 < 1.0
    assert result.exit_code == 2, result.output
    assert ("no such folder: out/quickstrat. Did you mean 'out/quickstart'? For a Hub dataset, write "
            "hf://out/quickstrat.") in result.output
    assert not (tmp_path / "r.json").exists()
    stress = CliRunner().invoke(main, ["stress", "ela", "--data", "out/quickstrat", "--out", "s.json", "--quiet"])
    assert stress.exit_code == 2 and "no such folder: out/quickstrat." in stress.output

    # A Path is always local; the first missing part is matched against the folders beside it.
    with pytest.raises(NoSuchFolderError, match=r"^no such folder: ot/quickstart/data\. Did you mean 'out'\?$"):
        open_split(Path("ot/quickstart/data"), "test")
    (tmp_path / "ot").mkdir()  # now "ot/quickstart" is a local path, not a Hub id
    with pytest.raises(NoSuchFolderError,
                       match=r"^no such folder: ot/quickstart\. For a Hub dataset, write hf://ot/quickstart\.$"):
        open_split("ot/quickstart", "test")
    with pytest.raises(NoSuchFolderError, match=r"^no such folder: mnist\. For a Hub dataset, write hf://mnist\.$"):
        open_split("mnist", "test")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetReadError, match=r"^notes\.txt is a file, not a dataset folder$"):
        open_split("notes.txt", "test")
    with pytest.raises(DatasetReadError, match=r"no Hub dataset id after hf://"):
        open_split("hf://", "test")


def test_hub_ids_are_only_owner_name_strings_or_hf_prefixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    assert resolve_data("hf://out/thing") == ("hub", "out/thing")  # explicit: even with a local "out"
    assert resolve_data("someone/faces") == ("hub", "someone/faces")
    assert resolve_data("out") == ("local", "out")
    for local in ("out/thing", "./someone/faces", "someone/faces/data", "/abs/faces", Path("someone/faces")):
        with pytest.raises(NoSuchFolderError):
            resolve_data(local)
    # A Hub id goes to datasets (offline in the tests) and fails with its own message.
    with pytest.raises(DatasetReadError, match=r"cannot load split 'test' of someone/faces"):
        open_split("someone/faces", "test")


# -- item 8: Ctrl-C in eval and stress ---------------------------------------------------------


def test_ctrl_c_in_eval_keeps_chunks_and_resumes_to_the_same_results(
        tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, interrupt_at) -> None:
    reference = tmp_path / "ref.json"
    run_eval(ScoringConfig(model=CTRL_C, data=str(dataset), split="train", bootstrap=20, chunk_size=4, batch_size=2),
             out=reference)
    out = tmp_path / "r.json"
    args = ["eval", CTRL_C, "--data", str(dataset), "--split", "train", "--bootstrap", "20", "--chunk-size", "4",
            "--batch-size", "2", "--out", str(out), "--quiet"]
    interrupt_at(6)  # 2 batches per chunk: chunks 1 and 2 finish, chunk 3 is cut in its second batch
    result = _bench(monkeypatch, args)
    assert result.exit_code == 130, result.output
    folder = tmp_path / ".r.json.eval"
    n_chunks = -(-len(open_split(dataset, "train")) // 4)
    assert result.output.splitlines() == [
        f"interrupted: 2 of {n_chunks} chunks checkpointed in {folder}/; run the same command again to resume: "
        f"{shlex.join(['bench', *args])}"]
    assert not out.exists() and not out.with_suffix(".samples.jsonl").exists()
    assert sorted(p.name for p in folder.glob("*.json")) == ["0000.json", "0001.json"]
    interrupt_at(None)
    resumed = _bench(monkeypatch, args)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed 2 chunk(s)" in resumed.output
    assert results_numbers(out) == results_numbers(reference)
    assert out.with_suffix(".samples.jsonl").read_bytes() == reference.with_suffix(".samples.jsonl").read_bytes()
    assert not folder.exists()


def test_ctrl_c_without_out_says_nothing_was_kept(dataset: Path, monkeypatch: pytest.MonkeyPatch, interrupt_at) -> None:
    args = ["eval", CTRL_C, "--data", str(dataset), "--split", "train", "--quiet"]
    interrupt_at(1)
    result = _bench(monkeypatch, args)
    assert result.exit_code == 130
    assert result.output.splitlines() == [
        "interrupted: nothing was kept (without --out no chunk is checkpointed); run it again to start over, "
        f"adding --out FILE to make it resumable: {shlex.join(['bench', *args])}"]


class CtrlCWhileLoading(Brightness):
    name = "ctrl-c-loading"

    def __init__(self, device: str = "cpu") -> None:
        raise KeyboardInterrupt


def test_ctrl_c_while_loading_says_nothing_new_was_kept(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(EvalInterrupted, match=r"^interrupted before scoring began: nothing new was kept; run the same "
                                              r"command again: bench eval y$"):
        run_eval(ScoringConfig(model=f"{__name__}:CtrlCWhileLoading", data=str(dataset), split="train"),
                 out=tmp_path / "r.json", command="bench eval y")
    assert not (tmp_path / "r.json").exists()


def test_ctrl_c_while_writing_leaves_nothing_that_looks_finished(
        tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.json"
    config = ScoringConfig(model=MODEL, data=str(dataset), split="train", bootstrap=0)
    run_eval(config, out=out)
    finished = results_numbers(out)

    def ctrl_c(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "save_results", ctrl_c)
    with pytest.raises(EvalInterrupted, match=r"^interrupted: 1 of 1 chunks checkpointed in .*run the same command "
                                              r"again to resume: bench eval x$"):
        run_eval(config, out=out, command="bench eval x")
    # Neither the old results (they would sit beside the new samples) nor the new samples stay.
    assert not out.exists() and not out.with_suffix(".samples.jsonl").exists()
    monkeypatch.undo()
    again = run_eval(config, out=out)
    assert again.results.info["resumed_chunks"] == 1
    assert results_numbers(out) == finished and out.with_suffix(".samples.jsonl").exists()


def test_ctrl_c_in_stress_keeps_points_and_resumes_to_the_same_results(
        tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, interrupt_at) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps(SUITE))
    config = ScoringConfig(model=CTRL_C, data=str(dataset), split="train", bootstrap=10)
    reference = run_stress(config, suite=suite, out=tmp_path / "ref.json", plots=None)
    n_batches = -(-len(open_split(dataset, "train")) // 16)
    out = tmp_path / "s.json"
    args = ["stress", CTRL_C, "--data", str(dataset), "--suite", str(suite), "--split", "train", "--bootstrap", "10",
            "--out", str(out), "--quiet"]
    interrupt_at(n_batches + 1)  # the clean pass finishes, the first grid point is cut
    result = _bench(monkeypatch, args)
    assert result.exit_code == 130, result.output
    folder = tmp_path / ".s.json.stress"
    assert result.output.splitlines() == [
        f"interrupted: 1 of 3 points of the sweep checkpointed in {folder}/; run the same command again to resume: "
        f"{shlex.join(['bench', *args])}"]
    assert not out.exists() and [p.name for p in folder.glob("*.json")] == ["0000.json"]
    with pytest.raises(StressInterrupted, match="1 of 3 points of the sweep"):
        run_stress(config, suite=suite, out=out, plots=None, stop_after_points=0)
    interrupt_at(None)
    resumed = _bench(monkeypatch, args)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed 1 grid point(s)" in resumed.output
    numbers = results_numbers(out)
    expected = results_numbers(reference.results_path)
    for data in (numbers, expected):
        data["info"].pop("plots")  # the reference drew none
    assert numbers == expected and not folder.exists()
