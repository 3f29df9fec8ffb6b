"""The manifest (machine-readable provenance) and the dataset card (human-readable) of a build.

Neither holds a timestamp or a host name: the same recipe and seed give the same folder,
byte for byte, card and manifest included.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from ..data.dataset_io import MANIFEST_VERSION, ShardRecord
from ..utils.versions import package_versions as installed_versions
from ..data.schema import SPLITS

if TYPE_CHECKING:
    from .recipe import Recipe
    from .plan import Plan

_PACKAGES = ("dolos-bench", "numpy", "pillow", "opencv-python-headless", "datasets", "pyarrow",
             "dlib-bin", "scikit-image", "torch", "diffusers")


def package_versions() -> dict[str, str]:
    """Python and the packages whose versions can change a build's bytes."""
    return installed_versions(_PACKAGES, with_python=True)


def _counts(plan: "Plan", skipped: list[dict[str, Any]], recipe: "Recipe") -> dict[str, Any]:
    """Samples built per split and generator, samples skipped, and source files by outcome."""
    skipped_ids = {s["id"] for s in skipped}
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
    files = plan.files
    counts = {
        "total": sum(sum(c.values()) for c in by_split.values()),
        "planned": len(plan.samples) + len(plan.skipped),
        "skipped": len(skipped_ids),
        "splits": splits,
        "generators": dict(sorted(by_generator.items())),
        "files": {"read": files.read, "skipped": len(files.skipped), "converted": len(files.converted),
                  "ignored": len(files.ignored)},
    }
    if recipe.subsets:  # exact-count recipes: samples built per subset and split, and the images not needed
        by_subset: Counter[tuple[str, str]] = Counter(
            (s.subset or "", s.split) for s in plan.samples if s.sample_id not in skipped_ids)
        counts["subsets"] = {sub.label: {sp: by_subset[sub.label, sp] for sp in SPLITS if by_subset[sub.label, sp]}
                             for sub in recipe.subsets}
        counts["files"]["unused"] = files.unused
    return counts


def build_warnings(counts: dict[str, Any], plan: "Plan", skipped: list[dict[str, Any]]) -> list[str]:
    """What a finished build should not pass over in silence: no fakes, or no samples at all."""

    if plan.files.read == 0:
        ignored = counts["files"]["ignored"]
        return [f"the sources listed no image{f' ({ignored} file(s) ignored: see ignored_files)' if ignored else ''}"]
    if counts["total"] == 0:
        why = "; ".join(f"{n}× {reason}" for reason, n in summarize_skips(skipped))
        return [f"no sample was built: all {len(skipped)} planned samples were skipped ({why})"]
    lost = [s for s in skipped if s.get("label") == "fake"]
    if lost and not any(c["fake"] for c in counts["splits"].values()):
        why = "; ".join(f"{n}× {reason}" for reason, n in summarize_skips(lost))
        return [f"no fake was built: all {len(lost)} planned fakes were skipped ({why})"]
    return []


def build_manifest(
    recipe: "Recipe",
    plan: "Plan",
    shards: list[ShardRecord],
    skipped: list[dict[str, str]],
) -> dict[str, Any]:

    """The manifest of a finished build.

    ``skipped`` lists every planned sample that was not built, with its reason (a file skipped
    while planning gives one entry per sample it would have made); ``skipped_files``,
    ``conversions`` and ``ignored_files`` list source files once each, by their path relative to
    the source root, so that a user can find and fix them.
    """
    skipped_sorted = sorted(skipped, key=lambda s: s["id"])
    counts = _counts(plan, skipped, recipe)
    files = plan.files
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
        "counts": counts,
        "warnings": build_warnings(counts, plan, skipped),
        "skipped": skipped_sorted,
        "skipped_summary": [{"reason": r, "count": n} for r, n in summarize_skips(skipped)],
        "skipped_files": sorted(files.skipped, key=_file_key),
        "conversions": sorted(files.converted, key=_file_key),
        "ignored_files": sorted(files.ignored, key=_file_key),
    }


def _file_key(entry: dict[str, Any]) -> tuple[str, str]:
    return entry["source"], entry["path"]


def _source_notes(recipe: "Recipe") -> list[tuple[str, str]]:
    """(source name, the card note of its type) for sources that have one (e.g. the sample set)."""
    from ..registry import SOURCES

    out = []
    for spec in recipe.sources:
        note = getattr(SOURCES.get(spec.type), "card_note", "")
        if note:
            out.append((spec.source_name, note))
    return out


def _licences(recipe: "Recipe") -> list[tuple[str, str]]:
    from ..registry import SOURCES

    out = []
    for spec in recipe.sources:
        source_cls = SOURCES.get(spec.type)
        licence = spec.params.get("licence") or getattr(source_cls, "default_licence", "unknown")
        out.append((spec.source_name, licence))
    return out


def licence_notes(recipe: "Recipe") -> list[str]:
    """The ``licence_note`` of every stage the recipe names, once each, in recipe order.

    Sources, maskers, generators, then the perturbations of the chains: whatever a stage
    declares, the card prints, so a new stage with a licence needs no change here.
    """
    from ..perturbations import parse_chain
    from ..registry import GENERATORS, MASKERS, SOURCES

    stages: list[object] = [SOURCES.get(spec.type) for spec in recipe.sources]
    stages += [MASKERS.get(spec.type) for spec in recipe.maskers]
    stages += [GENERATORS.get(spec.type) for spec in recipe.generators]
    stages += [type(step) for chain in recipe.perturbations.chains for step in parse_chain(chain).steps]
    notes: list[str] = []
    for stage in stages:
        note = getattr(stage, "licence_note", None)
        if note and note not in notes:
            notes.append(note)
    return notes


def unmasked_notes(recipe: "Recipe") -> list[tuple[str, str]]:
    """(generator label, what happened outside the mask) for each generator whose ``unmasked_note``
    says the pixels there are not the real image's (e.g. a latent-diffusion decode of the whole image).

    Read from each generator class and its recipe parameters, never by building it, so a new
    generator with such a note needs no change here.
    """
    from ..registry import GENERATORS

    out = []
    for spec in recipe.generators:
        note_of = getattr(GENERATORS.get(spec.type), "unmasked_note", None)
        note = note_of(dict(spec.params)) if callable(note_of) else None
        if note:
            out.append((spec.label, note))
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
    env = Environment(loader=PackageLoader("dolos_bench.builder", "templates"), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    body = env.get_template("dataset_card.md.j2").render(
        recipe=recipe, manifest=manifest, splits=splits, licences=_licences(recipe),
        licence_notes=licence_notes(recipe), source_notes=_source_notes(recipe),
        unmasked_notes=unmasked_notes(recipe),
    )
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n\n" + body


def import_manifest(
    *,
    name: str,
    imported_from: dict[str, Any],
    sources: list[dict[str, Any]],
    shards: list[ShardRecord],
    skipped: list[dict[str, Any]],
    samples: list[tuple[str, str, str]],
    planned: int,
    ignored: list[dict[str, Any]],
) -> dict[str, Any]:
    """The manifest of a dataset folder made by ``bench import``: a build's keys and shapes.

    There is no recipe (``recipe`` and ``recipe_sha256`` are null); ``imported_from`` says where
    the data came from. ``samples`` holds ``(split, "real"|"fake", generator)`` of every row
    written, ``planned`` the number of images found. One image is one sample, so every skipped
    sample is also a skipped file; conversions are the shards' notes (source, source_id, path, notes).
    """

    by_split: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    for split, kind, _ in samples:
        by_split[split][kind] += 1
    converted = [note for shard in shards for note in shard.notes]
    skipped_files = [{"source": s["source"], "source_id": s["source_id"], "path": s["path"], "reason": s["reason"],
                      "samples": 1} for s in skipped]
    warnings = []
    if planned and not samples:
        why = "; ".join(f"{n}× {reason}" for reason, n in summarize_skips(skipped))
        warnings.append(f"no sample was imported: all {len(skipped)} images were skipped ({why})")
    return {
        "format": "dolos-bench",
        "version": MANIFEST_VERSION,
        "complete": True,
        "name": name,
        "recipe": None,
        "recipe_sha256": None,
        "imported_from": imported_from,
        "packages": package_versions(),
        "mask_polarity": "255 = forged, 0 = pristine; reals carry an all-zero mask",
        "sources": sources,
        "shards": [
            {"file": f"data/{s.file}", "split": s.split, "rows": s.rows, "sha256": s.sha256}
            for s in shards
        ],
        "counts": {
            "total": len(samples),
            "planned": planned,
            "skipped": len(skipped),
            "splits": {s: {"real": c["real"], "fake": c["fake"]} for s, c in by_split.items() if c},
            "generators": dict(sorted(Counter(generator for _, _, generator in samples).items())),
            "files": {"read": planned, "skipped": len(skipped_files), "converted": len(converted),
                      "ignored": len(ignored)},
        },
        "warnings": warnings,
        "skipped": sorted(skipped, key=lambda s: s["id"]),
        "skipped_summary": [{"reason": r, "count": n} for r, n in summarize_skips(skipped)],
        "skipped_files": sorted(skipped_files, key=lambda e: (e['source'], e['path'])),
        "conversions": sorted(converted, key=lambda e: (e['source'], e['path'])),
        "ignored_files": sorted(ignored, key=lambda e: (e['source'], e['path'])),
    }


def summarize_skips(skipped: Iterable[dict[str, Any]]) -> list[tuple[str, int]]:
    """(reason kind, count), most frequent first (see :func:`skip_kind`)."""
    counter: Counter[str] = Counter(skip_kind(item["reason"]) for item in skipped)
    return counter.most_common()


def skip_kind(reason: str) -> str:
    """The kind of a skip reason, for summaries: cut at the first ';' or ' (', duplicates named as such."""
    if reason.startswith("duplicate of "):
        return "duplicate image"
    return reason.split(";")[0].split(" (")[0].strip()
