"""Make this checkout importable from SITE without building it: what `pip install -e .` would give.

The GPU machine's setuptools may be older than the one pyproject.toml asks for, and nothing can be
fetched there, so instead of building the project this writes a minimal ``dolos_bench-*.dist-info``
(its version and entry points, read from pyproject.toml: the registry finds the baselines through
them) and links ``dolos_baselines`` to ``baselines/`` (pyproject's package-dir). Put SITE and the
checkout on PYTHONPATH afterwards.

    python benchmarks/gpu/link_checkout.py /tmp/site
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def main(site: Path, checkout: Path) -> None:
    project = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]
    info = site / f"dolos_bench-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    text = "".join(f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items()) + "\n"
                   for group, entries in groups.items())
    (info / "entry_points.txt").write_text(text)
    link = site / "dolos_baselines"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to((checkout / "baselines").resolve(), target_is_directory=True)
    print(f"{checkout} importable from {site} (dolos_bench {project['version']}, {sum(map(len, groups.values()))} entry points)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[2])
