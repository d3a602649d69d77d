"""RoPE scaling: dynamic NTK serves the context it was trained for, and scaling on a model that
already scales RoPE (LLaMA-3.1's llama3, factor 8) composes with it or is refused, never replaced."""

from __future__ import annotations

import json

import pytest
from transformers import LlamaConfig

from llama_sft.cli.main import main
from llama_sft.config import ConfigError
from llama_sft.model.rope import apply_rope_scaling, scaled_context

LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0, "original_max_position_embeddings": 64,
           "low_freq_factor": 1.0, "high_freq_factor": 4.0}  # fmt: skip


def test_dynamic_keeps_its_base_length_but_serves_the_trained_context(tiny_tokenizer):
    from llama_sft.data.messages import Message
    from llama_sft.data.templates import get_template
    from llama_sft.generation import ReplyStream, SamplingParams
    from llama_sft.tiny import build_tiny_model

    model = build_tiny_model(tiny_tokenizer, max_position_embeddings=64)
    apply_rope_scaling(model.config, "dynamic", 2.0, 128)
    assert model.config.max_position_embeddings == 64  # dynamic NTK measures its stretch against it
    assert scaled_context(model.config) == 128
    long_prompt = [Message("user", " ".join(["km"] * 40))]
    stream = ReplyStream(
        model, tiny_tokenizer, get_template("vicuna_v1.1"), long_prompt, SamplingParams(max_new_tokens=2)
    )
    assert 64 < stream.prompt_tokens < 128  # refused before: "the model's context is 64"
    assert "".join(stream) is not None


def test_eval_context_follows_dynamic_scaling(tiny_tokenizer):
    from llama_sft.evaluate.run import trained_length
    from llama_sft.tiny import build_tiny_model

    model = build_tiny_model(tiny_tokenizer, max_position_embeddings=64)
    apply_rope_scaling(model.config, "dynamic", 2.0, 128)
    assert trained_length({"model_max_length": 128}, model) == 128


def test_same_kind_composes_over_the_original_length():
    config = LlamaConfig(max_position_embeddings=512, rope_parameters=dict(LLAMA31))
    params = apply_rope_scaling(config, "llama3", 2.0, 1024)
    assert params["factor"] == 16.0 and params["original_max_position_embeddings"] == 64
    assert config.max_position_embeddings == 1024


def test_other_kind_on_existing_scaling_is_refused():
    config = LlamaConfig(max_position_embeddings=512, rope_parameters=dict(LLAMA31))
    with pytest.raises(ConfigError, match=r"already scales RoPE \(llama3, factor 8.0 over 64 positions\)"):
        apply_rope_scaling(config, "linear", 2.0, 1024)
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["factor"] == 8.0


@pytest.fixture
def llama31_like(tmp_path, tiny_tokenizer):
    from llama_sft.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "llama31", tiny_tokenizer, max_position_embeddings=64)
    config = json.loads((path / "config.json").read_text())
    config["rope_parameters"] = dict(LLAMA31, original_max_position_embeddings=8)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_train_refuses_other_kind_before_loading_weights(llama31_like, sharegpt_file, tmp_path, capsys):
    code = main(["train", "--model_name_or_path", str(llama31_like), "--data_path", str(sharegpt_file),
                 "--model_max_length", "128", "--rope_scaling_type", "linear", "--output_dir", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "already scales RoPE (llama3" in err and "Traceback" not in err


@pytest.mark.slow
def test_train_longer_extends_the_models_own_scaling(llama31_like, sharegpt_file, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--model_name_or_path", str(llama31_like), "--data_path", str(sharegpt_file),
                 "--model_max_length", "128", "--output_dir", str(out), "--max_steps", "1", "--save_strategy", "no",
                 "--report_to", "none", "--method", "full"])  # fmt: skip
    assert code == 0
    rope = json.loads((out / "run_record.json").read_text())["rope_parameters"]
    # default factor ceil(128 / 64) = 2, composed with the model's 8 over its original 8 positions
    assert (
        rope["rope_type"] == "llama3"
        and rope["factor"] == 16.0
        and rope["original_max_position_embeddings"] == 8
    )
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 128
