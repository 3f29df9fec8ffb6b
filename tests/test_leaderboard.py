"""The leaderboard: table ordering and formatting, the written files, plots, and the page in a real browser."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest

from dolos_bench.results import (
    IncompleteResultsError,
    Metric,
    Results,
    ResultsError,
    SchemaVersionError,
    load_results,
    save_results,
)
from dolos_bench.report import plots
from dolos_bench.report.leaderboard import (
    MISSING,
    PRIMARY_METRIC,
    build_leaderboard,
    format_metric,
    load_entries,
    markdown_table,
    rank_entries,
)

DATA = Path(__file__).parent / "data" / "results"
EVALS = [DATA / "eval_ela.json", DATA / "eval_noise.json", DATA / "eval_patchforensics.json"]
STRESS = DATA / "stress_ela.json"
IMG_AUC = "image/auc/all"
CHROMIUM = Path("/usr/bin/chromium")


def _variant(tmp_path: Path, src: Path, name: str, **changes: object) -> Path:
    """Copy a fixture with top-level fields replaced (through the model, so it stays valid)."""
    r = load_results(src).model_copy(update=changes)
    return save_results(Results.model_validate(r.model_dump()), tmp_path / name)


def _with_metric(src: Path, metric: str, value: float | None) -> dict[str, Metric]:
    metrics = dict(load_results(src).metrics)
    if value is None:
        metrics.pop(metric, None)
    else:
        metrics[metric] = Metric(value=value, ci95=None, n=10)
    return metrics


# ------------------------------------------------------------------------------ fixtures


def test_fixtures_are_current() -> None:
    """The checked-in JSON is exactly what make_fixtures.py builds through the models."""
    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, results in module.fixtures().items():
        assert json.loads((DATA / name).read_text()) == json.loads(results.to_json()), name


# -------------------------------------------------------------------------------- tables


def test_format_metric() -> None:
    assert format_metric(Metric(value=0.6123, ci95=(0.59, 0.632), n=5)) == "0.612 ± 0.021"
    assert format_metric(Metric(value=0.6123, ci95=(0.59, 0.632), n=5), digits=2) == "0.61 ± 0.02"
    assert format_metric(Metric(value=0.5, ci95=None, n=5)) == "0.500"
    assert format_metric(Metric(value=None, ci95=None, n=0)) == MISSING == "—"
    assert format_metric(None) == "—"


def test_ordering_by_primary_metric() -> None:
    ranked = rank_entries(load_entries(EVALS + [STRESS]))
    # The stress fixture carries no top-level metrics, so it makes no row.
    assert [(rank, e.label) for rank, e in ranked] == [(1, "patchforensics"), (2, "ela"), (3, "noise")]
    # Another primary metric that one model lacks: that row goes last, unranked.
    ranked = rank_entries(load_entries(EVALS), IMG_AUC)
    assert [(rank, e.label) for rank, e in ranked] == [(1, "patchforensics"), (2, "ela"), (None, "noise")]
    ranked = rank_entries(load_entries(EVALS), IMG_AUC, higher_is_better=False)
    assert [(rank, e.label) for rank, e in ranked] == [(1, "ela"), (2, "patchforensics"), (None, "noise")]


def test_ties_share_rank_and_groups_rank_separately(tmp_path: Path) -> None:
    tie = _variant(tmp_path, EVALS[1], "tie.json", metrics=_with_metric(EVALS[0], PRIMARY_METRIC, None)
                   | {PRIMARY_METRIC: load_results(EVALS[0]).metrics[PRIMARY_METRIC]})
    other = load_results(EVALS[2])
    other_ds = _variant(tmp_path, EVALS[2], "other.json",
                        dataset=other.dataset.model_copy(update={"split": "validation"}))
    entries = load_entries([*EVALS, tie, other_ds])
    got = [(rank, e.label, e.results.dataset.split) for rank, e in rank_entries(entries)]
    test_pf, val_pf = "patchforensics (dolos-celebahq-inpaint/test)", "patchforensics (dolos-celebahq-inpaint/validation)"
    assert got == [
        (1, test_pf, "test"),
        (2, "ela", "test"),
        (2, "noise #2", "test"),  # same value as ela: same rank; ties ordered by label
        (4, "noise #1", "test"),
        (1, val_pf, "validation"),  # another split: ranked on its own
    ]


def test_labels_disambiguate_only_what_differs(tmp_path: Path) -> None:
    r = load_results(EVALS[0])
    dolos = _variant(tmp_path, EVALS[0], "dolos.json", protocol=r.protocol.model_copy(update={"name": "dolos"}))
    labels = [e.label for e in load_entries([EVALS[0], dolos, STRESS])]
    assert labels == ["ela (default)", "ela (dolos)", "ela"]


def test_markdown_table_missing_and_ci() -> None:
    ranked = rank_entries(load_entries(EVALS))
    md = markdown_table(ranked, [PRIMARY_METRIC, IMG_AUC])
    lines = md.strip().splitlines()
    assert lines[0] == f"| Rank | Model | Dataset / split | Protocol | {PRIMARY_METRIC} | {IMG_AUC} |"
    assert lines[1] == "|---:|:---|:---|:---|---:|---:|"
    assert lines[2].startswith("| 1 | patchforensics | dolos-celebahq-inpaint/test | default | 0.528 ± 0.014 |")
    assert lines[4].split(" | ")[1:] == ["noise", "dolos-celebahq-inpaint/test", "default", "0.187 ± 0.014", "— |"]


def test_markdown_escapes_pipes(tmp_path: Path) -> None:
    r = load_results(EVALS[0])
    odd = _variant(tmp_path, EVALS[0], "odd.json", model=r.model.model_copy(update={"id": "a|b"}))
    md = markdown_table(rank_entries(load_entries([odd])), [PRIMARY_METRIC])
    assert "| a\\|b |" in md


def test_stress_result_with_metrics_makes_a_row(tmp_path: Path) -> None:
    stress = load_results(STRESS)
    eval_ela = next(e for e in EVALS if load_results(e).model.id == "ela")
    same_data = stress.dataset.model_copy(update={"fingerprint": load_results(eval_ela).dataset.fingerprint})
    metrics = _with_metric(EVALS[0], PRIMARY_METRIC, 0.4)
    # Clean scores of a run that an eval file already reports: not shown twice.
    dup = _variant(tmp_path, STRESS, "stress_dup.json", metrics=metrics, dataset=same_data)
    labels = [(e.label, e.results.kind) for _, e in rank_entries(load_entries([*EVALS, dup]))]
    assert ("ela", "stress") not in labels and ("ela", "eval") in labels
    # Without an eval file for it, the stress file's clean scores make the row.
    alone = _variant(tmp_path, STRESS, "stress_clean.json", metrics=metrics)
    ranked = rank_entries(load_entries([*[e for e in EVALS if e != eval_ela], alone]))
    assert [(e.label, e.results.kind) for _, e in ranked][:2] == [("patchforensics", "eval"), ("ela", "stress")]


# ----------------------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("site")
    return out, build_leaderboard([*EVALS, STRESS], out, title="Test <board>")


def test_site_files(site: tuple[Path, dict]) -> None:
    out, payload = site
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "index.html"):
        assert (out / name).is_file()
    for fig in ("heatmap-pixel-iou-0-5-mean-of-images-fakes", "robustness-pixel-iou-0-5-mean-of-images-fakes"):
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{fig}.{ext}").stat().st_size > 1000
    on_disk = json.loads((out / "leaderboard.json").read_text())
    assert on_disk == {k: v for k, v in payload.items() if k != "files"}
    assert [r["label"] for r in on_disk["rows"]] == ["patchforensics", "ela", "noise"]
    assert on_disk["metrics"][0] == PRIMARY_METRIC and "image/ap/all" in on_disk["metrics"]
    heat = on_disk["heatmaps"][0]
    assert heat["generators"] == ["lama", "ldm", "pluralistic", "repaint-p2"]
    assert "repaint-p2" not in heat["values"]["noise"]  # not scored there: a grey cell, not a zero
    assert on_disk["rows"][2]["provenance"]["dataset_fingerprint"] == load_results(EVALS[1]).dataset.fingerprint
    assert [s["perturbation"] for s in on_disk["stress_summary"]] == ["jpeg", "blur", "resize"]
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("# Test <board>\n") and "## Robustness" in md


def test_csv(site: tuple[Path, dict]) -> None:
    out, _ = site
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert [r["label"] for r in rows] == ["patchforensics", "ela", "noise"]
    assert rows[2][IMG_AUC] == "" and rows[2][f"{IMG_AUC} n"] == ""  # missing: empty, still numeric-parsable
    assert float(rows[0][PRIMARY_METRIC]) == pytest.approx(0.528)
    assert float(rows[0][f"{PRIMARY_METRIC} ci95_lo"]) < 0.528 < float(rows[0][f"{PRIMARY_METRIC} ci95_hi"])
    assert rows[0]["weights_sha256"] == load_results(EVALS[2]).model.weights_sha256


def test_html_is_self_contained(site: tuple[Path, dict]) -> None:
    out, payload = site
    page = (out / "index.html").read_text()
    assert "<title>Test &lt;board&gt;</title>" in page  # escaped
    # No external resource of any kind: every src/href is a data: URI or an in-page anchor.
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert not re.search(r"https?://", page.replace("http://www.w3.org", ""))
    blob = re.search(r'<script type="application/json" id="leaderboard-data">(.*?)</script>', page, re.S)
    assert blob and "</" not in blob.group(1)
    assert json.loads(blob.group(1))["title"] == payload["title"]


def test_refuses_bad_inputs_before_writing(tmp_path: Path) -> None:
    partial = _variant(tmp_path, EVALS[0], "partial.json", complete=False)
    with pytest.raises(IncompleteResultsError, match="partial.json"):
        build_leaderboard([EVALS[1], partial], tmp_path / "site")
    assert not (tmp_path / "site").exists()
    future = tmp_path / "future.json"
    future.write_text(EVALS[0].read_text().replace('"schema_version": "1.0"', '"schema_version": "9.9"'))
    with pytest.raises(SchemaVersionError, match="future.json"):
        build_leaderboard([future], tmp_path / "site")
    with pytest.raises(ResultsError, match="no results"):
        build_leaderboard([], tmp_path / "site")


# ---------------------------------------------------------------------------------- plots


def test_plots_accept_grid_dicts_and_are_deterministic(tmp_path: Path) -> None:
    grid = json.loads(STRESS.read_text())["stress"]["grid"]
    other = [dict(p, metrics={}) for p in grid[:3]]  # a model with gaps and fewer perturbations
    a = plots.robustness_curves({"ela": grid, "other": other}, tmp_path / "a", metric=PRIMARY_METRIC)
    b = plots.robustness_curves({"ela": grid, "other": other}, tmp_path / "b", metric=PRIMARY_METRIC)
    assert set(a) == {"png", "svg"} and a["svg"].read_bytes() == b["svg"].read_bytes()
    assert a["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h = plots.heatmap({"m1": {"g1": 0.2, "g2": None}, "m2": {"g1": 0.9}}, tmp_path / "h", metric="x", formats=("svg",))
    assert list(h) == ["svg"] and h["svg"].read_text().lstrip().startswith("<?xml")


# -------------------------------------------------------------------------------- browser


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found (apt-get install chromium)")
def test_page_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    out = tmp_path / "site"
    build_leaderboard([*EVALS, STRESS], out)
    url = (out / "index.html").resolve().as_uri()

    console: list[tuple[str, str]] = []
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")

            def labels() -> list[str]:
                return page.eval_on_selector_all("#leaderboard tbody tr", "rs => rs.map(r => r.dataset.label)")

            assert labels() == ["patchforensics", "ela", "noise"]
            assert page.locator("#leaderboard tbody tr").nth(2).locator("td.metric").last.inner_text() == "—"
            assert page.evaluate("window.leaderboardData.rows.length") == 3

            # Numeric column with a missing value: the first click sorts best first (descending for a
            # higher-is-better metric), the second ascending; the missing row stays last.
            header = page.locator(f'#leaderboard th[data-metric="{IMG_AUC}"]')
            header.click()
            assert header.get_attribute("aria-sort") == "descending"
            assert labels() == ["patchforensics", "ela", "noise"]
            header.click()
            assert header.get_attribute("aria-sort") == "ascending"
            assert labels() == ["ela", "patchforensics", "noise"]
            # Numeric, not lexicographic: the primary metric ascending is noise < ela < patchforensics.
            primary = page.locator(f'#leaderboard th[data-metric="{PRIMARY_METRIC}"]')
            primary.click()
            assert primary.get_attribute("aria-sort") == "descending"
            assert labels() == ["patchforensics", "ela", "noise"]
            primary.click()
            assert labels() == ["noise", "ela", "patchforensics"]
            assert header.get_attribute("aria-sort") is None
            # Rank: best (1) first on the first click.
            rank = page.locator("#leaderboard th", has_text="Rank")
            rank.click()
            assert rank.get_attribute("aria-sort") == "ascending"
            assert labels() == ["patchforensics", "ela", "noise"]
            # Text column.
            model = page.locator("#leaderboard th", has_text="Model")
            model.click()
            assert labels() == ["ela", "noise", "patchforensics"]
            model.click()
            assert labels() == ["patchforensics", "noise", "ela"]

            # Provenance opens and shows the dataset fingerprint and the weights hash.
            row = page.locator('#leaderboard tr[data-label="patchforensics"]')
            details = row.locator("details")
            assert not details.locator("dl").is_visible()
            details.locator("summary").click()
            prov = details.locator("dl").inner_text()
            assert load_results(EVALS[2]).dataset.fingerprint in prov
            assert load_results(EVALS[2]).model.weights_sha256 in prov  # type: ignore[operator]

            # Figures: every image decoded (including heatmaps hidden behind the metric selector).
            imgs = page.eval_on_selector_all(
                "img", "is => is.map(i => ({cls: i.className, ok: i.complete, w: i.naturalWidth}))")
            assert sum(i["cls"] == "heatmap-img" for i in imgs) >= 1
            assert sum(i["cls"] == "curve-img" for i in imgs) == 1
            assert all(i["ok"] and i["w"] > 0 for i in imgs), imgs
            visible = page.locator("figure.heatmap:visible")
            assert visible.count() == 1
            first = visible.get_attribute("data-id")
            page.select_option("#heatmap-metric", index=1)
            assert page.locator("figure.heatmap:visible").count() == 1
            assert page.locator("figure.heatmap:visible").get_attribute("data-id") != first

            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    non_white = sum(count for count, rgb in colours if min(rgb) < 240)
    assert len(colours) > 100, "screenshot looks blank"
    assert non_white > 0.02 * image.width * image.height
    assert not errors, errors
    assert not [c for c in console if c[0] == "error"], console
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
