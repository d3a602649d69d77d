"""FastChat's own training scripts, with only the program name (and their $VARIABLES) changed.

The flag lists are copied from FastChat's scripts/train_lora.sh and scripts/test_readme_train.sh.
Two things are added, both outside the flag set under test: `--max_steps 2` (150 epochs is a GPU
job) and, for train_lora.sh, `--eval_data_path`: that script asks for step evaluation but passes
no eval data, which in FastChat fails at the first evaluation (step 100); we refuse it up front
(see test_rope_and_checks.py), so the test supplies the file a real user would.
"""

from __future__ import annotations

import json
import os
import shlex

import pytest

from llama_sft.cli.main import main

pytestmark = pytest.mark.slow

TRAIN_LORA_SH = """
    --model_name_or_path lmsys/vicuna-7b-v1.3  \\
    --lora_r 8 \\
    --lora_alpha 16 \\
    --lora_dropout 0.05 \\
    --data_path $DATA_PATH \\
    --output_dir ./checkpoints \\
    --num_train_epochs 150 \\
    --fp16 True \\
    --per_device_train_batch_size 2 \\
    --per_device_eval_batch_size 2 \\
    --gradient_accumulation_steps 1 \\
    --evaluation_strategy "steps" \\
    --eval_steps 100  \\
    --save_strategy "steps" \\
    --save_steps 200 \\
    --save_total_limit 2 \\
    --learning_rate 2e-5 \\
    --weight_decay 0. \\
    --warmup_ratio 0.03 \\
    --lr_scheduler_type "cosine" \\
    --logging_strategy "steps" \\
    --logging_steps 1 \\
    --tf32 True \\
    --model_max_length 2048 \\
    --q_lora False \\
    --deepspeed $PATH_TO_DEEPSPEED_CONFIG_S2 \\
    --gradient_checkpointing True \\
    --lora_weight_path ./lora_weights \\
    --flash_attn False
"""

TEST_README_TRAIN_SH = """
    --model_name_or_path ~/model_weights/llama-7b  \\
    --data_path data/dummy_conversation.json \\
    --bf16 True \\
    --output_dir output_vicuna \\
    --num_train_epochs 3 \\
    --per_device_train_batch_size 2 \\
    --per_device_eval_batch_size 2 \\
    --gradient_accumulation_steps 16 \\
    --evaluation_strategy "no" \\
    --save_strategy "steps" \\
    --save_steps 1200 \\
    --save_total_limit 10 \\
    --learning_rate 2e-5 \\
    --weight_decay 0. \\
    --warmup_ratio 0.03 \\
    --lr_scheduler_type "cosine" \\
    --logging_steps 1 \\
    --fsdp "full_shard auto_wrap" \\
    --fsdp_transformer_layer_cls_to_wrap 'LlamaDecoderLayer' \\
    --tf32 True \\
    --model_max_length 2048 \\
    --gradient_checkpointing True \\
    --lazy_preprocess True
"""


def script_args(text: str, replace: dict[str, str]) -> list[str]:
    args = shlex.split(text.replace("\\\n", " "))
    return [replace.get(a, a) for a in args]


def launched_as_one_process(monkeypatch, port: int) -> None:
    """What `deepspeed --num_gpus 1` / `torchrun --nproc_per_node 1` put in the environment."""
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(key, value)


def test_train_lora_sh_runs(tmp_path, tiny_model_dir, sharegpt_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The script starts from ./lora_weights: make one, as a user continuing a run would have.
    assert (
        main(
            [
                "train",
                "--model_name_or_path",
                str(tiny_model_dir),
                "--data_path",
                str(sharegpt_file),
                "--output_dir",
                "lora_weights",
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
    repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    args = script_args(
        TRAIN_LORA_SH,
        {
            "lmsys/vicuna-7b-v1.3": str(tiny_model_dir),
            "$DATA_PATH": str(sharegpt_file),
            "$PATH_TO_DEEPSPEED_CONFIG_S2": os.path.join(repo, "configs/deepspeed/zero2.json"),
        },
    )
    launched_as_one_process(monkeypatch, 29611)
    assert (
        main(
            [
                "train",
                *args,
                "--eval_data_path",
                str(sharegpt_file),
                "--max_steps",
                "2",
                "--report_to",
                "none",
            ]
        )
        == 0
    )
    out = tmp_path / "checkpoints"
    assert (out / "adapter_model.safetensors").exists()
    record = json.loads((out / "run_record.json").read_text())
    assert record["method"] == "lora" and record["template"] == "vicuna_v1.1"
    resolved = (out / "config.resolved.yaml").read_text()
    assert "lora_weight_path: ./lora_weights" in resolved and "warmup_steps: 0.03" in resolved


def test_test_readme_train_sh_runs(tmp_path, tiny_model_dir, sharegpt_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = script_args(
        TEST_README_TRAIN_SH,
        {"~/model_weights/llama-7b": str(tiny_model_dir), "data/dummy_conversation.json": str(sharegpt_file)},
    )
    launched_as_one_process(monkeypatch, 29612)
    # FastChat's train.py is full fine-tuning; ours defaults to LoRA, so the method is the one flag to add.
    assert main(["train", *args, "--method", "full", "--max_steps", "2", "--report_to", "none"]) == 0
    assert (tmp_path / "output_vicuna" / "model.safetensors").exists()
