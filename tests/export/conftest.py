"""Models to export: tiny LLaMAs on LLaMA-2's and LLaMA-3's real vocabularies, and SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest
from ci import unavailable


def model_dir_with_template(root: Path, tokenizer, template_name: str, **config) -> Path:
    """A tiny random LLaMA saved with a llama-sft template, as a full fine-tuning run leaves it."""
    from llama_sft.data.templates import BUILTIN
    from llama_sft.tiny import save_tiny_model
    from llama_sft.train.outputs import save_template

    save_tiny_model(root, tokenizer, **config)
    save_template(BUILTIN[template_name], root)
    return root


def _real_vocab(kind: str):
    from vocab import VocabUnavailable, load_llama_tokenizer

    try:
        return load_llama_tokenizer(kind)
    except VocabUnavailable as exc:
        unavailable(f"LLaMA vocabularies unavailable: {exc}")


@pytest.fixture(scope="session")
def llama2_model_dir(tmp_path_factory) -> Path:
    """LLaMA-2's 32k SentencePiece vocabulary, llama-2 template, 2 layers of width 64, GQA 4/2."""
    return model_dir_with_template(tmp_path_factory.mktemp("llama2-vocab"), _real_vocab("spm"), "llama-2")


@pytest.fixture(scope="session")
def llama3_model_dir(tmp_path_factory) -> Path:
    """LLaMA-3's 128k BPE vocabulary, llama-3 template, RoPE base 500000 as LLaMA-3 has it."""
    from transformers import AutoConfig

    path = model_dir_with_template(
        tmp_path_factory.mktemp("llama3-vocab"), _real_vocab("bpe"), "llama-3", hidden_size=32
    )
    config = AutoConfig.from_pretrained(path)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    config.save_pretrained(path)
    return path
