"""QLoRA on CPU through the real CLI: a 4-bit NF4 base (bitsandbytes >= 0.50) trains, checkpoints,
resumes after SIGKILL to exactly the loss of an uninterrupted run, and merges into the dequantized
base so that plain transformers reproduces the trained model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from ci import require_module

pytestmark = pytest.mark.slow
require_module("bitsandbytes")

STEPS = 12


def train_cmd(model_dir, data, out, *extra):
    return [
        sys.executable, "-m", "llama_sft.cli.main", "train",
        "--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out),
        "--q_lora", "True", "--lora_dropout", "0.1", "--max_steps", str(STEPS), "--save_steps", "4",
        "--save_strategy", "steps", "--logging_steps", "1", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--report_to", "none", "--seed", "7", "--model_max_length", "128",
        "--disable_tqdm", "True", *extra,
    ]  # fmt: skip


def env(tmp_path) -> dict:
    # One thread: a tiny model runs faster so on 2 busy cores, and the two runs below stay comparable.
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LLAMA_SFT_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }


def losses(out) -> list[dict]:
    return [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in e]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
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
def qlora_run(tmp_path_factory, tiny_model_dir, data_file):
    """An uninterrupted QLoRA run (the resume test's reference and the merge tests' input)."""
    root = tmp_path_factory.mktemp("qlora")
    out = root / "straight"
    subprocess.run(
        train_cmd(tiny_model_dir, data_file, out), check=True, env=env(root), capture_output=True, timeout=600
    )
    return out


def test_qlora_trains_on_cpu(qlora_run):
    record = json.loads((qlora_run / "run_record.json").read_text())
    assert record["method"] == "qlora"
    assert record["quantization"] == {
        "quant_type": "nf4",
        "double_quant": True,
        "compute_dtype": "float32",
        "storage_dtype": "uint8",
    }
    trace = losses(qlora_run)
    assert len(trace) == STEPS and trace[-1]["loss"] < trace[0]["loss"] - 0.3, trace
    assert all(e["grad_norm"] > 0 for e in trace)
    assert (qlora_run / "adapter_model.safetensors").exists()
    assert not (qlora_run / "model.safetensors").exists()  # an adapter, not a copy of the base


def test_qlora_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, data_file, qlora_run):
    from llama_sft.train.resume import resolve_resume

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(tiny_model_dir, data_file, killed),
        env=env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (killed / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint-4 within 600 s"
        time.sleep(0.05)  # polling for a file the child writes, not waiting for time to pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter_model.safetensors").exists(), "the run finished before the kill"
    resumed_from = resolve_resume("auto", killed)
    assert resumed_from is not None and int(resumed_from.rsplit("-", 1)[1]) >= 4
    subprocess.run(
        train_cmd(tiny_model_dir, data_file, killed, "--resume_from_checkpoint", "auto"),
        check=True,
        env=env(tmp_path),
        capture_output=True,
        timeout=600,
    )
    final = {name: [e for e in losses(d) if e["step"] == STEPS][-1]["loss"] for name, d in
             (("straight", qlora_run), ("killed", killed))}  # fmt: skip
    assert final["killed"] == pytest.approx(final["straight"], rel=1e-5, abs=1e-6), (resumed_from, final)


def reference_logits(run_dir, text: str, quantized: bool) -> torch.Tensor:
    """The adapter on its base, built with transformers, peft and bitsandbytes directly (not our
    loaders): NF4 with double quantization computing in float32, as the run recorded, or unquantized."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    base = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    kwargs = {"dtype": torch.float32}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        kwargs["device_map"] = {"": "cpu"}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kwargs), str(run_dir))
    # Training mode, as trained (bitsandbytes repacks 4-bit weights for CPU inference in eval mode),
    # with dropout off.
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    ids = AutoTokenizer.from_pretrained(str(run_dir))(text, add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merge_of_a_qlora_run_reproduces_the_trained_model(qlora_run, tmp_path):
    """`llama-sft merge` (default: dequantized base): the merged directory, loaded by plain
    transformers, gives the logits of the adapter on the 4-bit base, much closer than the adapter on
    the original weights does (the NF4 error that `--qlora_base original` leaves in)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from llama_sft.cli.main import main

    out = tmp_path / "merged"
    assert main(["merge", str(qlora_run), "--out", str(out)]) == 0
    record = json.loads((out / "run_record.json").read_text())["export"]
    assert "dequantized to float32" in record["merge"]
    assert record["check"]["max_abs_logit_diff"] <= 1e-4 and record["check"]["tolerance"] == 1e-3
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Convert 48 km to metres."}], tokenize=False, add_generation_prompt=True
    )
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    trained = reference_logits(qlora_run, text, quantized=True)
    unquantized = reference_logits(qlora_run, text, quantized=False)
    dequantized_error = (merged_logits - trained).abs().max().item()
    nf4_error = (unquantized - trained).abs().max().item()
    assert dequantized_error < 1e-4 and nf4_error > 100 * dequantized_error, (dequantized_error, nf4_error)

    eos = GenerationConfig.from_pretrained(str(out)).eos_token_id
    assert tokenizer.convert_tokens_to_ids("</s>") in (
        eos if isinstance(eos, list) else [eos]
    )  # vicuna's stop

    original = tmp_path / "original"
    assert main(["merge", str(qlora_run), "--out", str(original), "--qlora_base", "original"]) == 0
    assert (
        "NF4 quantization error" in json.loads((original / "run_record.json").read_text())["export"]["merge"]
    )


def test_qlora_merge_without_a_working_bitsandbytes_names_the_way_out(qlora_run, tmp_path, monkeypatch):
    import bitsandbytes.functional as F

    from llama_sft.config import ConfigError
    from llama_sft.export import merge_run

    def cuda_only(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(F, "quantize_4bit", cuda_only)
    with pytest.raises(ConfigError, match="--qlora_base original"):
        merge_run(qlora_run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
