"""Results record what the localizer ran with, defaults included (info.model_identity), beside the
options the user passed (model.options, part of the run key)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dolos_bench.cli import main
from helpers import build_tiny


def test_eval_and_stress_record_the_localizers_effective_options(tmp_path: Path) -> None:
    data = build_tiny(tmp_path, images=4)
    runner = CliRunner()
    out = tmp_path / "ela.json"
    result = runner.invoke(main, ["eval", "ela", "--data", str(data), "--split", "train", "--out", str(out), "--quiet", "--bootstrap", "0",
                                  "--model-arg", "quality=80"])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert results["model"]["options"] == {"quality": 80}  # what was asked
    ran = results["info"]["model_identity"]["options"]
    assert ran["quality"] == 80 and ran["reduce"] == "max" and ran["sigma"] == 2.0  # what ran, defaults included
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: tiny\nseed: 0\nperturbations:\n  - name: jpeg\n    chain: jpeg(quality={severity})\n    severities: [70]\n")
    out = tmp_path / "ela-stress.json"
    result = runner.invoke(main, ["stress", "ela", "--data", str(data), "--split", "train", "--suite", str(suite), "--out", str(out),
                                  "--quiet", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["info"]["model_identity"]["options"]["quality"] == 90
