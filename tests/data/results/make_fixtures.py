"""Regenerate the results fixtures of this folder: ``python tests/data/results/make_fixtures.py``.

They are built through the pydantic models (so they are valid by construction) with plausible
numbers: three localizers on one Dolos-like test split, one of them without image-level scores
(its image metrics are missing) and one not scored on every generator, plus a JPEG/blur/resize
stress sweep of one of them. Deterministic: re-running gives the same bytes.

They are schema 1.0 files (no recorded metric directions) on purpose: the leaderboard tests then
show that files written before schema 1.1 still load and rank by the metric table's directions.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from dolos_bench.results import (  # noqa: E402
    Counts,
    DatasetInfo,
    Metric,
    ModelInfo,
    PerturbationSpec,
    ProtocolInfo,
    Provenance,
    Results,
    StressInfo,
    StressPoint,
    StressSummary,
    save_results,
)

HERE = Path(__file__).resolve().parent
FINGERPRINT = hashlib.sha256(b"dolos-celebahq-inpaint test v1").hexdigest()
GENERATORS = ("lama", "ldm", "pluralistic", "repaint-p2")
PARTS = ("eyes", "mouth", "nose", "skin")
IOU = "pixel/iou@0.5/mean-of-images/fakes"
F1 = "pixel/f1@0.5/mean-of-images/fakes"
PIX_AUC = "pixel/auc/pooled/all"
IMG_AUC = "image/auc/all"
IMG_AP = "image/ap/all"
N_REAL, N_FAKE = 400, 1600


def metric(value: float, n: int, half: float) -> Metric:
    """A value with a slightly asymmetric CI, like a percentile bootstrap gives."""
    return Metric(value=round(value, 4), ci95=(round(value - half * 1.1, 4), round(value + half * 0.9, 4)), n=n)


def headline(rng: np.random.Generator, iou: float, image: bool, scale: float = 1.0) -> dict[str, Metric]:
    n_all = round((N_REAL + N_FAKE) * scale)
    n_fake = round(N_FAKE * scale)
    m = {
        IOU: metric(iou, n_fake, 0.012 + 0.004 * rng.random()),
        F1: metric(min(iou * 1.22, 0.99), n_fake, 0.011 + 0.004 * rng.random()),
        PIX_AUC: metric(min(0.55 + iou * 0.6, 0.99), n_all, 0.004),
    }
    if image:
        m[IMG_AUC] = metric(min(0.6 + iou * 0.5, 0.99), n_all, 0.015)
        m[IMG_AP] = metric(min(0.7 + iou * 0.4, 0.99), n_all, 0.01)
    return m


def eval_result(
    model: ModelInfo, iou: float, *, image: bool, generators: tuple[str, ...], seed: int, command: str
) -> Results:
    rng = np.random.default_rng(seed)
    per_gen = {g: headline(rng, max(0.02, iou + rng.normal(0, 0.08)), image, 1 / len(GENERATORS)) for g in generators}
    per_part = {p: headline(rng, max(0.02, iou + rng.normal(0, 0.05)), image, 1 / len(PARTS)) for p in PARTS}
    return Results(
        schema_version="1.0",
        kind="eval",
        model=model,
        dataset=DatasetInfo(path="data/dolos-celebahq-inpaint", fingerprint=FINGERPRINT, split="test",
                            recipe="recipes/build/celebahq-inpaint.yaml", num_samples=N_REAL + N_FAKE),
        protocol=ProtocolInfo(name="default", threshold=0.5, resize="bilinear",
                              details={"bootstrap": {"resamples": 1000, "unit": "image"}}),
        metrics=headline(rng, iou, image),
        breakdowns={
            "generator": per_gen,
            "parts": per_part,
            "source": {"celebahq": headline(rng, iou, image)},
        },
        counts=Counts(samples=N_REAL + N_FAKE, real=N_REAL, fake=N_FAKE, skipped=0),
        complete=True,
        provenance=Provenance(
            package_versions={"dolos-bench": "0.1.0", "numpy": "1.26.4", "torch": "2.3.1", "pillow": "10.3.0"},
            git_revision="3f2c9a1e5b7d4c6f8a0b1c2d3e4f5a6b7c8d9e0f",
            seeds={"bootstrap": 1234},
            timings={"load": 3.2, "predict": round(40 + 100 * rng.random(), 1), "metrics": 2.7},
            created=f"2024-06-0{1 + seed % 9}T12:00:00Z",
            command=command,
        ),
        info={"empty_rule": "iou=1 if both empty", "image_score_rule": "model score" if image else "not scored",
              "bins": 1000},
    )


def stress_result() -> Results:
    rng = np.random.default_rng(7)
    grid: list[StressPoint] = []
    summary: dict[str, StressSummary] = {}
    clean = 0.31
    sweeps = {
        "jpeg": [(q, [PerturbationSpec(name="jpeg", quality=q)]) for q in (95, 80, 60, 40)],
        "blur": [(s, [PerturbationSpec(name="gaussian_blur", sigma=s)]) for s in (0.5, 1.0, 2.0, 4.0)],
        "resize": [(f"x{f}", [PerturbationSpec(name="resize", factor=f), PerturbationSpec(name="jpeg", quality=90)])
                   for f in (0.75, 0.5, 0.25)],
    }
    for pert, levels in sweeps.items():
        values = []
        for k, (sev, spec) in enumerate(levels):
            v = clean * (0.85 ** (k + 1)) + rng.normal(0, 0.005)
            values.append(v)
            grid.append(StressPoint(perturbation=pert, severity=sev, spec=spec,
                                    metrics={IOU: metric(v, N_FAKE, 0.013), PIX_AUC: metric(0.55 + v * 0.6, N_REAL + N_FAKE, 0.004)}))
        summary[pert] = StressSummary(relative_drop=round(1 - values[-1] / clean, 4),
                                      area_under_curve=round(float(np.mean(values)), 4))
    base = eval_result(ModelInfo(id="ela", kind="registry", options={"quality": 90}), clean, image=True,
                       generators=GENERATORS, seed=3, command="bench stress ela data/dolos-celebahq-inpaint")
    return base.model_copy(update={
        "kind": "stress",
        "metrics": {},
        "breakdowns": {},
        "stress": StressInfo(suite="jpeg-blur-resize", metric=IOU, grid=grid, summary=summary),
    })


def fixtures() -> dict[str, Results]:
    """name -> results; the leaderboard tests rely on the ordering IoU patchforensics > ela > noise."""
    return {
        "eval_ela.json": eval_result(
            ModelInfo(id="ela", kind="registry", options={"quality": 90}), 0.312, image=True, generators=GENERATORS,
            seed=1, command="bench eval ela data/dolos-celebahq-inpaint --split test"),
        "eval_noise.json": eval_result(
            ModelInfo(id="noise", kind="registry"), 0.187, image=False, generators=GENERATORS[:3],
            seed=2, command="bench eval noise data/dolos-celebahq-inpaint --split test"),
        "eval_patchforensics.json": eval_result(
            ModelInfo(id="patchforensics", kind="torchscript", path="models/patchforensics.pt",
                      weights_sha256=hashlib.sha256(b"patchforensics weights").hexdigest(), options={"device": "cuda"}),
            0.528, image=True, generators=GENERATORS, seed=4,
            command="bench eval models/patchforensics.pt data/dolos-celebahq-inpaint --split test"),
        "stress_ela.json": stress_result(),
    }


if __name__ == "__main__":
    for name, results in fixtures().items():
        save_results(results, HERE / name)
        print(HERE / name)
