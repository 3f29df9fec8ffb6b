"""The results schema: golden serialisation, validation rules, atomic save and refusing bad files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dolos_bench import results as R
from dolos_bench.results import (
    SCHEMA_VERSION,
    Counts,
    DatasetInfo,
    IncompleteResultsError,
    Metric,
    ModelInfo,
    PerturbationSpec,
    ProtocolInfo,
    Provenance,
    Results,
    ResultsError,
    SchemaVersionError,
    StressInfo,
    StressPoint,
    StressSummary,
    load_results,
    save_results,
)

GOLDEN = Path(__file__).parent / "golden" / "results_v1_1.json"
GOLDEN_V1_0 = Path(__file__).parent / "golden" / "results_v1.json"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


def example(kind: str = "stress", complete: bool = True, schema_version: str = SCHEMA_VERSION) -> Results:
    """A small result with every section filled, so the golden file pins every field."""
    iou = "pixel/iou@0.5/mean-of-images/fakes"
    m = Metric(value=0.5, ci95=(0.45, 0.55), n=2)
    return Results(
        schema_version=schema_version,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        model=ModelInfo(id="toy", kind="onnx", path="models/toy.onnx", weights_sha256=SHA_A, options={"size": 256}),
        dataset=DatasetInfo(path="data/toy", fingerprint=SHA_B, split="test", recipe="recipes/build/toy.yaml",
                            num_samples=3),
        protocol=ProtocolInfo(name="default", threshold=0.5, resize="bicubic", details={"bootstrap": 100}),
        metrics={iou: m, "pixel/auc/pooled/all": Metric(value=0.75, ci95=None, n=3),
                 "image/auc/all": Metric(value=None, ci95=None, n=3)},
        breakdowns={"generator": {"lama": {iou: m}}, "parts": {"eyes": {iou: m}},
                    "perturbation": {"none": {iou: m}}, "source": {"celebahq": {iou: m}}},
        counts=Counts(samples=3, real=1, fake=2, failed=0),
        complete=complete,
        provenance=Provenance(package_versions={"dolos-bench": "0.1.0"}, git_revision="deadbeef",
                              seeds={"bootstrap": 0}, timings={"predict": 1.5}, created="2024-05-01T12:00:00Z",
                              command="bench stress toy data/toy"),
        info={"empty_rule": "iou=1 if both empty", "image_score_rule": "max", "bins": 1000},
        stress=None if kind == "eval" else StressInfo(
            suite="jpeg", metric=iou,
            grid=[StressPoint(perturbation="jpeg", severity=50, spec=[PerturbationSpec(name="jpeg", quality=50)],
                              metrics={iou: m}),
                  StressPoint(perturbation="resize", severity="x0.5",
                              spec=[PerturbationSpec(name="resize", factor=0.5)], metrics={iou: m})],
            summary={"jpeg": StressSummary(relative_drop=0.1, area_under_curve=0.45, clean=0.5)},
        ),
    )


def test_golden_serialisation() -> None:
    """Changing the schema must be deliberate: regenerate with DOLOS_UPDATE_GOLDEN=1 and bump the version."""
    produced = json.loads(example().to_json())
    if os.environ.get("DOLOS_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(example().to_json(), encoding="utf-8")
    assert produced == json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert produced["schema_version"] == SCHEMA_VERSION == "1.1"
    # The golden file is itself a valid results file.
    assert load_results(GOLDEN) == example()


def test_golden_v1_0_still_reads() -> None:
    """A schema 1.0 file (no recorded directions) loads, and is written back byte for byte."""
    text = GOLDEN_V1_0.read_text(encoding="utf-8")
    assert json.loads(text)["schema_version"] == "1.0"
    loaded = load_results(GOLDEN_V1_0)
    assert loaded == example(schema_version="1.0")
    assert loaded.metric_directions is None and loaded.to_json() == text


def test_roundtrip(tmp_path: Path) -> None:
    path = save_results(example(), tmp_path / "sub" / "r.json")
    assert load_results(path) == example()
    assert load_results(save_results(example("eval"), tmp_path / "e.json")) == example("eval")


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    save_results(example(), path)
    before = path.read_bytes()
    calls: list[tuple[str, str]] = []

    def boom(src: str, dst: str) -> None:
        calls.append((str(src), str(dst)))
        raise OSError("disk gone")

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        save_results(example("eval"), path)
    # The new content went to a temporary file next to the target (same filesystem) ...
    assert len(calls) == 1 and Path(calls[0][0]).parent == tmp_path and calls[0][1] == str(path)
    # ... and a failed replace leaves the old file intact and no temporary file behind.
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_incomplete_refused(tmp_path: Path) -> None:
    path = save_results(example(complete=False), tmp_path / "partial.json")
    with pytest.raises(IncompleteResultsError, match=r"partial\.json.*incomplete"):
        load_results(path)
    assert load_results(path, allow_incomplete=True).complete is False


@pytest.mark.parametrize("version", ["2.0", "0.9", None, 1.0])
def test_unknown_version_refused(tmp_path: Path, version: object) -> None:
    raw = json.loads(example().to_json())
    if version is None:
        del raw["schema_version"]
    else:
        raw["schema_version"] = version
    path = tmp_path / "future.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaVersionError, match=r"future\.json.*schema_version") as info:
        load_results(path)
    assert isinstance(info.value, ResultsError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ['{"schema_version": "1.0", "kind": ', "", "not json", "{'a': 1}"])
def test_malformed_json_names_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken-results.json"
    path.write_text(text)
    with pytest.raises(ResultsError, match=r"broken-results\.json.*not valid JSON"):
        load_results(path)


def test_other_unusable_files(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ResultsError, match=r"list\.json.*JSON object"):
        load_results(tmp_path / "list.json")
    with pytest.raises(ResultsError, match=r"missing\.json.*cannot read"):
        load_results(tmp_path / "missing.json")
    raw = json.loads(example().to_json())
    raw["metrics"]["pixel/auc/pooled/all"]["stderr"] = 0.1  # typo'd/unknown key: extra="forbid"
    (tmp_path / "extra.json").write_text(json.dumps(raw))
    with pytest.raises(ResultsError, match=r"extra\.json.*invalid results file(.|\n)*stderr"):
        load_results(tmp_path / "extra.json")


def test_validation_rules() -> None:
    base = example().model_dump()
    with pytest.raises(ValueError, match="needs a 'stress' section"):
        Results.model_validate({**base, "stress": None})
    with pytest.raises(ValueError, match="must not carry"):
        Results.model_validate({**base, "kind": "eval"})
    with pytest.raises(ValueError):
        ModelInfo(id="x", kind="registry", weights_sha256="not-a-hash")
    with pytest.raises(ValueError):
        ModelInfo(id="x", kind="pickle")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ProtocolInfo(name="default", threshold=0.5, resize="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="above the upper bound"):
        Metric(value=0.5, ci95=(0.6, 0.4), n=1)
    with pytest.raises(ValueError):
        Metric(value=0.5, n=-1)
    with pytest.raises(ValueError):
        Results.model_validate({**base, "breakdowns": {"colour": {}}})
    with pytest.raises(ValueError):
        Counts(samples=1, real=1, fake=0, skipped="many")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="UTC"):
        Provenance(created="2024-05-01T12:00:00+02:00", command="x")
    with pytest.raises(ValueError, match="ISO 8601"):
        Provenance(created="yesterday", command="x")
    with pytest.raises(ValueError, match="UTC"):
        Provenance(created="2024-05-01T12:00:00", command="x")  # naive: ambiguous
    assert Provenance(created="2024-05-01T12:00:00+00:00", command="x").created.endswith("+00:00")


def test_non_finite_values_become_null() -> None:
    """JSON has no NaN; an undefined metric is null, and the file stays strict JSON."""
    m = Metric(value=math.nan, ci95=(math.nan, math.inf), n=0)
    assert m.value is None and m.ci95 is None
    r = example().model_copy(update={"metrics": {"x": m}})
    assert json.loads(r.to_json())["metrics"]["x"] == {"value": None, "ci95": None, "n": 0}


def test_provenance_helpers() -> None:
    p = R.collect_provenance("bench eval x y", seeds={"bootstrap": 1}, timings={"predict": 0.5})
    assert p.command == "bench eval x y" and p.seeds == {"bootstrap": 1}
    assert p.created.endswith("Z") and "dolos-bench" in p.package_versions
    assert R.package_versions(["surely-not-installed-pkg-xyz"]) == {}
    assert R.git_revision("/") is None


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    metrics=st.dictionaries(
        st.text(min_size=1, max_size=30),
        st.builds(lambda v, a, b, n: Metric(value=v, ci95=None if a is None else (min(a, b), max(a, b)), n=n),
                  st.none() | finite, st.none() | finite, finite, st.integers(0, 10**6)),
        max_size=5,
    )
)
def test_metrics_roundtrip_exactly(tmp_path_factory: pytest.TempPathFactory, metrics: dict[str, Metric]) -> None:
    """Floats survive save/load bit-for-bit, and any metric name (unicode, slashes) is a valid key."""
    path = tmp_path_factory.mktemp("rt") / "r.json"
    r = example("eval").model_copy(update={"metrics": metrics})
    assert load_results(save_results(r, path)).metrics == metrics
