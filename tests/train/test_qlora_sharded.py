"""QLoRA under ZeRO-3 and FSDP, started the way users start them: `accelerate launch --config_file`
with the shipped YAML, 2 CPU processes (gloo).

Such a launch asks for sharding through the environment only, never through `--deepspeed` or
`--fsdp`; the 4-bit storage dtype and the `device_map` must follow it all the same
(`sharding.shards_weights`). Each run must (1) shard the 4-bit base itself, half on each process,
(2) see exactly the 4-bit base a single process sees: its loss before any step (`--eval_on_start`,
LoRA B = 0) equals the single-process QLoRA one, which differs from the unquantized base's, so
weights cast or scrambled by the engine would show, and (3) learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ci import require_module

pytestmark = pytest.mark.slow
require_module("bitsandbytes")

EVAL = [
    "--eval_ratio",
    "0.25",
    "--eval_on_start",
    "True",
    "--per_device_eval_batch_size",
    "2",
]  # 12 = 2 x 2 x 3


def flags(model_dir, data, out, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out),
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--logging_steps", "1",
        "--model_max_length", "64", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
        "--disable_tqdm", "True", *EVAL, *extra,
    ]  # fmt: skip


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def start_loss(out: Path) -> float:
    return next(m["eval_loss"] for m in metrics(out) if "eval_loss" in m and m["step"] == 0)


@pytest.fixture(scope="module")
def sharp_model_dir(tmp_path_factory):
    """The tiny random LLaMA with every matrix scaled x8: its logits are far from uniform, so its loss
    depends on the exact weights (a base whose 4-bit weights were scrambled would show)."""
    import torch

    from llama_sft.tiny import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(8)
    path = tmp_path_factory.mktemp("sharp-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """48 short unit-conversion conversations (the module shares one file between its runs)."""
    records = [
        {"id": f"conv_{k}", "conversations": [
            {"from": "human", "value": f"Convert {k} km to metres."},
            {"from": "gpt", "value": f"{k} km is {k}000 m."},
        ]}
        for k in range(3, 99, 2)
    ]  # fmt: skip
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def single_process_start_loss(tmp_path_factory, sharp_model_dir, data_file) -> float:
    """Loss before training of one plain process: QLoRA (the reference) and unquantized LoRA (must
    differ from it, so that matching the reference means something)."""
    import torch

    from llama_sft.cli.main import main

    root = tmp_path_factory.mktemp("single")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method in ("qlora", "lora"):
            argv = flags(sharp_model_dir, data_file, root / method, "--method", method, "--max_steps", "1")
            assert main(["train", *argv, "--data_cache_dir", str(root / "cache")]) == 0
    finally:
        torch.set_num_threads(before)
    qlora, lora = start_loss(root / "qlora"), start_loss(root / "lora")
    assert abs(qlora - lora) > 1e-2, (qlora, lora)  # NF4 changes this model's loss measurably
    return qlora


@pytest.mark.parametrize("yaml", ["zero3", "fsdp"])
def test_qlora_through_the_shipped_accelerate_yaml_shards_the_4bit_base_and_learns(
    yaml, launch, tmp_path, sharp_model_dir, data_file, single_process_start_loss, check_trained_output
):
    out = tmp_path / "run"
    launch.accelerate(
        f"configs/accelerate/{yaml}.yaml",
        flags(
            sharp_model_dir, data_file, out, "--method", "qlora", "--max_steps", "6", "--ddp_backend", "gloo"
        ),
    )
    record = json.loads((out / "run_record.json").read_text())
    info = record["distributed"]
    assert info["requested"] == yaml and info["world_size"] == 2, info
    assert info["mode"] == ("deepspeed" if yaml == "zero3" else "fsdp2"), info
    # The base itself is sharded: 2 layers x 7 projections in 4-bit, half of their bytes on each process.
    assert info["four_bit_layers"] == 14, info
    assert 0 < info["four_bit_local"] * 2 <= info["four_bit_full"] + 64, info
    assert record["quantization"]["storage_dtype"] == "float32"  # the other weights' dtype, not uint8
    # ...and it is the same 4-bit base one process sees.
    assert start_loss(out) == pytest.approx(single_process_start_loss, rel=1e-5)
    trace = [m for m in metrics(out) if "loss" in m]
    assert len(trace) == 6 and trace[-1]["loss"] < trace[0]["loss"] - 1.0, trace
    assert all(m["grad_norm"] > 0 for m in trace)
    check_trained_output(out, sharp_model_dir)  # a non-empty adapter whose lora_B moved
