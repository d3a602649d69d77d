"""Every config file we ship loads and validates (YAML runs, DeepSpeed JSONs, accelerate YAMLs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llama_sft.config import load_yaml, parse_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
SEED_TABLE = {  # the seed's guide: model, rank, ZeRO stage, QLoRA, per-GPU batch
    "llama2-7b-qlora.yaml": ("Llama-2-7b", 8, "zero2", "qlora", 16),
    "llama2-13b-qlora-zero2.yaml": ("Llama-2-13b", 16, "zero2", "qlora", 8),
    "llama2-70b-lora-zero3.yaml": ("Llama-2-70b", 64, "zero3", "lora", 2),
}


def test_we_ship_the_seed_rows_and_llama3():
    assert {p.name for p in RUN_CONFIGS} >= {*SEED_TABLE, "llama3-8b-lora.yaml"}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_validates(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)
    run = parse_run_config(["--data_path", "data.json"], config_file=str(path))
    run.validate(world_size=1, max_position_embeddings=4096)
    if path.name in SEED_TABLE:
        model, rank, stage, method, batch = SEED_TABLE[path.name]
        assert model in run.model.model_name_or_path
        assert run.lora.lora_r == rank and run.lora.method == method
        assert stage in str(run.training.deepspeed)
        t = run.training
        assert t.per_device_train_batch_size * t.gradient_accumulation_steps == batch


@pytest.mark.parametrize("path", sorted((CONFIGS / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_json_has_auto_values_and_both_precisions(path):
    config = json.loads(path.read_text())
    assert config["fp16"]["enabled"] == "auto" and config["bf16"]["enabled"] == "auto"
    assert config["train_micro_batch_size_per_gpu"] == "auto"
    if config["zero_optimization"]["stage"] == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED", "MULTI_CPU", "NO"}


def test_yaml_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  lora_rank: 8\n")
    with pytest.raises(ValueError, match="did you mean 'lora_r'"):
        load_yaml(bad)
