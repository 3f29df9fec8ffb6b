"""Metrics as data: one table names every metric, says its direction, and is what every reader reads.

The engine's names all come from the table and every row of the table is computed; results
(schema 1.1) record each metric's direction and the leaderboard ranks by that record; 1.0 files
load with the table's directions; ``bench eval`` prints exactly the table's summary metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dolos_bench import metric_specs as S
from dolos_bench.cli import eval_summary, main
from dolos_bench.eval.metrics import MetricState
from dolos_bench.eval.protocols import dolos_results, get_protocol
from dolos_bench.report.leaderboard import build_leaderboard, load_entries, metric_higher_is_better, rank_entries
from dolos_bench.results import Metric, Results, ResultsError, load_results, save_results

from helpers import build_tiny

HERE = Path(__file__).parent
GOLDEN_V1_0 = HERE / "golden" / "results_v1.json"
FIXTURES = HERE / "data" / "results"
EVALS = [FIXTURES / "eval_ela.json", FIXTURES / "eval_noise.json", FIXTURES / "eval_patchforensics.json"]
FP_AREA = "pixel/fp-area@0.5/mean-of-images/reals"
IOU = "pixel/iou@0.5/mean-of-images/fakes"

# What `bench eval` printed before the table existed (prefix matching): the table must keep it.
SUMMARY_AT_05 = [
    IOU,
    "pixel/f1@0.5/mean-of-images/fakes",
    "pixel/iou@0.5/pooled/fakes",
    "pixel/auc/pooled/all",
    "image/auc/all",
    "image/ap/all",
]


def _state(threshold: float = 0.5, strict: bool = False, seed: int = 0) -> MetricState:
    """A state over fakes and reals of two generators, two parts, two perturbations and sources."""
    rng = np.random.default_rng(seed)
    state = MetricState(threshold=threshold, bins=1000, strict=strict)
    for i in range(16):
        label = i % 3 != 0
        mask = np.zeros((24, 24), np.uint8)
        if label:
            mask[4 + i % 5: 14 + i % 7, 3: 12 + i % 9] = 255
        score = np.clip(rng.random((24, 24)) * 0.6 + (mask > 0) * rng.random() * 0.5, 0, 1).astype(np.float32)
        state.update(score, mask, int(label), sample_id=f"s{i}", generator=("lama", "ldm")[i % 2] if label else "",
                     parts=(("eyes",), ("eyes", "mouth"))[i % 2] if label else (),
                     perturbation=("none", "jpeg")[i % 2], source=("a", "b")[i % 2])
    return state


# ------------------------------------------------------------------------------ the table


def test_table_is_consistent() -> None:
    rows = S.METRICS + S.PROTOCOL_METRICS
    assert len({r.template for r in rows}) == len(rows)
    assert S.spec(S.PRIMARY).higher_is_better and S.primary_metric(0.5) == IOU
    # Every name belongs to exactly one row, at any threshold.
    for t in (0.5, 0.25, 1.0):
        for row in rows:
            assert [r for r in rows if r.matches(row.name(t))] == [row]
    assert S.spec_for("pixel/iou@0.3/pooled/fakes") is S.spec("pixel/iou@{t}/pooled/fakes")
    assert S.spec_for("pixel/iou/pooled/fakes") is None and S.higher_is_better("custom/score") is None
    assert S.direction(FP_AREA) == "lower" and S.direction(IOU) == "higher"
    assert [r.template for r in rows if not r.higher_is_better] == ["pixel/fp-area@{t}/mean-of-images/reals"]
    with pytest.raises(KeyError, match="no metric spec"):
        S.metric_name("pixel/iou@{t}/mean/fakes", 0.5)
    with pytest.raises(ValueError, match="needs a threshold"):
        S.spec(S.PRIMARY).name()


@pytest.mark.parametrize("threshold, strict", [(0.5, False), (0.3, False), (0.5, True)])
def test_every_computed_name_has_a_spec_and_every_spec_is_computed(threshold: float, strict: bool) -> None:
    state = _state(threshold, strict)
    computed = state.compute(bootstrap=20)
    # Top level: exactly the table's rows, in the table's order.
    assert list(computed["metrics"]) == S.metric_names(threshold)
    for groups in computed["breakdowns"].values():
        for metrics in groups.values():
            assert all(S.spec_for(name) is not None and S.spec_for(name).protocol is None for name in metrics)
    # Each metric has the interval its row names: a bootstrap interval, or none at all.
    for name, m in computed["metrics"].items():
        row = S.spec_for(name)
        assert (m["ci95"] is not None) == (row.interval != "none" and m["value"] is not None), name
    if strict and threshold == 0.5:  # the dolos protocol's own numbers are the table's dolos rows
        assert list(dolos_results(state)) == [r.name(0.5) for r in S.PROTOCOL_METRICS if r.protocol == "dolos"]


# ------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def dolos_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("specs")
    data = build_tiny(root, images=10)
    out = root / "ela.json"
    result = CliRunner().invoke(main, ["eval", "ela", "--data", str(data), "--split", "train", "--protocol", "dolos",
                                       "--bootstrap", "20", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_every_spec_appears_in_a_computed_results_file(dolos_run: tuple[Path, str]) -> None:
    path, _ = dolos_run
    results = load_results(path)
    threshold = results.protocol.threshold
    assert set(results.metrics) == {r.name(threshold) for r in S.METRICS}
    assert set(results.info["dolos"]) == {r.name(threshold) for r in S.PROTOCOL_METRICS if r.protocol == "dolos"}


def test_results_record_every_direction(dolos_run: tuple[Path, str]) -> None:
    path, _ = dolos_run
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == "1.1"
    results = load_results(path)
    names = results.metric_names()
    assert set(raw["metric_directions"]) == set(names)
    assert all(raw["metric_directions"][n] == S.spec_for(n).direction for n in names)
    assert raw["metric_directions"][FP_AREA] == "lower" and results.higher_is_better(FP_AREA) is False


def test_cli_summary_shows_exactly_the_summary_metrics(dolos_run: tuple[Path, str]) -> None:
    path, output = dolos_run
    results = load_results(path)
    shown = [line.split()[0] for line in output.splitlines() if line.startswith(("pixel/", "image/"))]
    assert shown == S.metric_names(0.5, summary=True) == SUMMARY_AT_05
    assert [line.split()[0] for line in eval_summary(results)] == SUMMARY_AT_05
    d = results.info["dolos"]
    line = f"dolos IoU x100: {d['dolos/localization/iou@0.5x100']:.2f}; detection AP x100:"
    assert line in output and f"± {d['dolos/detection/ap']['2std']:.2f}" in output


# ------------------------------------------------------------------- directions in files


def _eval_results(tmp_path: Path, name: str, src: Path, extra: dict[str, Metric],
                  directions: dict[str, str] | None = None) -> Path:
    """A 1.1 copy of a fixture with ``extra`` metrics (directions from the table unless given)."""
    old = load_results(src)
    data = old.model_dump() | {"schema_version": "1.1", "metrics": dict(old.metrics) | extra}
    if directions is not None:
        built = Results.model_validate(data)
        data["metric_directions"] = dict(built.metric_directions or {}) | directions
    return save_results(Results.model_validate(data), tmp_path / name)


def test_recorded_direction_is_used_for_ranking(tmp_path: Path) -> None:
    custom = "custom/false-alarms"  # a plug-in's own metric: only the files know its direction
    files = [
        _eval_results(tmp_path, "a.json", EVALS[0], {custom: Metric(value=0.3, n=5)}, {custom: "lower"}),
        _eval_results(tmp_path, "b.json", EVALS[1], {custom: Metric(value=0.1, n=5)}, {custom: "lower"}),
        _eval_results(tmp_path, "c.json", EVALS[2], {custom: Metric(value=0.2, n=5)}, {custom: "lower"}),
    ]
    assert json.loads(files[0].read_text())["metric_directions"][custom] == "lower"
    entries = load_entries(files)
    assert metric_higher_is_better(custom, entries) is False
    assert [e.label for _, e in rank_entries(entries, custom)] == ["noise", "patchforensics", "ela"]
    payload = build_leaderboard(files, tmp_path / "site", primary_metric=custom)
    assert payload["higher_is_better"] is False
    page = (tmp_path / "site" / "index.html").read_text()
    assert f'title="{custom} (lower is better)"' in page
    # Without the record, a name the table does not know is taken as higher-is-better.
    assert metric_higher_is_better(custom) is True


def test_files_that_disagree_on_a_direction_are_refused(tmp_path: Path) -> None:
    custom = "custom/score"
    files = [
        _eval_results(tmp_path, "up.json", EVALS[0], {custom: Metric(value=0.3, n=5)}, {custom: "higher"}),
        _eval_results(tmp_path, "down.json", EVALS[1], {custom: Metric(value=0.1, n=5)}, {custom: "lower"}),
    ]
    with pytest.raises(ResultsError, match=r"disagree.*custom/score.*higher in up\.json.*lower in down\.json"):
        rank_entries(load_entries(files), custom)


def test_v1_0_files_load_with_directions_from_the_table(tmp_path: Path) -> None:
    golden = load_results(GOLDEN_V1_0)
    assert golden.schema_version == "1.0" and golden.metric_directions is None
    assert golden.recorded_direction(IOU) is None and golden.higher_is_better(IOU) is True
    fixture = load_results(EVALS[0])
    assert fixture.schema_version == "1.0" and fixture.higher_is_better(FP_AREA) is False
    # A 1.0 file with an fp-area column ranks smallest first, as the table says.
    with_fp = [
        save_results(load_results(src).model_copy(update={"metrics": dict(load_results(src).metrics)
                                                          | {FP_AREA: Metric(value=v, n=5)}}), tmp_path / name)
        for src, name, v in ((EVALS[0], "a.json", 0.3), (EVALS[1], "b.json", 0.1))
    ]
    assert json.loads(with_fp[0].read_text())["schema_version"] == "1.0"
    assert [e.label for _, e in rank_entries(load_entries(with_fp), FP_AREA)] == ["noise", "ela"]


def test_mixed_versions_rank_together(tmp_path: Path) -> None:
    new = _eval_results(tmp_path, "new.json", EVALS[2], {})
    ranked = rank_entries(load_entries([EVALS[0], EVALS[1], new]))
    assert [(rank, e.label) for rank, e in ranked] == [(1, "patchforensics"), (2, "ela"), (3, "noise")]


def test_schema_rules_for_directions(tmp_path: Path) -> None:
    raw = json.loads(GOLDEN_V1_0.read_text())
    raw["metric_directions"] = {IOU: "higher"}
    (tmp_path / "old.json").write_text(json.dumps(raw))
    with pytest.raises(ResultsError, match=r"old\.json(.|\n)*metric_directions needs schema_version 1\.1"):
        load_results(tmp_path / "old.json")
    raw["schema_version"] = "1.1"
    del raw["metric_directions"]
    (tmp_path / "bare.json").write_text(json.dumps(raw))
    with pytest.raises(ResultsError, match=r"bare\.json.*must record metric_directions"):
        load_results(tmp_path / "bare.json")
    raw["metric_directions"] = {IOU: "sideways"}
    (tmp_path / "odd.json").write_text(json.dumps(raw))
    with pytest.raises(ResultsError, match=r"odd\.json.*invalid results file"):
        load_results(tmp_path / "odd.json")


def test_writers_get_the_table_directions_and_keep_their_own(tmp_path: Path) -> None:
    base = load_results(EVALS[0]).model_dump() | {"schema_version": "1.1"}
    base["metrics"] = dict(base["metrics"]) | {FP_AREA: {"value": 0.2, "n": 3}, "custom/x": {"value": 1.0, "n": 3}}
    made = Results.model_validate(base)
    assert made.metric_directions is not None
    assert made.metric_directions[FP_AREA] == "lower" and "custom/x" not in made.metric_directions
    assert set(made.metric_directions) == set(made.metric_names()) - {"custom/x"}
    again = load_results(save_results(made, tmp_path / "r.json"))
    assert again == made and again.higher_is_better("custom/x") is None
    # A protocol's threshold names its metrics: the table knows them at any threshold.
    assert S.metric_names(get_protocol("dolos").threshold, summary=True) == SUMMARY_AT_05
