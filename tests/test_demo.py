"""`llama-sft demo --tiny`, the offline demo: a tiny random model must really learn held-out skills.

The real-model demo (the default) is tested in tests/model/test_real_model.py."""

from __future__ import annotations

import json

import pytest

from llama_sft.cli.main import main

pytestmark = pytest.mark.slow


def test_tiny_demo_learns_held_out_prompts(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--tiny", "--output_dir", str(out)]) == 0
    result = json.loads((out / "demo_results.json").read_text())
    assert result["before"]["exact_match"] <= 0.05
    assert result["after"]["exact_match"] >= 0.6, result["after"]
    assert result["after"]["eval_loss"] < result["before"]["eval_loss"] / 5
    assert result["chat"]["assistant"]
    report = (out / "model" / "report.md").read_text()
    assert "Demo: before vs after" in report and "exact match" in report
    assert {"loss.png", "report.md", "run_record.json"} <= {p.name for p in (out / "model").iterdir()}
    assert "before vs after" in capsys.readouterr().out
