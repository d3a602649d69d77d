"""End to end through the real CLI: the files a run writes, and that the loss fell."""

from __future__ import annotations

import json
import logging

import pytest
from safetensors.torch import load_file

from llama_sft.cli.main import main
from llama_sft.data.messages import Message
from llama_sft.data.templates import SpecialText, get_template

pytestmark = pytest.mark.slow

QUICK = "--max_steps 12 --per_device_train_batch_size 8 --logging_steps 1 --save_strategy no --model_max_length 128 --seed 0"


def train(model_dir, data, out, flags: str) -> int:
    """`llama-sft train` on a local model and data file; `flags` as one would type them."""
    args = ["--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out)]
    return main(["train", *args, "--report_to", "none", *flags.split()])


def losses(run_dir):
    metrics = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [m["loss"] for m in metrics if "loss" in m]


def test_lora_run_writes_expected_files_and_learns(tmp_path, tiny_model_dir, sharegpt_file):
    out = tmp_path / "run"
    flags = f"--method lora --lora_r 8 --learning_rate 1e-2 --eval_ratio 0.1 --eval_strategy steps --eval_steps 6 {QUICK}"
    assert train(tiny_model_dir, sharegpt_file, out, flags) == 0
    expected = {
        "adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", "llama_sft_template.yaml", "run_record.json", "config.resolved.yaml",
        "metrics.jsonl", "loss.png", "report.md", "base_model_config.json",
    }  # fmt: skip
    assert expected <= {p.name for p in out.iterdir()}
    trace = losses(out)
    assert trace[-1] < trace[0] - 0.4, trace  # LoRA on a random base learns slowly but steadily
    evals = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in m]
    assert evals and all("eval_perplexity" in m for m in evals)
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = {k: t for k, t in adapter.items() if "lora_B" in k}
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b.values())
    record = json.loads((out / "run_record.json").read_text())
    assert record["template"] == "vicuna_v1.1" and record["method"] == "lora"
    assert record["params"]["trainable_params"] < record["params"]["total_params"]
    assert set(record["versions"]) >= {"torch", "transformers", "peft"}
    assert "train loss" in (out / "report.md").read_text()


def test_saved_tokenizer_renders_the_training_template(tmp_path, tiny_model_dir, sharegpt_file):
    from transformers import AutoTokenizer

    from llama_sft.data.tokenizer import load_tokenizer

    out = tmp_path / "run"
    assert (
        train(
            tiny_model_dir,
            sharegpt_file,
            out,
            "--method full --conv_template chatml --max_steps 1 --save_strategy no",
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
    special = SpecialText.from_tokenizer(tokenizer)
    expected = get_template("chatml").render(messages, add_generation_prompt=True, special=special)
    as_dicts = [{"role": m.role, "content": m.content} for m in messages]
    got = tokenizer.apply_chat_template(as_dicts, tokenize=False, add_generation_prompt=True)
    assert got == expected.text
    # A server loads the run dir with plain AutoTokenizer: it must produce the training ids.
    plain = AutoTokenizer.from_pretrained(str(out))
    assert (
        plain(got, add_special_tokens=False)["input_ids"]
        == tokenizer(got, add_special_tokens=False)["input_ids"]
    )
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()


def test_full_finetune_learns(tmp_path, tiny_model_dir, sharegpt_file):
    out = tmp_path / "full"
    assert train(tiny_model_dir, sharegpt_file, out, f"--method full --learning_rate 3e-3 {QUICK}") == 0
    trace = losses(out)
    assert trace[-1] < trace[0] * 0.7, trace


def test_packed_training_learns_and_packs(tmp_path, tiny_model_dir, sharegpt_file, caplog):
    out = tmp_path / "packed"
    flags = (
        "--method full --packing packed --learning_rate 3e-3 --per_device_train_batch_size 2 --max_steps 12 "
        "--logging_steps 1 --save_strategy no --model_max_length 128"
    )
    logger = logging.getLogger("llama_sft")  # does not propagate to root: attach pytest's handler
    logger.addHandler(caplog.handler)
    try:
        code = train(tiny_model_dir, sharegpt_file, out, flags)
    finally:
        logger.removeHandler(caplog.handler)
    assert code == 0
    assert "packing: 48 conversations in" in caplog.text and "sdpa_packed" in caplog.text
    trace = losses(out)
    assert trace[-1] < trace[0] * 0.7, trace
