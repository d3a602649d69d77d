"""End to end through the real CLI: the files a run writes, and that the loss fell."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from llama_sft.cli.main import main
from llama_sft.data.messages import Message
from llama_sft.data.templates import SpecialText, get_template

pytestmark = pytest.mark.slow

COMMON = [
    "--max_steps",
    "12",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "1",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--model_max_length",
    "128",
    "--seed",
    "0",
]


def losses(run_dir):
    return [
        m["loss"]
        for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in m
    ]


def test_lora_run_writes_expected_files_and_learns(tmp_path, tiny_model_dir, sharegpt_file):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--data_path",
            str(sharegpt_file),
            "--output_dir",
            str(out),
            "--method",
            "lora",
            "--lora_r",
            "8",
            "--learning_rate",
            "1e-2",
            "--eval_ratio",
            "0.1",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "6",
            *COMMON,
        ]
    )
    assert code == 0
    expected = {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "llama_sft_template.yaml",
        "run_record.json",
        "config.resolved.yaml",
        "metrics.jsonl",
        "loss.png",
        "report.md",
        "base_model_config.json",
    }
    assert expected <= {p.name for p in out.iterdir()}
    trace = losses(out)
    assert trace[-1] < trace[0] - 0.4, trace  # LoRA on a random base learns slowly but steadily
    evals = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in m]
    assert evals and all("eval_perplexity" in m for m in evals)
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k for k in adapter) and all(
        t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k
    )
    record = json.loads((out / "run_record.json").read_text())
    assert record["template"] == "vicuna_v1.1" and record["method"] == "lora"
    assert record["params"]["trainable_params"] < record["params"]["total_params"]
    assert set(record["versions"]) >= {"torch", "transformers", "peft"}
    assert "train loss" in (out / "report.md").read_text()


def test_saved_tokenizer_renders_the_training_template(tmp_path, tiny_model_dir, sharegpt_file):
    from llama_sft.data.tokenizer import load_tokenizer

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model_name_or_path",
                str(tiny_model_dir),
                "--data_path",
                str(sharegpt_file),
                "--output_dir",
                str(out),
                "--method",
                "full",
                "--conv_template",
                "chatml",
                "--max_steps",
                "1",
                "--report_to",
                "none",
                "--save_strategy",
                "no",
            ]
        )
        == 0
    )
    tokenizer = load_tokenizer(str(out))
    messages = [
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
        Message("user", "2+2?"),
    ]
    expected = get_template("chatml").render(
        messages, add_generation_prompt=True, special=SpecialText.from_tokenizer(tokenizer)
    )
    got = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], tokenize=False, add_generation_prompt=True
    )
    assert got == expected.text
    # A server loads the run dir with plain AutoTokenizer: it must produce the training ids.
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(out))
    assert (
        plain(got, add_special_tokens=False)["input_ids"]
        == tokenizer(got, add_special_tokens=False)["input_ids"]
    )
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()


def test_full_finetune_learns(tmp_path, tiny_model_dir, sharegpt_file):
    out = tmp_path / "full"
    assert (
        main(
            [
                "train",
                "--model_name_or_path",
                str(tiny_model_dir),
                "--data_path",
                str(sharegpt_file),
                "--output_dir",
                str(out),
                "--method",
                "full",
                "--learning_rate",
                "3e-3",
                *COMMON,
            ]
        )
        == 0
    )
    trace = losses(out)
    assert trace[-1] < trace[0] * 0.7, trace


def test_packed_training_learns_and_packs(tmp_path, tiny_model_dir, sharegpt_file, caplog):
    out = tmp_path / "packed"
    import logging

    logger = logging.getLogger("llama_sft")  # does not propagate to root: attach pytest's handler
    logger.addHandler(caplog.handler)
    try:
        code = main(
            ["train", "--model_name_or_path", str(tiny_model_dir), "--data_path", str(sharegpt_file),
             "--output_dir", str(out), "--method", "full", "--packing", "packed", "--learning_rate", "3e-3",
             "--per_device_train_batch_size", "2", "--max_steps", "12", "--logging_steps", "1",
             "--save_strategy", "no", "--report_to", "none", "--model_max_length", "128"]
        )  # fmt: skip
    finally:
        logger.removeHandler(caplog.handler)
    assert code == 0
    assert "packing: 48 conversations in" in caplog.text and "sdpa_packed" in caplog.text
    trace = losses(out)
    assert trace[-1] < trace[0] * 0.7, trace
