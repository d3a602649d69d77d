"""Model specs: presets, config files, directories, hub ids without network."""

from __future__ import annotations

import json

import pytest

from llama_sft.plan.hardware import parse_memory
from llama_sft.plan.shapes import ShapeError, load_shape


def test_config_json_with_gqa_and_tied_embeddings(tmp_path):
    cfg = {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shape = load_shape(str(tmp_path))
    assert shape.kv_dim == 16 and shape.lm_head_params == 0
    assert shape.total_params == 100 * 64 + 2 * (64 * 64 * 2 + 64 * 16 * 2 + 3 * 64 * 96 + 128) + 64


def test_bad_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ShapeError, match="not a preset"):
        load_shape("llama9-1t")
    with pytest.raises(ShapeError, match="no config.json"):
        load_shape(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ShapeError, match="intermediate_size"):
        load_shape(str(tmp_path / "config.json"))
    with pytest.raises(ShapeError, match="HF_HUB_OFFLINE"):
        load_shape("nobody-here/not-cached-model")
    with pytest.raises(ShapeError, match="unknown LoRA target"):
        load_shape("llama2-7b").lora_params(8, ("q_proj", "wq"))


@pytest.mark.parametrize(
    "text,value",
    [
        ("80GiB", 80 * 1024**3),
        ("80GB", 80e9),
        ("81920MiB", 80 * 1024**3),
        ("24", 24 * 1024**3),
        ("1.5TiB", 1.5 * 1024**4),
    ],
)
def test_parse_memory(text, value):
    assert parse_memory(text) == value


def test_parse_memory_rejects_nonsense():
    with pytest.raises(ValueError, match="80GiB"):
        parse_memory("lots")
