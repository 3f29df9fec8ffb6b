"""The prepared GPU check (benchmarks/gpu): its no-build import of the checkout, and its script's syntax."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_link_checkout_gives_the_entry_points_of_pyproject(tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "link_checkout.py"), str(site)], check=True,
                   capture_output=True)
    probe = ("from importlib.metadata import entry_points, version; import importlib.util as u;"
             "print(version('dolos-bench')); print(','.join(sorted(e.name for e in entry_points(group='dolos_bench.localizers'))));"
             "print(u.find_spec('dolos_baselines.focal.clustering').origin)")
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = [{str(site)!r}, {str(ROOT)!r}]; {probe}"],
                         check=True, capture_output=True, text=True, cwd=tmp_path).stdout.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert out[0] == project["version"]
    assert out[1].split(",") == sorted(project["entry-points"]["dolos_bench.localizers"])
    assert out[2].startswith(str(site / "dolos_baselines"))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "link_checkout.py"), str(site)], check=True,
                   capture_output=True)  # a second run replaces the link and files, no error


def test_the_scripts_parse() -> None:
    for script in ("run.sh", "fetch-wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu" / script)], check=True)
