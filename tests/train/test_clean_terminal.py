"""A run prints what the user must act on, not library deprecation noise (transformers 5.24 renamed
gradient_checkpointing* to activation_checkpointing*; FastChat's old flag names stay aliases)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from llama_sft.config import load_yaml, parse_run_config


@pytest.mark.parametrize(
    "flag", ["--gradient_checkpointing", "--gradient_checkpoint", "--activation_checkpointing"]
)
def test_checkpointing_flags_map_to_the_new_name_without_warning(flag):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        run = parse_run_config(["--data_path", "x.json", flag, "True"])
    assert run.training.activation_checkpointing is True


def test_old_yaml_key_is_an_alias(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  gradient_checkpointing: true\n")
    assert load_yaml(config) == {"activation_checkpointing": True}


@pytest.mark.slow
def test_short_run_prints_no_future_warning(tmp_path, tiny_model_dir, sharegpt_file):
    cmd = [sys.executable, "-m", "llama_sft.cli.main", "train", "--model_name_or_path", str(tiny_model_dir),
           "--data_path", str(sharegpt_file), "--output_dir", str(tmp_path / "run"), "--max_steps", "1",
           "--report_to", "none", "--save_strategy", "no", "--gradient_checkpointing", "True",
           "--model_max_length", "64", "--disable_tqdm", "True"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    for noise in ("FutureWarning", "DeprecationWarning", "is deprecated", "Failed to load CPU gemm_4bit"):
        assert noise not in out, out
    assert "saved to" in out
