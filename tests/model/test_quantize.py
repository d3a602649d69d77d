"""QLoRA's 4-bit base on CPU: the checks before loading, the dtypes and device it loads with, one
answer to "sharded?" for every way of asking, and training that survives an evaluation."""

from __future__ import annotations

import pytest
import torch
from ci import hardware_lacks, require_module

from llama_sft.config import ConfigError, parse_run_config
from llama_sft.model import quantize
from llama_sft.sharding import shards_weights

require_module("bitsandbytes")  # a dev dependency (the qlora extra); CI installs it


def qlora_run(model_dir="unused", *flags: str):
    run = parse_run_config(
        ["--model_name_or_path", str(model_dir), "--data_path", "unused.json", "--output_dir", "unused",
         "--method", "qlora", *flags]
    )  # fmt: skip
    return run.validate()


@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("LOCAL_RANK", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)


def test_bitsandbytes_runs_nf4_on_this_cpu():
    assert quantize.check_bitsandbytes("cpu") >= "0.50"


def test_missing_or_incapable_bitsandbytes_is_refused_with_the_fix(monkeypatch):
    import importlib.util

    import bitsandbytes.functional as F

    def cuda_only(*args, **kwargs):
        raise RuntimeError("CUDA Setup failed despite CPU being available")

    monkeypatch.setattr(F, "quantize_4bit", cuda_only)
    with pytest.raises(ConfigError, match=r"cannot run 4-bit NF4 on cpu \(RuntimeError: CUDA Setup") as err:
        quantize.check_bitsandbytes("cpu")
    assert "pip install 'bitsandbytes>=0.50,<0.51'" in str(err.value)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'llama-sft\[qlora\]'"):
        quantize.check_bitsandbytes("cpu")


def test_refusal_comes_before_any_weights_load(monkeypatch, tiny_model_dir, sharegpt_file, capsys):
    import llama_sft.train.run as run_module
    from llama_sft.cli.main import main

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before bitsandbytes was checked")

    monkeypatch.setattr(run_module, "load_for_this_rank", no_weights)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    code = main(["train", "--model_name_or_path", str(tiny_model_dir), "--data_path", str(sharegpt_file),
                 "--method", "qlora"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "QLoRA needs bitsandbytes" in err and "Traceback" not in err


def test_cpu_qlora_computes_in_float32_on_the_cpu(no_launcher, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = qlora_run()
    config = quantize.run_quantization_config(run, torch.float32)
    assert config.bnb_4bit_compute_dtype == torch.float32 and config.bnb_4bit_quant_storage == torch.uint8
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert quantize.device_map(run) == {"": "cpu"}
    # An explicit bfloat16 run computes in bfloat16; on CUDA a float32 run computes in bfloat16 (QLoRA's recipe).
    assert quantize.qlora_compute_dtype(torch.bfloat16, cuda=False) == torch.bfloat16
    assert quantize.qlora_compute_dtype(torch.float32, cuda=True) == torch.bfloat16


@pytest.mark.parametrize(
    "how", ["--fsdp", "accelerate-fsdp", "--deepspeed zero3", "accelerate-zero3", "zero2"]
)
def test_one_answer_to_sharded_for_every_way_of_asking(no_launcher, monkeypatch, how):
    """`accelerate launch --config_file fsdp.yaml|zero3.yaml` asks through the environment only; the
    4-bit storage dtype and device_map must follow it as they follow the flags."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    flags = []
    if how == "--fsdp":
        flags = ["--fsdp", "full_shard"]
    elif how == "accelerate-fsdp":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    elif how == "--deepspeed zero3":
        flags = ["--deepspeed", str(repo / "configs/deepspeed/zero3.json")]
    elif how == "zero2":
        flags = ["--deepspeed", str(repo / "configs/deepspeed/zero2.json")]
    else:  # what accelerate launch exports for configs/accelerate/zero3.yaml
        require_module("deepspeed")
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(repo / "configs/deepspeed/zero3.json"))
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true")
    run = qlora_run("unused", *flags)
    sharded = how != "zero2"
    assert shards_weights(run) is sharded
    config = quantize.run_quantization_config(run, torch.float32)
    assert config.bnb_4bit_quant_storage == (torch.float32 if sharded else torch.uint8)
    assert (quantize.device_map(run) is None) is sharded


def tiny_qlora_model(model_dir):
    """The tiny base in 4-bit with LoRA on every projection; lora_B made non-zero (it starts at zero,
    which would zero every lora_A gradient and hide the path through the base layers)."""
    from llama_sft.model.adapters import add_adapters
    from llama_sft.model.load import load_model

    run = qlora_run(model_dir, "--lora_dropout", "0")
    model = add_adapters(load_model(run), run)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model


def lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_qlora_tiny_model_loads_4bit_on_cpu_and_evaluation_does_not_break_training(
    no_launcher, tiny_model_dir
):
    """bitsandbytes repacks a Linear4bit for CPU inference the first time it runs in eval mode without
    grad (on CPUs with AVX512-BF16); gradients through the base then silently stop. `load_model`
    turns that off, so the gradients after an evaluation equal those before it."""
    import bitsandbytes as bnb

    model = tiny_qlora_model(tiny_model_dir)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7
    assert all(m.weight.device.type == "cpu" and m.weight.dtype == torch.uint8 for m in layers)
    assert all(m.compute_dtype == torch.float32 and not m.support_avx512bf16_for_cpu for m in layers)
    ids = torch.arange(3, 35).reshape(2, 16)
    batch = {"input_ids": ids, "labels": ids}
    before = lora_grads(model, batch)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = lora_grads(model, batch)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, rtol=0, atol=0, msg=name)
    first_layer_a = [g for n, g in before.items() if "layers.0." in n and "lora_A" in n]
    assert first_layer_a and all(g.abs().sum() > 0 for g in first_layer_a)


def test_the_guard_is_needed_on_this_cpu(no_launcher, tiny_model_dir):
    """Without `keep_training_layout`, the same sequence changes the gradients here (on a CPU with
    AVX512-BF16), so the test above would catch the guard going missing."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        hardware_lacks("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    model = tiny_qlora_model(tiny_model_dir)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True
    ids = torch.arange(3, 35).reshape(2, 16)
    batch = {"input_ids": ids, "labels": ids}
    before = lora_grads(model, batch)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = lora_grads(model, batch)
    assert any(not torch.equal(after[n], g) for n, g in before.items())
