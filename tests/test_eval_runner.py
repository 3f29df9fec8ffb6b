"""`bench eval` in chunks: any chunk size, any number of processes, interrupted or not -- the same bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from click.testing import CliRunner

from dolos_bench.cli import main
from dolos_bench.data.reader import open_split
from dolos_bench.eval.api import Localizer, LocalizerError, LocalizerOutput
from dolos_bench.eval.config import ScoringConfig
from dolos_bench.eval.runner import EvalInterrupted, run_eval

from helpers import build_tiny, results_numbers


class BrightnessLocalizer(Localizer):
    """Map = normalised brightness; image score = its mean. Deterministic and image-dependent."""

    name = "brightness"

    def __init__(self, device: str = "cpu", fail_on: str | None = None, gain: float = 1.0) -> None:
        super().__init__(device=device, fail_on=fail_on, gain=gain)
        self.fail_on, self.gain = fail_on, float(gain)

    def predict(self, images: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> LocalizerOutput:
        if self.fail_on is not None and ids is not None and self.fail_on in ids:
            raise RuntimeError(f"cannot score {self.fail_on}")
        maps = [np.clip(im.astype(np.float32).mean(axis=2) / 255.0 * self.gain, 0, 1) for im in images]
        return LocalizerOutput(maps, [float(m.mean()) for m in maps])


MODEL = f"{__name__}:BrightnessLocalizer"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("runner"), images=8)


def _eval(dataset: Path, out: Path | None, *, stop_after_chunks: int | None = None, **kw: Any):
    kw.setdefault("split", "train")
    kw.setdefault("bootstrap", 30)
    return run_eval(ScoringConfig(model=MODEL, data=str(dataset), **kw), out=out, stop_after_chunks=stop_after_chunks)


_numbers = results_numbers


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.json"
    _eval(dataset, out, protocol="dolos")
    return out


@pytest.mark.parametrize(("chunk_size", "workers"), [(1, 1), (3, 1), (5, 2), (100, 2)])
def test_chunks_and_workers_do_not_change_a_byte(tmp_path: Path, dataset: Path, reference: Path,
                                                 chunk_size: int, workers: int) -> None:
    out = tmp_path / "r.json"
    result = _eval(dataset, out, protocol="dolos", chunk_size=chunk_size, workers=workers)
    assert _numbers(out) == _numbers(reference)
    assert "dolos" in result.results.info
    samples = out.with_suffix(".samples.jsonl").read_bytes()
    assert samples == reference.with_suffix(".samples.jsonl").read_bytes()
    ids = [json.loads(line)["id"] for line in samples.decode().splitlines()]
    assert ids == open_split(dataset, "train").column("id")  # dataset order, whatever finished first
    assert not (tmp_path / ".r.json.eval").exists()


def test_interrupted_eval_resumes_to_the_same_bytes(tmp_path: Path, dataset: Path, reference: Path) -> None:
    out = tmp_path / "r.json"
    with pytest.raises(EvalInterrupted):
        _eval(dataset, out, protocol="dolos", chunk_size=4, stop_after_chunks=2)
    assert not out.exists() and not out.with_suffix(".samples.jsonl").exists()
    folder = tmp_path / ".r.json.eval"
    assert sorted(p.name for p in folder.iterdir()) == ["0000.json", "0000.jsonl", "0001.json", "0001.jsonl"]
    # Another model's (or options') chunks are not merged in.
    other = _eval(dataset, None, chunk_size=4, options={"gain": 0.5})
    assert other.results.metrics != json.loads(reference.read_text())["metrics"]
    (folder / "0001.jsonl").unlink()  # a chunk without its records is redone
    resumed = _eval(dataset, out, protocol="dolos", chunk_size=4)
    assert resumed.results.info["resumed_chunks"] == 1
    assert _numbers(out) == _numbers(reference)
    assert out.with_suffix(".samples.jsonl").read_bytes() == reference.with_suffix(".samples.jsonl").read_bytes()
    assert not folder.exists()


def test_changed_options_invalidate_checkpoints(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "r.json"
    with pytest.raises(EvalInterrupted):
        _eval(dataset, out, chunk_size=4, stop_after_chunks=1, options={"gain": 0.5})
    result = _eval(dataset, out, chunk_size=4, options={"gain": 2.0})
    assert "resumed_chunks" not in result.results.info


def test_model_failure_keeps_finished_chunks_and_writes_no_results(tmp_path: Path, dataset: Path) -> None:
    ids = open_split(dataset, "train").column("id")
    out = tmp_path / "r.json"
    for workers in (1, 2):
        with pytest.raises(LocalizerError, match=rf"cannot score {ids[9]}"):
            _eval(dataset, out, chunk_size=4, workers=workers, options={"fail_on": ids[9]})
        assert not out.exists() and not out.with_suffix(".samples.jsonl").exists()
    assert (tmp_path / ".r.json.eval" / "0000.json").exists()  # chunk 1 is kept for the re-run


def test_eval_command_with_workers(tmp_path: Path, dataset: Path, reference: Path) -> None:
    out = tmp_path / "cli.json"
    result = CliRunner().invoke(main, ["eval", MODEL, "--data", str(dataset), "--split", "train", "--protocol", "dolos",
                                       "--bootstrap", "30", "--workers", "2", "--chunk-size", "6", "--out", str(out),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert _numbers(out) == _numbers(reference)
    bad = CliRunner().invoke(main, ["eval", MODEL, "--data", str(dataset), "--chunk-size", "0"])
    assert bad.exit_code == 2 and "chunk-size" in bad.output
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        _eval(dataset, None, chunk_size=0)


class WeightedLocalizer(BrightnessLocalizer):
    """Reads its gain from a weights file (.npy) or folder (gain.npy inside), like a trained model would."""

    name = "weighted"

    def __init__(self, device: str = "cpu", weights: str | None = None) -> None:
        if weights is None:
            raise ValueError("weighted needs --weights")
        path = Path(weights)
        gain = float(np.load(path / "gain.npy" if path.is_dir() else path))
        super().__init__(device=device, gain=gain)
        self.options = {"weights": weights}


def test_weights_are_passed_on_and_hashed(tmp_path: Path, dataset: Path) -> None:
    import hashlib

    from dolos_bench.eval.localizers import LocalizerLoadError, load_localizer, weights_sha256
    from dolos_bench.results import load_results

    weights = tmp_path / "w.npy"
    np.save(weights, np.float32(0.5))
    out = tmp_path / "w.json"
    result = CliRunner().invoke(main, ["eval", f"{__name__}:WeightedLocalizer", "--weights", str(weights), "--data",
                                       str(dataset), "--split", "train", "--bootstrap", "0", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    model = load_results(out).model
    assert model.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model.options == {"weights": str(weights)}
    half = _eval(dataset, None, options={"gain": 0.5}, bootstrap=0)
    assert load_results(out).metrics == half.results.metrics  # the weights were really used

    # A folder hashes its files' contents and names, not their order or timestamps.
    folder = tmp_path / "wdir"
    (folder / "sub").mkdir(parents=True)
    np.save(folder / "gain.npy", np.float32(0.5))
    (folder / "sub" / "config.json").write_text("{}")
    digest = weights_sha256(folder)
    assert load_localizer(f"{__name__}:WeightedLocalizer", options={"weights": str(folder)}).identity()[
        "weights_sha256"] == digest
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    assert weights_sha256(folder) != digest

    with pytest.raises(LocalizerLoadError, match="no such file or folder"):
        load_localizer(f"{__name__}:WeightedLocalizer", options={"weights": str(tmp_path / "missing.pt")})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LocalizerLoadError, match="holds no files"):
        load_localizer(f"{__name__}:WeightedLocalizer", options={"weights": str(empty)})
    twice = CliRunner().invoke(main, ["eval", f"{__name__}:WeightedLocalizer", "--weights", str(weights),
                                      "--model-arg", f"weights={weights}", "--data", str(dataset)])
    assert twice.exit_code == 2 and "weights given twice" in twice.output
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"not really onnx")
    with pytest.raises(LocalizerLoadError, match="carries its own weights"):
        load_localizer(model_file, options={"weights": str(weights)})


def test_exact_mode_end_to_end_matches_sklearn(tmp_path: Path, dataset: Path) -> None:
    import io

    from PIL import Image
    from sklearn.metrics import average_precision_score, roc_auc_score

    from dolos_bench.data.reader import read_rows

    inline = _eval(dataset, tmp_path / "a.json", exact=True, bootstrap=0)
    pooled = _eval(dataset, tmp_path / "b.json", exact=True, bootstrap=0, workers=2, chunk_size=4)
    assert _numbers(tmp_path / "a.json") == _numbers(tmp_path / "b.json")
    assert inline.results.protocol.details["exact"] is True
    scores, truth = [], []
    for row in read_rows(dataset, "train"):
        image = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"))
        mask = np.asarray(Image.open(io.BytesIO(row["mask"]["bytes"]))) > 0
        score_map = BrightnessLocalizer().predict([image]).maps[0]
        assert score_map.shape == mask.shape  # no resize: the reference needs none either
        scores.append(score_map.ravel())
        truth.append(mask.ravel())
    s, t = np.concatenate(scores), np.concatenate(truth)
    metrics = pooled.results.metrics
    assert metrics["pixel/auc/pooled/all"].value == pytest.approx(roc_auc_score(t, s), abs=1e-12)
    assert metrics["pixel/ap/pooled/all"].value == pytest.approx(average_precision_score(t, s), abs=1e-12)
    binned = _eval(dataset, None, bootstrap=0)
    assert binned.results.metrics["pixel/auc/pooled/all"].value == pytest.approx(roc_auc_score(t, s), abs=1e-3)
