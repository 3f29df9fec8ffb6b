"""Issue 7, items 10 and 1: figures fitted to their data, a table that explains itself and sorts
best first, datasets told apart by fingerprint, and a leaderboard folder that never eats a user's files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dolos_bench.cli import main
from dolos_bench.errors import UserError
from dolos_bench.results import Metric, Results, StressSummary, load_results, save_results
from dolos_bench.report import plots
from dolos_bench.report.leaderboard import (
    AUC_NOTE,
    DROP_NOTE,
    PRIMARY_METRIC,
    build_leaderboard,
    load_entries,
    markdown_table,
    rank_entries,
)
from dolos_bench.utils.outdir import RECORD, ForeignFilesError, files_under, read_record

DATA = Path(__file__).parent / "data" / "results"
EVALS = [DATA / "eval_ela.json", DATA / "eval_noise.json", DATA / "eval_patchforensics.json"]
STRESS = DATA / "stress_ela.json"
FP_AREA = "pixel/fp-area@0.5/mean-of-images/reals"  # the metric table's lower-is-better metric
CHROMIUM = Path("/usr/bin/chromium")


def _point(perturbation: str, severity: float | str, value: float, ci: float | None = None) -> dict:
    ci95 = None if ci is None else [value - ci, value + ci]
    return {"perturbation": perturbation, "severity": severity,
            "metrics": {PRIMARY_METRIC: {"value": value, "ci95": ci95, "n": 10}}}


def _variant(tmp_path: Path, src: Path, name: str, **changes: object) -> Path:
    r = load_results(src).model_copy(update=changes)
    return save_results(Results.model_validate(r.model_dump()), tmp_path / name)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in files_under(root)}


# ---------------------------------------------------------------------------- curve axes


def test_curve_with_small_values_gets_an_axis_that_fits_them() -> None:
    grid = [_point("jpeg", q, v) for q, v in ((95, 0.03), (80, 0.02), (60, 0.015), (40, 0.01))]
    fig = plots.robustness_figure({"m": grid}, metric=PRIMARY_METRIC)
    lo, hi = fig.axes[0].get_ylim()
    assert 0.0 <= lo <= 0.01 and 0.03 <= hi <= 0.04, (lo, hi)  # not a flat line at the bottom of [0, 1]
    assert (hi - lo) < 0.05
    assert fig.axes[0].get_xaxis().get_inverted()  # listed mild to harsh (95 -> 40): harsher stays right


def test_curve_full_range_and_pinned_limits() -> None:
    grid = [_point("jpeg", q, v) for q, v in ((95, 0.03), (40, 0.01))]
    assert plots.robustness_figure({"m": grid}, metric=PRIMARY_METRIC, full_range=True).axes[0].get_ylim() == (0.0, 1.0)
    pinned = plots.robustness_figure({"m": grid}, metric=PRIMARY_METRIC, ylim=(0.0, 0.5))
    assert pinned.axes[0].get_ylim() == (0.0, 0.5)


def test_curve_axis_includes_ci_band_and_clean_reference() -> None:
    grid = [_point("blur", s, 0.2, ci=0.05) for s in (1, 2)]
    fig = plots.robustness_figure({"m": grid}, metric=PRIMARY_METRIC, references={"m": 0.6})
    lo, hi = fig.axes[0].get_ylim()
    assert lo <= 0.15 and hi >= 0.6  # the band and the dashed clean line are both on the axis


def test_integer_severities_get_integer_ticks() -> None:
    few = [_point("jpeg", q, 0.1 + q / 1000) for q in (30, 50, 70, 90)]
    ax = plots.robustness_figure({"m": few}, metric=PRIMARY_METRIC).axes[0]
    assert list(ax.get_xticks()) == [30, 50, 70, 90]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["30", "50", "70", "90"]
    many = [_point("noise", s, 0.5 - s / 100) for s in range(1, 16)]
    ax = plots.robustness_figure({"m": many}, metric=PRIMARY_METRIC).axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), ticks


def test_fit_limits_edge_cases() -> None:
    assert plots.fit_limits([]) == (0.0, 1.0)
    assert plots.fit_limits([float("nan"), None]) == (0.0, 1.0)
    lo, hi = plots.fit_limits([0.5])
    assert lo < 0.5 < hi  # one value: a window around it, not a zero-height axis
    assert plots.fit_limits([0.0, 1.0]) == (0.0, 1.0)  # padding never leaves [0, 1] for data inside it
    lo, hi = plots.fit_limits([-0.2, 0.4])  # data outside the metric range is shown, not clipped
    assert lo < -0.2 and hi > 0.4


# ------------------------------------------------------------------------------- heatmap


def test_heatmap_colour_limits_fit_the_data_or_the_full_range() -> None:
    values = {"a": {"g1": 0.02, "g2": 0.05}, "b": {"g1": 0.03, "g2": None}}
    fitted = plots.heatmap_figure(values, metric="m")
    assert fitted.axes[0].images[0].get_clim() == (0.02, 0.05)
    full = plots.heatmap_figure(values, metric="m", full_range=True)
    assert full.axes[0].images[0].get_clim() == (0.0, 1.0)
    one = plots.heatmap_figure({"a": {"g": 1.0}}, metric="m").axes[0].images[0].get_clim()
    assert one[0] < 1.0 and one[1] == 1.0


def test_leaderboard_full_range_reaches_the_figures(tmp_path: Path) -> None:
    fitted = build_leaderboard([*EVALS, STRESS], tmp_path / "fit")
    full = build_leaderboard([*EVALS, STRESS], tmp_path / "full", full_range=True)
    assert fitted["full_range"] is False and full["full_range"] is True
    name = "plots/robustness-pixel-iou-0-5-mean-of-images-fakes.svg"
    assert (tmp_path / "fit" / name).read_bytes() != (tmp_path / "full" / name).read_bytes()
    assert "fitted to the values shown" in (tmp_path / "fit" / "index.html").read_text()
    assert "full range [0, 1]" in (tmp_path / "full" / "index.html").read_text()


def test_cli_full_range_flag_has_help() -> None:
    result = CliRunner().invoke(main, ["leaderboard", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--full-range" in text and "[0, 1]" in text
    assert "earlier leaderboard" in text  # --out says what it may replace


# ------------------------------------------------------------------------ table semantics


def test_sort_direction_is_best_first_per_column(tmp_path: Path) -> None:
    build_leaderboard(EVALS, tmp_path / "site", metrics=[PRIMARY_METRIC, "image/auc/all", FP_AREA])
    page = (tmp_path / "site" / "index.html").read_text()
    first = {metric: direction for direction, metric in
             re.findall(r'data-first-sort="(\w+)"[^>]*data-metric="([^"]+)"', page)}
    assert first == {PRIMARY_METRIC: "descending", "image/auc/all": "descending", FP_AREA: "ascending"}
    assert re.search(r'data-first-sort="ascending"[^>]*>Rank<', page)
    assert f'title="{FP_AREA} (lower is better)"' in page


def test_lower_is_better_primary_metric_ranks_smallest_first(tmp_path: Path) -> None:
    def with_fp(src: Path, name: str, value: float) -> Path:
        metrics = dict(load_results(src).metrics) | {FP_AREA: Metric(value=value, ci95=None, n=10)}
        return _variant(tmp_path, src, name, metrics=metrics)

    files = [with_fp(EVALS[0], "a.json", 0.3), with_fp(EVALS[1], "b.json", 0.1)]
    assert [e.label for _, e in rank_entries(load_entries(files), FP_AREA)] == ["noise", "ela"]
    payload = build_leaderboard(files, tmp_path / "site", primary_metric=FP_AREA)
    assert payload["higher_is_better"] is False and [r["label"] for r in payload["rows"]] == ["noise", "ela"]
    assert "(lower is better)" in (tmp_path / "site" / "leaderboard.md").read_text()


def test_area_under_curve_and_negative_drop_are_explained(tmp_path: Path) -> None:
    stress = load_results(STRESS)
    summary = dict(stress.stress.summary)  # type: ignore[union-attr]
    summary["jpeg"] = StressSummary(relative_drop=-0.05, area_under_curve=0.3)
    better = _variant(tmp_path, STRESS, "better.json", stress=stress.stress.model_copy(update={"summary": summary}))  # type: ignore[union-attr]
    build_leaderboard([*EVALS, better], tmp_path / "site")
    page = (tmp_path / "site" / "index.html").read_text()
    assert "the curve&#39;s mean height over the tested severity range" in page
    assert 'id="auc-note"' in page and "A negative drop means the model scored higher" in page
    assert 'class="num improved" title="negative: scored higher under jpeg than on the clean data">-0.050<' in page
    md = (tmp_path / "site" / "leaderboard.md").read_text()
    assert DROP_NOTE in md and AUC_NOTE in md


# ---------------------------------------------------------------- datasets sharing a name


def test_datasets_sharing_a_folder_name_are_told_apart(tmp_path: Path) -> None:
    base = load_results(EVALS[0])
    other_fp = "f3a9c1" + "0" * 58
    elsewhere = _variant(tmp_path, EVALS[0], "other.json", dataset=base.dataset.model_copy(
        update={"path": "backup/dolos-celebahq-inpaint", "fingerprint": other_fp}))
    entries = load_entries([EVALS[0], elsewhere])
    shown = [e.dataset for e in entries]
    assert shown == [f"dolos-celebahq-inpaint/test ({base.dataset.fingerprint[:7]})", "dolos-celebahq-inpaint/test (f3a9c10)"]
    assert len({e.label for e in entries}) == 2 and all("#" not in e.label for e in entries)
    assert entries[1].label == "ela (dolos-celebahq-inpaint/test f3a9c10)"
    md = markdown_table(rank_entries(entries), [PRIMARY_METRIC])
    assert "(f3a9c10)" in md and f"({base.dataset.fingerprint[:7]})" in md
    payload = build_leaderboard([EVALS[0], elsewhere], tmp_path / "site")
    assert {r["dataset_label"] for r in payload["rows"]} == set(shown)
    assert "dolos-celebahq-inpaint/test (f3a9c10)</td>" in (tmp_path / "site" / "index.html").read_text()


def test_same_dataset_under_two_paths_keeps_the_plain_name(tmp_path: Path) -> None:
    base = load_results(EVALS[0])
    moved = _variant(tmp_path, EVALS[1], "moved.json",
                     dataset=base.dataset.model_copy(update={"path": "/mnt/copy/dolos-celebahq-inpaint"}))
    assert [e.dataset for e in load_entries([EVALS[0], moved])] == ["dolos-celebahq-inpaint/test"] * 2


# --------------------------------------------------------------------------- the folder


def test_leaderboard_out_refuses_foreign_files_untouched(tmp_path: Path) -> None:
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("<p>my own page</p>")
    (out / "notes.txt").write_text("do not lose me")
    before = _snapshot(out)
    result = CliRunner().invoke(main, ["leaderboard", *map(str, EVALS), "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "index.html" in text and "notes.txt" in text and "did not write" in text
    assert "--overwrite" not in text
    assert _snapshot(out) == before  # byte for byte, and nothing added


def test_foreign_file_beside_an_earlier_leaderboard_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "site"
    build_leaderboard(EVALS, out)
    (out / "plots" / "mine.png").write_bytes(b"user figure")
    before = _snapshot(out)
    with pytest.raises(ForeignFilesError, match=r"plots/mine\.png") as info:
        build_leaderboard([*EVALS, STRESS], out)
    assert info.value.foreign == ["plots/mine.png"]
    assert _snapshot(out) == before


def test_regenerating_into_its_own_folder_replaces_only_its_files(tmp_path: Path) -> None:
    out = tmp_path / "site"
    build_leaderboard([*EVALS, STRESS], out)
    first = set(files_under(out))
    assert set(read_record(out, "leaderboard") or []) == first - {RECORD}
    curve = "plots/robustness-pixel-iou-0-5-mean-of-images-fakes.svg"
    assert curve in first
    result = CliRunner().invoke(main, ["leaderboard", *map(str, EVALS), "--out", str(out), "--title", "again"])
    assert result.exit_code == 0, result.output
    now = set(files_under(out))
    assert curve not in now and now < first  # the stale curve of the earlier site is gone
    assert json.loads((out / "leaderboard.json").read_text())["title"] == "again"
    assert set(read_record(out, "leaderboard") or []) == now - {RECORD}


def test_interrupted_regeneration_leaves_a_folder_the_next_run_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dolos_bench.report import leaderboard as lb

    out = tmp_path / "site"
    build_leaderboard(EVALS, out)
    calls = {"n": 0}
    real = lb.atomic_write_bytes

    def dies_midway(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(lb, "atomic_write_bytes", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build_leaderboard([*EVALS, STRESS], out)
    monkeypatch.undo()
    payload = build_leaderboard([*EVALS, STRESS], out)  # every file there is recorded as ours
    assert set(files_under(out)) == {RECORD, *(Path(f).relative_to(out).as_posix() for f in payload["files"].values())}


def test_leaderboard_files_are_shareable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        build_leaderboard(EVALS, tmp_path / "site")
    finally:
        os.umask(old)
    for rel in ("index.html", "leaderboard.csv", "plots/heatmap-pixel-iou-0-5-mean-of-images-fakes.png"):
        assert (tmp_path / "site" / rel).stat().st_mode & 0o777 == 0o644, rel
    assert not [f for f in files_under(tmp_path / "site") if f.endswith(".tmp")]


def test_leaderboard_out_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "site"
    target.write_text("x")
    result = CliRunner().invoke(main, ["leaderboard", str(EVALS[0]), "--out", str(target)])
    assert result.exit_code == 2 and "is a file" in result.output  # click's own check of --out
    with pytest.raises(UserError, match="is a file, not a folder: choose a folder for the leaderboard"):
        build_leaderboard([EVALS[0]], target)
    assert target.read_text() == "x"


def test_plot_writers_keep_stress_call_working(tmp_path: Path) -> None:
    grid = json.loads(STRESS.read_text())["stress"]["grid"]
    files = plots.robustness_curves({"ela": grid}, tmp_path / "c", metric=PRIMARY_METRIC,
                                    references={"ela": 0.3}, axis_labels={"jpeg": "quality"}, title="t")
    assert sorted(files) == ["png", "svg"] and all(p.stat().st_size > 1000 for p in files.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "c.svg"]  # no temporary file left


# ------------------------------------------------------------------------------- browser


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found (apt-get install chromium)")
def test_first_click_sorts_best_first_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    out = tmp_path / "site"
    build_leaderboard(EVALS, out, metrics=[PRIMARY_METRIC, "image/auc/all"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto((out / "index.html").resolve().as_uri(), wait_until="load")

            def labels() -> list[str]:
                return page.eval_on_selector_all("#leaderboard tbody tr", "rs => rs.map(r => r.dataset.label)")

            samples = page.locator("#leaderboard th", has_text="Samples")
            samples.click()
            assert samples.get_attribute("aria-sort") == "descending"
            primary = page.locator(f'#leaderboard th[data-metric="{PRIMARY_METRIC}"]')
            primary.click()
            assert primary.get_attribute("aria-sort") == "descending"
            assert labels() == ["patchforensics", "ela", "noise"]
            primary.click()
            assert primary.get_attribute("aria-sort") == "ascending"
            assert labels() == ["noise", "ela", "patchforensics"]
        finally:
            browser.close()
