"""The manifest (machine-readable provenance) and the dataset card (human-readable) of a build.

Neither holds a timestamp or a host name: the same recipe and seed give the same folder,
byte for byte, card and manifest included.
"""

from __future__ import annotations

import platform
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from ..data.dataset_io import MANIFEST_VERSION, ShardRecord
from ..data.schema import SPLITS

if TYPE_CHECKING:
    from ..recipes import Recipe
    from .pipeline import Plan

_PACKAGES = ("dolos-bench", "numpy", "pillow", "opencv-python-headless", "datasets", "pyarrow",
             "dlib-bin", "scikit-image", "torch", "diffusers")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _counts(plan: "Plan", skipped_ids: set[str], recipe: "Recipe") -> dict[str, Any]:
    by_split: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    by_generator: Counter[str] = Counter()
    for sample in plan.samples:
        if sample.sample_id in skipped_ids:
            continue
        kind = "real" if sample.generator_index is None else "fake"
        by_split[sample.split][kind] += 1
        label = "real" if sample.generator_index is None else recipe.generators[sample.generator_index].label
        by_generator[label] += 1
    splits = {s: {"real": c["real"], "fake": c["fake"]} for s, c in by_split.items() if c}
    return {
        "total": sum(sum(c.values()) for c in by_split.values()),
        "planned": len(plan.samples),
        "skipped": len(skipped_ids),
        "splits": splits,
        "generators": dict(sorted(by_generator.items())),
    }


def build_manifest(
    recipe: "Recipe",
    plan: "Plan",
    shards: list[ShardRecord],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    from .pipeline import summarize_skips

    conversions: dict[tuple[str, str], list[str]] = {}
    for shard in shards:
        for note in shard.notes:
            conversions.setdefault((note["source"], note["source_id"]), note["notes"])
    skipped_sorted = sorted(skipped, key=lambda s: s["id"])
    return {
        "format": "dolos-bench",
        "version": MANIFEST_VERSION,
        "complete": True,
        "name": recipe.name,
        "recipe": recipe.model_dump(mode="json"),
        "recipe_sha256": recipe.sha256(),
        "packages": package_versions(),
        "mask_polarity": "255 = forged, 0 = pristine; reals carry an all-zero mask",
        "sources": [
            {"name": spec.source_name, "type": spec.type, "params": spec.params}
            for spec in recipe.sources
        ],
        "shards": [
            {"file": f"data/{s.file}", "split": s.split, "rows": s.rows, "sha256": s.sha256}
            for s in shards
        ],
        "counts": _counts(plan, {s["id"] for s in skipped}, recipe),
        "skipped": skipped_sorted,
        "skipped_summary": [{"reason": r, "count": n} for r, n in summarize_skips(skipped)],
        "conversions": [
            {"source": src, "source_id": sid, "notes": notes}
            for (src, sid), notes in sorted(conversions.items())
        ],
    }


def _licences(recipe: "Recipe") -> list[tuple[str, str]]:
    from ..registry import SOURCES

    out = []
    for spec in recipe.sources:
        source_cls = SOURCES.get(spec.type)
        licence = spec.params.get("licence") or getattr(source_cls, "default_licence", "unknown")
        out.append((spec.source_name, licence))
    return out


def build_card(recipe: "Recipe", manifest: dict[str, Any]) -> str:
    """README.md of the dataset: YAML metadata that the Hub reads, then how it was built."""
    splits = [s for s in SPLITS if s in manifest["counts"]["splits"]]
    total = manifest["counts"]["total"]
    size = "n<1K" if total < 1_000 else "1K<n<10K" if total < 10_000 else "10K<n<100K" if total < 100_000 else "100K<n<1M"
    metadata = {
        "license": "other",
        "pretty_name": recipe.name,
        "tags": ["image-forensics", "inpainting", "deepfake-localization", "faces", "dolos-bench"],
        "task_categories": ["image-segmentation", "image-classification"],
        "size_categories": [size],
        # No `configs:` block, on purpose: the shards are named data/<split>-NNNNN-of-NNNNN.parquet,
        # which the Hub and `datasets` detect by themselves, and a `configs` block makes
        # `datasets.load_dataset(local_folder)` key its cache on the folder name instead of the
        # files -- a rebuilt or another same-named folder would then be read from a stale cache.
    }
    uses_landmarks = any(m.type == "landmarks" for m in recipe.maskers)
    landmark_note = ""
    if uses_landmarks:
        from .masks.landmarks import landmark_licence_note

        landmark_note = landmark_licence_note()
    env = Environment(loader=PackageLoader("dolos_bench.build", "templates"), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    body = env.get_template("dataset_card.md.j2").render(
        recipe=recipe, manifest=manifest, splits=splits, licences=_licences(recipe),
        landmark_note=landmark_note,
    )
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n" + body
