"""Runs for the after-training commands (eval, chat, merge, serve), each trained once per session.

* `full_run`: the model `llama-sft demo` writes (full fine-tuning, vicuna_v1.1), made by the demo
  itself at a tiny size (64 conversations, one epoch).
* `lora_run`: a LoRA adapter on a tiny base with max_position_embeddings 512 trained at
  model_max_length 1024, so RoPE scaling (linear x2) is in its config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from threads import single_thread  # noqa: F401  (re-exported for the tests here)


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    # Session fixtures are built before package ones, so each of them also uses single_thread().
    with single_thread():
        yield


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """`llama-sft demo`'s output folder (data/, base/, model/, demo_results.json), at a tiny size."""
    from llama_sft.demo import run_demo

    root = tmp_path_factory.mktemp("demo")
    with single_thread():
        run_demo(root, epochs=1, n_train=64)
    return root


@pytest.fixture(scope="session")
def full_run(demo_run) -> Path:
    return demo_run / "model"


@pytest.fixture(scope="session")
def demo_data(demo_run) -> dict:
    from llama_sft.demo import make_splits

    return {
        "train": demo_run / "data" / "train.jsonl",
        "heldout": demo_run / "data" / "heldout.jsonl",
        "examples": make_splits(seed=0, n_train=64)[1],
    }


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, demo_run) -> Path:
    """Through the real `llama-sft train` entry point, on the demo's data and tokenizer."""
    from llama_sft.cli.main import main
    from llama_sft.data.tokenizer import load_tokenizer
    from llama_sft.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("lora-run")
    save_tiny_model(
        root / "base",
        load_tokenizer(str(demo_run / "base")),
        hidden_size=64,
        layers=2,
        max_position_embeddings=512,
    )
    argv = [
        "train",
        "--model_name_or_path",
        str(root / "base"),
        "--data_path",
        str(demo_run / "data" / "train.jsonl"),
        "--output_dir",
        str(root / "adapter"),
        "--method",
        "lora",
        "--conv_template",
        "vicuna_v1.1",
        "--model_max_length",
        "1024",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "2e-2",
        "--lora_dropout",
        "0.0",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--data_cache_dir",
        str(root / "cache"),
        "--seed",
        "0",
    ]
    with single_thread():
        assert main(argv) == 0
    record = json.loads((root / "adapter" / "run_record.json").read_text())
    assert record["rope_parameters"]["factor"] == 2.0 and record["method"] == "lora"
    return root / "adapter"


@pytest.fixture(scope="session")
def merged_lora(tmp_path_factory, lora_run) -> Path:
    from llama_sft.cli.main import main

    out = tmp_path_factory.mktemp("merged") / "model"
    with single_thread():
        assert main(["merge", str(lora_run), "--out", str(out)]) == 0
    return out
