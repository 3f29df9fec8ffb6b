"""Dependencies point one way: a test over the import graph of dolos_bench (function-level imports too).

Layers, highest first; a module may import from its own top-level part or from a lower layer only:

    cli  ->  train  ->  builder | eval | report | publish  ->  engine | perturbations | data | results
         ->  config | registry | seeding | stage | metric_specs  ->  utils  ->  errors
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dolos_bench"
LAYERS = {
    "cli": 4,
    "train": 3,  # training validates with eval's metrics and yields eval Localizers
    "builder": 2, "eval": 2, "report": 2, "publish": 2, "convert": 2,
    "engine": 1, "perturbations": 1, "data": 1, "results": 1, "weights": 1,
    "config": 0, "registry": 0, "seeding": 0, "stage": 0, "metric_specs": 0,
    "utils": -1,
    "errors": -2,
}


def part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "dolos_bench" else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    here = list(rel.parts[:-1] if rel.name != "__init__" else rel.parts[:-1])
    if rel.name == "__init__":
        here = list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here[: len(here) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
    return found


def test_every_part_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert parts - set(LAYERS) == set(), "give each new top-level module or package a layer here"


def test_imports_point_down() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mine = part_of(module)
        if mine is None or mine not in LAYERS:
            continue
        for line, target in imports_of(path):
            theirs = part_of(target)
            if theirs is None or theirs == mine or theirs not in LAYERS:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not wrong, "imports that point sideways or up:\n" + "\n".join(wrong)
