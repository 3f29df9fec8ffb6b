"""A catalogue checkpoint that a generator cannot load as it is names the `bench convert` command that makes its folder.

``ldm-inpainting`` (the CompVis ``last.ckpt``) and ``p2-celebahq`` / ``p2-ffhq`` (guided-diffusion
``.pt`` files) are single files; ``ldm-inpaint``, ``repaint`` and ``ddpm-full`` load a converted
folder. Naming the catalogue entry as ``model:`` stops the build with a line that says what to run,
and ``bench weights ls`` says it beside the entry.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from dolos_bench.cli import main
from dolos_bench.weights import WeightsError, check_stage_weights
from dolos_bench.weights.catalogue import BUILTIN

CONVERTS = {"ldm-inpainting": "compvis-ldm", "p2-celebahq": "guided-diffusion", "p2-ffhq": "guided-diffusion"}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOLOS_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DOLOS_BENCH_CATALOGUE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("entry, generator", [("ldm-inpainting", "ldm-inpaint"), ("p2-celebahq", "repaint"),
                                              ("p2-ffhq", "ddpm-full")])
def test_a_checkpoint_named_as_model_says_how_to_convert_it(entry: str, generator: str) -> None:
    spec = SimpleNamespace(type=generator, params={"model": entry})
    with pytest.raises(WeightsError) as caught:
        check_stage_weights({"generators": [spec]})
    message = str(caught.value)
    assert f"generators[0] {generator}: {entry} is a single file" in message
    assert f"convert it first: bench convert {CONVERTS[entry]} <ckpt> <out>" in message


def test_the_catalogue_marks_exactly_the_checkpoints_that_need_converting() -> None:
    marked = {e.name: e.convert for e in BUILTIN if e.convert}
    assert marked == CONVERTS
    for entry in BUILTIN:
        if entry.convert:
            assert f"bench convert {entry.convert}" in entry.note and "converted folder" in entry.note


def test_weights_ls_prints_the_convert_command_under_those_entries() -> None:
    result = CliRunner().invoke(main, ["weights", "ls", "--no-check"])
    assert result.exit_code == 0, result.output
    blocks: dict[str, list[str]] = {}
    for line in result.output.splitlines()[1:]:  # after "cache: ..."
        if not line.startswith(" "):
            blocks[line.split()[0]] = []
        else:
            blocks[next(reversed(blocks))].append(line.strip())
    for name, lines in blocks.items():
        hint = [line for line in lines if line.startswith("convert it first:")]
        if name in CONVERTS:
            assert hint == [f"convert it first: bench convert {CONVERTS[name]} <ckpt> <out>"], lines
        else:
            assert hint == [], (name, lines)
