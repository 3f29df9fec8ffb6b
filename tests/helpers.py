"""Small data that the tests make themselves: textured images, odd image files, tiny recipes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def textured_image(seed: int, size: tuple[int, int] = (300, 280)) -> np.ndarray:
    """A smooth random RGB image (blurred noise + gradient): inpainting changes it visibly."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    coarse = rng.integers(0, 256, size=(h // 20 + 2, w // 20 + 2, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
    image += rng.integers(-8, 9, size=image.shape).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, n: int = 12, size: tuple[int, int] = (300, 280)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(textured_image(i, size)).save(sub / f"img{i:03d}.png")
    return root


def tiny_recipe(path: Path, source_dir: Path, **overrides) -> Path:
    """A fast recipe (no dlib): folder source, strokes + boxes, telea + ns, perturbations."""
    recipe = {
        "name": "tiny",
        "seed": 7,
        "resolution": 64,
        "sources": [{"type": "folder", "path": str(source_dir)}],
        "fakes": {"per_source": 1, "assignment": "each"},
        "maskers": [{"type": "strokes"}, {"type": "boxes", "weight": 0.5}],
        "generators": [{"type": "telea"}, {"type": "ns"}],
        "perturbations": {"probability": 0.5, "chains": ["jpeg(80)", "resize(0.5)|webp(70)", "noise(3)"]},
        "splits": {"train": 0.5, "validation": 0.25, "test": 0.25},
        "output": {"shard_size": 5},
    }
    for key, value in overrides.items():
        recipe[key] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def build_tiny(root: Path, name: str = "ds", *, images: int = 6, **overrides) -> Path:
    """Build a tiny_recipe dataset into ``root/name`` with the `bench build` command; return the folder."""
    from click.testing import CliRunner

    from dolos_bench.cli import main

    recipe = tiny_recipe(root / f"{name}.yaml", make_image_folder(root / "src", n=images), **overrides)
    out = root / name
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def results_numbers(path: Path) -> dict:
    """A results file without what legitimately differs between equal runs (times, command, resume counts)."""
    import json

    data = json.loads(path.read_text())
    data.pop("provenance")
    for key in ("resumed_chunks", "resumed_points"):
        data["info"].pop(key, None)
    return data


def folder_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file a build leaves (data, card, manifest)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
