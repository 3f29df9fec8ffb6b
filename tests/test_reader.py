"""Reading a split for scoring: exact bytes, verified shards, batches across shard edges, no stale caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dolos_bench.cli import main
from dolos_bench.data.reader import DatasetReadError, DatasetsSplit, ParquetSplit, open_split, read_rows

from helpers import build_tiny


def _build(root: Path, name: str, **overrides) -> Path:
    (root / name).mkdir()
    return build_tiny(root / name, "ds", **overrides)  # same folder name: what the cache got wrong


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("reader"), "a")


@pytest.mark.parametrize("batch_size", [1, 2, 4, 5, 7, 100])
@pytest.mark.parametrize("limit", [None, 1, 6, 11, 1000])
def test_batches_cross_shard_edges_in_order(built: Path, batch_size: int, limit: int | None) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    files = [built / s["file"] for s in manifest["shards"] if s["split"] == "train"]
    assert len(files) > 1  # shard_size 5: the split spans several shards
    every = pa.concat_tables([pq.read_table(f) for f in files]).to_pydict()
    split = open_split(built, "train", limit)
    assert isinstance(split, ParquetSplit)
    n = len(every["id"]) if limit is None else min(limit, len(every["id"]))
    assert len(split) == n and split.column("id") == every["id"][:n]
    batches = list(split.batches(batch_size))
    assert all(len(b["id"]) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]["id"]) <= batch_size
    joined = {k: [v for b in batches for v in b[k]] for k in batches[0]}
    assert joined == {k: v[:n] for k, v in every.items()}
    assert set(joined["image"][0]) >= {"bytes"}  # undecoded, like datasets.Image(decode=False)


def test_tampered_missing_and_unknown(tmp_path: Path, built: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    with pytest.raises(DatasetReadError, match="no split 'valid'; it has: test, train"):
        open_split(copy, "valid")
    shard = sorted((copy / "data").glob("train-*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DatasetReadError, match=rf"shard data/{shard.name} was modified after the build"):
        open_split(copy, "train")
    assert len(open_split(copy, "test")) > 0  # other splits stay readable
    result = CliRunner().invoke(main, ["eval", "ela", "--data", str(copy), "--split", "train",
                                       "--out", str(tmp_path / "r.json"), "--quiet"])
    assert result.exit_code == 2 and "modified after the build" in result.output
    assert not (tmp_path / "r.json").exists()
    shard.unlink()
    with pytest.raises(DatasetReadError, match="is missing"):
        open_split(copy, "train")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    with pytest.raises(DatasetReadError, match="incomplete"):
        open_split(copy, "test")
    (copy / "manifest.json").write_text('{"complete": tr')
    with pytest.raises(DatasetReadError, match="unreadable manifest"):
        open_split(copy, "test")


def test_same_named_folders_never_share_a_cache(tmp_path: Path) -> None:
    """Regression: a README `configs` block made datasets serve one `ds` folder from another's cache."""
    plain = _build(tmp_path, "one", perturbations={"probability": 0.0, "chains": []})
    perturbed = _build(tmp_path, "two", perturbations={"probability": 1.0, "chains": ["jpeg(50)"]})
    assert plain.name == perturbed.name == "ds"
    assert {r["perturbations"] for r in read_rows(plain, "train")} == {"[]"}
    assert {r["perturbations"] for r in read_rows(perturbed, "train")} == {'[{"name": "jpeg", "quality": 50}]'}
    # The card's metadata leaves split detection to the shard names, so plain `datasets` is safe too.
    assert "configs" not in (plain / "README.md").read_text().split("---")[1]
    for folder, expected in ((plain, "[]"), (perturbed, '[{"name": "jpeg", "quality": 50}]')):
        ds = datasets.load_dataset(str(folder), split="train")
        assert set(ds["perturbations"]) == {expected}


def test_folders_without_a_manifest_go_through_datasets_uncached(tmp_path: Path) -> None:
    folder = tmp_path / "other"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"]}), folder / "data" / "test-00000-of-00001.parquet")
    split = open_split(folder, "test")
    assert isinstance(split, DatasetsSplit) and split.column("id") == ["a", "b"]
    pq.write_table(pa.table({"id": ["c", "d", "e"]}), folder / "data" / "test-00000-of-00001.parquet")
    assert open_split(folder, "test").column("id") == ["c", "d", "e"]  # re-read, not cached
    assert [b["id"] for b in open_split(folder, "test", limit=2).batches(1)] == [["c"], ["d"]]
    assert open_split(folder, "test").select(1, 3).column("id") == ["d", "e"]
    with pytest.raises(ValueError, match="outside a split"):
        open_split(folder, "test").select(2, 4)
    with pytest.raises(DatasetReadError, match="cannot load split 'train'"):
        open_split(folder, "train")
    with pytest.raises(ValueError, match="batch_size"):
        next(ParquetSplit([folder / "data" / "test-00000-of-00001.parquet"]).batches(0))


@pytest.mark.parametrize(("start", "stop"), [(0, 0), (0, 3), (3, 5), (4, 11), (5, 10), (9, 15), (14, 15)])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_row_ranges_match_slices_of_the_whole_split(built: Path, start: int, stop: int, batch_size: int) -> None:
    whole = open_split(built, "train")
    ids = whole.column("id")
    assert len(ids) == 15
    part = whole.select(start, stop)
    assert len(part) == stop - start and part.column("id") == ids[start:stop]
    assert [i for b in part.batches(batch_size) for i in b["id"]] == ids[start:stop]
    inner = part.select(min(1, len(part)), len(part))  # ranges compose
    assert inner.column("id") == ids[start:stop][min(1, stop - start):]
    with pytest.raises(ValueError, match="outside a split"):
        whole.select(start, 16)
