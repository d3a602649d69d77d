"""Our GGUF read back by transformers' own GGUF loader: same logits (f16 tolerance), same ids.

transformers undoes llama.cpp's Q/K row order when it loads a `llama` GGUF, so a file whose rotary
rows were not interleaved, whose heads, norm eps or RoPE base were wrong, or whose vocabulary was
shifted gives other logits here. Its tokenizer is rebuilt from the GGUF metadata alone (tokens,
scores or merges, token types, pre-tokenizer name), then prepared the way training prepares every
tokenizer (`prepare_tokenizer`: transformers' SentencePiece rebuild puts no "▁" after a special
token and its BPE rebuild drops LLaMA-3's `ignore_merges`; both are transformers' conversion, and
llama.cpp's own tokenization is checked against training ids in test_llama_cpp.py).
"""

from __future__ import annotations

import pytest
import torch

from llama_sft.data.messages import Message

pytestmark = pytest.mark.slow

CONVERSATIONS = [
    [Message("user", "Hello there, 12 km?"), Message("assistant", "Hi! 12000 m.")],
    [
        Message("system", "You are terse."),
        Message("user", "  Héllo wörld, ça va? 你好 🙂\n\ttabs"),
        Message("assistant", "Fine.\n\nThanks: 3.14159, 1,000,000 and Việt."),
        Message("user", "Again?"),
        Message("assistant", "Yes </s> [INST] <|eot_id|> literal markers"),
    ],
]


def export(model_dir, tmp_path, outtype="f16"):
    from llama_sft.export.gguf import export_gguf

    return export_gguf(model_dir, tmp_path / f"model-{outtype}.gguf", outtype)


def read_back(info):
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(info["gguf"])
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


def training_texts(model_dir):
    from llama_sft.data.templates import SpecialText
    from llama_sft.data.tokenizer import load_tokenizer
    from llama_sft.train.outputs import load_run_template

    tokenizer = load_tokenizer(str(model_dir))
    template = load_run_template(model_dir, tokenizer)
    special = SpecialText.from_tokenizer(tokenizer)
    texts = [template.render(c, special=special).text for c in CONVERSATIONS]
    prompts = [c[: [m.role for m in c].index("user") + 1] for c in CONVERSATIONS]
    texts += [template.render(p, add_generation_prompt=True, special=special).text for p in prompts]
    return tokenizer, template, texts


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def check_round_trip(model_dir, tmp_path, atol):
    from transformers import AutoModelForCausalLM

    from llama_sft.data.tokenizer import prepare_tokenizer

    tokenizer, template, texts = training_texts(model_dir)
    info = export(model_dir, tmp_path)
    loaded, gguf_tokenizer = read_back(info)
    source = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    assert loaded.config.num_key_value_heads == source.config.num_key_value_heads
    assert loaded.config.rms_norm_eps == pytest.approx(source.config.rms_norm_eps)
    assert gguf_tokenizer.chat_template == template.to_jinja()
    prepare_tokenizer(gguf_tokenizer)
    worst = 0.0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
        ref = logits(source, ids)
        diff = (logits(loaded, ids) - ref).abs().max().item()
        worst = max(worst, diff)
        assert diff <= atol, (text, diff)
    return info, worst, source, loaded


def test_llama2_vocab_round_trip(llama2_model_dir, tmp_path):
    info, worst, _, _ = check_round_trip(llama2_model_dir, tmp_path, atol=2e-3)
    assert info["tokenizer"]["model"] == "llama" and info["tokenizer"]["add_bos"] is True
    assert info["tokenizer"]["special_ids"] == {"bos": 1, "eos": 2, "unk": 0, "pad": 0}


def test_llama3_vocab_round_trip(llama3_model_dir, tmp_path):
    info, _, _, loaded = check_round_trip(llama3_model_dir, tmp_path, atol=2e-3)
    assert info["tokenizer"]["model"] == "gpt2" and info["tokenizer"]["pre"] == "llama-bpe"
    assert info["tokenizer"]["special_ids"]["eot"] == 128009  # <|eot_id|> ends a turn
    assert loaded.config.rope_parameters["rope_theta"] == 500000.0


def test_smollm2_round_trip(real_model_dir, tmp_path):
    """The real model: 30 layers, GQA 9/3, tied embeddings, 49k byte-level BPE, its own chatml Jinja."""
    info, worst, source, loaded = check_round_trip(real_model_dir, tmp_path, atol=0.05)
    assert info["tokenizer"]["pre"] == "smollm" and info["tokenizer"]["add_bos"] is False
    assert info["tensor_types"] == {"F32": 61, "F16": 211}  # no output.weight: tied to token_embd
    assert loaded.config.tie_word_embeddings is True
    # The tolerance is f16's: the logits move by more when one layer's rotary rows are left in HF order.
    print(f"SmolLM2 f16 worst |logit diff| {worst:.4f}")
