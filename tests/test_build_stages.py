"""The build as stages on the worker engine: prepare, inpaint in batches (in its own pool when a
generator has its own devices), finish; the same bytes as a plain per-sample build whatever the
worker count, the batch size or where the generator runs; every image decoded once; Ctrl-C."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dolos_bench.builder.base import Generator, SkipSample
from dolos_bench.builder.pipeline import BuildInterrupted, build_sources, make_plan, run_build
from dolos_bench.builder.plan import choose
from dolos_bench.builder.recipe import load_recipe
from dolos_bench.builder.stages import (CpuStages, InpaintBatch, ShardJob, StageCancelled, StageSetup, batches,
                                        inpaint)
from dolos_bench.data.images import encode_png, load_rgb, preprocess
from dolos_bench.data.sources import FolderSource
from dolos_bench.perturbations import parse_chain
from dolos_bench.registry import GENERATORS, MASKERS, SOURCES
from dolos_bench.seeding import rng_for

from helpers import folder_hashes, make_image_folder, tiny_recipe


class RecordingGenerator(Generator):
    """Noise inside the mask from its own rng; records every batch it gets and where it was set up."""

    name = "recording-test"
    max_batch: ClassVar[int | None] = 3
    batches: ClassVar[list[tuple[str, int]]] = []  # (device, batch size) of every inpaint_batch call
    events: ClassVar[list[str]] = []  # "built", then the device of every setup() call

    def __init__(self, strength: int = 60) -> None:
        self.strength, self.device = strength, "unset"
        RecordingGenerator.events.append("built")

    def setup(self, device: str) -> None:
        self.device = device
        RecordingGenerator.events.append(device)

    def identity(self) -> dict[str, Any]:
        return {"strength": self.strength}

    def inpaint(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = image.copy()
        inside = mask > 0
        out[inside] = rng.integers(0, self.strength, size=(int(inside.sum()), 3), dtype=np.uint8)
        return out

    def inpaint_batch(self, images, masks, rngs):
        RecordingGenerator.batches.append((self.device, len(images)))
        return [self.inpaint(i, m, r) for i, m, r in zip(images, masks, rngs)]


class CountingSource(FolderSource):
    """A folder source that counts how often each item is loaded (in this process)."""

    name = "counting-test"
    loads: ClassVar[list[str]] = []

    def load(self, ref):
        CountingSource.loads.append(ref)
        return super().load(ref)


@pytest.fixture(autouse=True)
def _registered_for_this_test(monkeypatch):
    """The two test stages are registered only while a test of this file runs (others list the registry)."""
    for registry in (GENERATORS, SOURCES):
        registry.names()  # entry points loaded into the registry itself, not into the copy
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    GENERATORS.register("recording-test")(RecordingGenerator)
    SOURCES.register("counting-test")(CountingSource)
    RecordingGenerator.batches.clear()
    RecordingGenerator.events.clear()
    CountingSource.loads.clear()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("src"), n=12)


def _recipe(tmp_path: Path, src: Path, **overrides):
    overrides.setdefault("generators", [{"type": "telea"}, {"type": "recording-test"}])
    overrides.setdefault("fakes", {"per_source": 2, "assignment": "each", "share_mask": True})
    return load_recipe(tiny_recipe(tmp_path / "r.yaml", src, **overrides))


# -- a plain per-sample build, the reference the stages must equal --------------------------------


def _reference_rows(recipe) -> dict[str, dict[str, Any]]:
    """Every row as the pre-stage pipeline made it: one sample at a time, nothing shared or batched."""
    sources = build_sources(recipe)
    maskers = [MASKERS.create(m.type, **m.params) for m in recipe.maskers]
    generators = [GENERATORS.create(g.type, **g.params) for g in recipe.generators]
    chains = [parse_chain(c) for c in recipe.perturbations.chains]
    level = recipe.output.png_compress_level
    rows = {}
    for s in make_plan(recipe, sources).samples:
        p = recipe.preprocess
        image = preprocess(load_rgb(sources[s.source_index].load(s.ref)), recipe.resolution, crop=p.crop,
                           upscale=p.upscale, interpolation=p.interpolation).array
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        config, masker = "{}", ""
        if s.generator_index is not None:
            m = choose(rng_for(recipe.seed, s.mask_key, "masker"), [x.weight for x in recipe.maskers])
            result = maskers[m](image, rng_for(recipe.seed, s.mask_key, "mask"))
            mask, masker = result.mask, recipe.maskers[m].label
            g = generators[s.generator_index]
            image = g.inpaint(image, mask, rng_for(recipe.seed, s.sample_id, "generator"))
            config = json.dumps({"type": recipe.generators[s.generator_index].type, **g.identity(),
                                 "masker": {"type": recipe.maskers[m].type, **maskers[m].identity(), **result.info}},
                                sort_keys=True, default=str)
        chain = []
        if s.chain is not None:
            image, mask = chains[s.chain].apply(image, mask, rng_for(recipe.seed, s.sample_id, "perturbation"))
            chain = chains[s.chain].identity()
        rows[s.sample_id] = {"image": encode_png(np.ascontiguousarray(image), level),
                             "mask": encode_png(np.ascontiguousarray(mask), level),
                             "generator_config": config, "masker": masker,
                             "perturbations": json.dumps(chain, sort_keys=True), "seed": s.seed, "split": s.split}
    return rows


def _built_rows(out: Path) -> dict[str, dict[str, Any]]:
    rows = {}
    for shard in sorted((out / "data").glob("*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            rows[row["id"]] = {"image": row["image"]["bytes"], "mask": row["mask"]["bytes"],
                               "generator_config": row["generator_config"], "masker": row["masker"],
                               "perturbations": row["perturbations"], "seed": row["seed"], "split": row["split"]}
    return rows


def test_stages_make_the_bytes_of_a_plain_per_sample_build(tmp_path, src):
    recipe = _recipe(tmp_path, src, perturbations={"probability": 1.0, "chains": ["jpeg(80)", "resize(0.5)|webp(70)"]})
    run_build(recipe, tmp_path / "out")
    built, reference = _built_rows(tmp_path / "out"), _reference_rows(recipe)
    assert built.keys() == reference.keys() and len(built) == 12 * 5
    assert built == reference


@pytest.mark.parametrize("workers", [1, 2])
def test_same_bytes_whatever_the_workers_and_where_generators_run(tmp_path, src, workers):
    """CPU workers 1 or 2; generators in the CPU workers, or in their own pools (inline, or 2 processes)."""
    recipe = _recipe(tmp_path, src, generators=[{"type": "telea"}, {"type": "ns"}])
    run_build(recipe, tmp_path / "ref")
    reference = folder_hashes(tmp_path / "ref")
    run_build(recipe, tmp_path / "w", workers=workers)
    run_build(recipe, tmp_path / "split", workers=workers, inpaint_devices=("cpu",), inpaint_workers=2)
    assert folder_hashes(tmp_path / "w") == reference == folder_hashes(tmp_path / "split")


@pytest.mark.parametrize("max_batch", [1, 3, 4, None])
def test_inpaint_batches_up_to_max_batch_and_bytes_do_not_depend_on_it(tmp_path, src, monkeypatch, max_batch):
    recipe = _recipe(tmp_path, src, output={"shard_size": 20})
    monkeypatch.setattr(RecordingGenerator, "max_batch", 1)
    run_build(recipe, tmp_path / "one")
    RecordingGenerator.batches.clear()
    monkeypatch.setattr(RecordingGenerator, "max_batch", max_batch)
    run_build(recipe, tmp_path / "batched")
    sizes = [size for _, size in RecordingGenerator.batches]
    fakes = sum(1 for s in make_plan(recipe, build_sources(recipe)).samples if s.generator_index == 1)
    assert sum(sizes) == fakes
    if max_batch is None:  # one batch per shard: all of its fakes of this generator
        assert len(sizes) == len(make_plan(recipe, build_sources(recipe)).shards)
    else:
        assert max(sizes) == max_batch and all(size <= max_batch for size in sizes)
    assert folder_hashes(tmp_path / "batched") == folder_hashes(tmp_path / "one")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_generator_with_its_own_device_is_built_once_there_and_fed_batches(tmp_path, src, workers):
    recipe = _recipe(tmp_path, src, output={"shard_size": 20})
    run_build(recipe, tmp_path / "local")
    assert RecordingGenerator.events == ["built", "cpu"]
    RecordingGenerator.events.clear()
    RecordingGenerator.batches.clear()
    # CPU stages in `workers` processes (or inline); the generator in one inline worker on "cuda:0"
    run_build(recipe, tmp_path / "device", workers=workers, inpaint_devices=("cuda:0",))
    assert RecordingGenerator.events == ["built", "cuda:0"]  # never built by a CPU worker
    assert {device for device, _ in RecordingGenerator.batches} == {"cuda:0"}
    assert max(size for _, size in RecordingGenerator.batches) == 3
    assert folder_hashes(tmp_path / "device") == folder_hashes(tmp_path / "local")


class _SkipsDarkImages(Generator):
    """Skips an image whose first pixel is dark; else brightens the mask. One call per batch."""

    max_batch = None
    calls: ClassVar[int] = 0

    def inpaint(self, image, mask, rng):
        if image[0, 0, 0] < 128:
            raise SkipSample("too dark")
        out = image.copy()
        out[mask > 0] = rng.integers(128, 255, dtype=np.uint8)
        return out


def test_a_skip_inside_a_batch_skips_only_its_sample():
    images = [np.full((8, 8, 3), v, np.uint8) for v in (200, 10, 220, 30)]
    masks = [np.full((8, 8), 255, np.uint8)] * 4
    ids = ["a", "b", "c", "d"]
    together = inpaint(_SkipsDarkImages(), 5, InpaintBatch(ids, images, masks))
    alone = [inpaint(_SkipsDarkImages(), 5, InpaintBatch([i], [im], [m]))[0] for i, im, m in zip(ids, images, masks)]
    assert together[1] == together[3] == "too dark"
    for a, b in zip(together, alone):
        assert (a == b) if isinstance(a, str) else np.array_equal(a, b)


def test_batches_cut_in_order():
    assert batches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches(list(range(7)), None) == [list(range(7))] and batches([], 2) == []


def test_each_source_image_is_decoded_once(tmp_path, src):
    """Planning keeps the pixels it decoded for the duplicate check; the samples reuse them."""
    recipe = _recipe(tmp_path, src, sources=[{"type": "counting-test", "path": str(src)}])
    run_build(recipe, tmp_path / "out")
    assert len(CountingSource.loads) == len(set(CountingSource.loads)) == 12


def test_pixels_beyond_the_memory_budget_are_decoded_again(tmp_path, src, monkeypatch):
    """Beyond the memory budget pixels are not kept: the samples decode the file again, same bytes."""
    import dolos_bench.builder.pipeline as pipeline

    recipe = _recipe(tmp_path, src, sources=[{"type": "counting-test", "path": str(src)}])
    run_build(recipe, tmp_path / "kept")
    CountingSource.loads.clear()
    monkeypatch.setattr(pipeline, "KEEP_BYTES", 0)
    run_build(recipe, tmp_path / "not-kept")
    assert len(CountingSource.loads) == 24
    assert folder_hashes(tmp_path / "not-kept") == folder_hashes(tmp_path / "kept")


@pytest.mark.parametrize("devices", [None, ("cuda:0",)], ids=["local", "own-device"])
def test_ctrl_c_keeps_finished_shards_with_every_stage_layout(tmp_path, src, devices):
    recipe = _recipe(tmp_path, src, generators=[{"type": "telea"}, {"type": "ns"}])
    run_build(recipe, tmp_path / "ref")
    calls = {"n": 0}

    def press_ctrl_c(done: int, total: int) -> None:
        calls["n"] += 1
        if calls["n"] == 13:  # the first call reports 0 done, then one per sample of 5-sample shards
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(BuildInterrupted) as info:
        run_build(recipe, out, workers=2, progress=press_ctrl_c, inpaint_devices=devices)
    assert info.value.kept == 2 and str(info.value) == f"interrupted: 2 of {info.value.total} shards kept"
    assert not (out / "manifest.json").exists() and len(list((out / "data").glob("*.parquet"))) == 2
    report = run_build(recipe, out, inpaint_devices=devices)
    assert report.resumed_shards == 2 and folder_hashes(out) == folder_hashes(tmp_path / "ref")


def test_rows_written_by_workers_equal_rows_through_the_features(tmp_path):
    """Workers write shards with the parent's schema, without `datasets`: same parquet bytes."""
    from dolos_bench.data.dataset_io import DatasetFolder, shard_schema

    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    rows = [{"id": f"x{i}", "image": {"bytes": png, "path": None}, "mask": {"bytes": png, "path": None},
             "label": i % 2, "source": "s", "source_id": f"{i}", "generator": "g", "generator_config": "{}",
             "masker": "", "parts": ["eyes"] * i, "perturbations": "[]", "seed": i, "split": "train"} for i in range(3)]
    folder = DatasetFolder(tmp_path)
    (tmp_path / ".dolos-build" / "tmp").mkdir(parents=True)
    plain = folder.stage_shard("a.parquet", rows)
    fast = folder.stage_shard("b.parquet", rows, shard_schema())
    assert plain.sha256 == fast.sha256 and plain.path.read_bytes() == fast.path.read_bytes()
    assert Image.open(io.BytesIO(pq.read_table(fast.path).to_pylist()[0]["image"]["bytes"])).size == (4, 4)


def test_a_cancelled_stage_worker_stops_at_its_next_sample(tmp_path, src):
    """Ctrl-C reaches the worker the parent runs in a thread this way: it stops within a sample."""
    recipe = _recipe(tmp_path, src, generators=[{"type": "telea"}])
    worker = CpuStages(StageSetup(recipe.model_dump_json(), str(tmp_path / "out"), (0,), 1 << 20), "cpu")
    name, split, members = make_plan(recipe, build_sources(recipe)).shards[0]
    job = ShardJob(name, split, members, frozenset(), True, None)
    worker.cancel()
    with pytest.raises(StageCancelled):
        worker(job)
