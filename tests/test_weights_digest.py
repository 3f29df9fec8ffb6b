"""weights_digest: a model's provenance digest, each file's sha256 remembered by path, size and mtime."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dolos_bench.utils.files import sha256_path
from dolos_bench.weights.cache import CACHE_ENV, weights_digest


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "sd" / "unet"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"layers": 2}')
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01" * 4096)
    return tmp_path / "sd"


def test_the_same_digest_as_hashing_every_file(model: Path) -> None:
    assert weights_digest(model) == sha256_path(model)
    file = model / "unet" / "config.json"
    assert weights_digest(file) == sha256_path(file)


def test_a_file_is_read_once_until_it_changes(model: Path) -> None:
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    first = weights_digest(model)
    stat = weights.stat()
    weights.write_bytes(b"\x02" * 4096)  # same size; put the old mtime back
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights_digest(model) == first  # remembered: not read again
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert weights_digest(model) == sha256_path(model) != first  # a new mtime: hashed again
