"""`llama-sft merge`: one standalone model directory that any HF-based server loads as trained.

The output holds the merged weights (safetensors), the config the run trained with (RoPE scaling
included), a tokenizer whose `chat_template` is the training template, the template file and run
record (so chat, eval and serve read them back), and a generation_config whose EOS ids include
the template's single-token stop strings.

QLoRA: the adapter was trained against the 4-bit base, i.e. against dequant(NF4(W)), not W. The
default merges into exactly that: the base is loaded in 4-bit as in training, dequantized to the
compute dtype, and the adapter is merged there, so the merged model matches the trained one up to
rounding the sum to the compute dtype (bf16: ~3 significant digits per weight; the logits agree
closely, not bit for bit). `--qlora_base original` merges into the unquantized W instead: its
outputs differ from the trained model by the NF4 quantization error, usually the larger difference.
Dequantizing needs bitsandbytes and a CUDA GPU.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from ..config import ConfigError
from ..data.templates import SpecialText, Template
from ..data.tokenizer import save_tokenizer
from ..model.trained import BASE_CONFIG, is_adapter_dir
from ..train.outputs import RUN_RECORD, TEMPLATE_JINJA, TEMPLATE_YAML, load_run_template, read_run_record

log = logging.getLogger("llama_sft")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QLORA_BASES = ("dequantized", "original")


def _resolved(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.resolved.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}


def compute_dtype_of_run(run_dir: Path) -> torch.dtype:
    """The dtype the run computed in (as `model.load.compute_dtype` resolved it)."""
    from ..model.load import compute_dtype

    resolved = _resolved(run_dir)
    model, training = resolved.get("model", {}), resolved.get("training", {})
    run = SimpleNamespace(
        model=SimpleNamespace(torch_dtype=model.get("torch_dtype", "auto")),
        training=SimpleNamespace(bf16=bool(training.get("bf16")), fp16=bool(training.get("fp16"))),
    )
    return compute_dtype(run)


def _base_config(run_dir: Path):
    from transformers import AutoConfig

    base = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    config = AutoConfig.from_pretrained(base)
    if (run_dir / BASE_CONFIG).exists():
        config = type(config).from_json_file(str(run_dir / BASE_CONFIG))
    return base, config


def dequantized_qlora_base(run_dir: Path, dtype: torch.dtype):
    """The base as the QLoRA run saw it: loaded in 4-bit NF4 as in training, then dequantized to `dtype`."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise ConfigError(
            "merging a QLoRA run dequantizes the 4-bit base the adapter was trained against, which needs bitsandbytes "
            "and a CUDA GPU. On this machine pass --qlora_base original to merge into the unquantized base weights "
            "(its outputs then differ from the trained model by the NF4 quantization error)."
        )
    from transformers import AutoModelForCausalLM

    from ..model.load import quantization_config

    base, config = _base_config(run_dir)
    # The training quantization settings (nf4, double quant); unsharded storage holds the same values.
    run = SimpleNamespace(
        model=SimpleNamespace(torch_dtype=str(dtype).removeprefix("torch.")),
        training=SimpleNamespace(bf16=False, fp16=False, deepspeed=None, fsdp=None),
    )
    model = AutoModelForCausalLM.from_pretrained(
        base,
        config=config,
        quantization_config=quantization_config(run),
        dtype=dtype,
        device_map={"": 0},
        use_safetensors=True,
    )
    return model.dequantize(dtype=dtype)


def load_merged(run_dir: str | Path, dtype: str = "auto", qlora_base: str = "dequantized"):
    """(merged model, tokenizer, template, notes) for a run directory or a model directory."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..data.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    if qlora_base not in QLORA_BASES:
        raise ConfigError(f"--qlora_base {qlora_base!r}: choose {' or '.join(QLORA_BASES)}")
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    record = read_run_record(run_dir) or {}
    tokenizer = load_tokenizer(str(run_dir))
    template = load_run_template(run_dir, tokenizer)
    notes = {
        "source": str(run_dir),
        "method": record.get("method", "lora" if is_adapter_dir(run_dir) else "full"),
    }
    if not is_adapter_dir(run_dir):
        if not (run_dir / "config.json").exists():
            raise FileNotFoundError(
                f"{run_dir}: neither an adapter run (adapter_config.json) nor a model (config.json)"
            )
        model = AutoModelForCausalLM.from_pretrained(
            str(run_dir), dtype=DTYPES.get(dtype, "auto"), use_safetensors=True
        )
        notes["merge"] = "full fine-tuning: weights copied (nothing to merge)"
        return model, tokenizer, template, notes
    base, config = _base_config(run_dir)
    if notes["method"] == "qlora" and qlora_base == "dequantized":
        target = DTYPES.get(dtype) or compute_dtype_of_run(run_dir)
        if target == torch.float32:
            target = torch.bfloat16  # training computed the 4-bit layers in bf16 when asked for fp32
        model = dequantized_qlora_base(run_dir, target)
        notes["merge"] = (
            f"QLoRA: base loaded in 4-bit NF4 as in training, dequantized to {str(target).removeprefix('torch.')} and merged; matches "
            "the trained model up to rounding to that dtype"
        )
    else:
        target = DTYPES.get(dtype) or getattr(config, "dtype", None) or torch.float32
        if isinstance(target, str):
            target = DTYPES.get(target, torch.float32)
        model = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=target, use_safetensors=True)
        notes["merge"] = f"LoRA merged into the base in {str(target).removeprefix('torch.')}"
        if notes["method"] == "qlora":
            notes["merge"] += (
                " (QLoRA run merged into the original, unquantized base: outputs differ from the trained "
                "model by the NF4 quantization error)"
            )
    model = PeftModel.from_pretrained(model, str(run_dir)).merge_and_unload()
    notes["base_model"] = base
    return model, tokenizer, template, notes


def stop_token_ids(template: Template, tokenizer) -> list[int]:
    """EOS plus every stop string that is a single token (e.g. <|eot_id|>, <|im_end|>)."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [vocab[s] for s in template.stop(SpecialText.from_tokenizer(tokenizer)) if s in vocab]
    return list(dict.fromkeys(ids))


def merge_run(
    run_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "auto",
    qlora_base: str = "dequantized",
    overwrite: bool = False,
) -> dict:
    """Write the merged model to `out_dir`; returns what was done (also saved in the run record)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ConfigError("--out must differ from the run directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; pass --overwrite or choose another --out")
    model, tokenizer, template, notes = load_merged(run_dir, dtype, qlora_base)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # training turned the KV cache off; servers want it on
    stops = stop_token_ids(template, tokenizer)
    model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, template, out_dir)
    for name in (TEMPLATE_YAML, TEMPLATE_JINJA):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out_dir / name)
    record = read_run_record(run_dir) or {"template": template.name}
    notes.update(
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        rope_parameters=getattr(model.config, "rope_parameters", None),
        stop_strings=list(template.stop(SpecialText.from_tokenizer(tokenizer))),
        stop_token_ids=stops,
    )
    record["export"] = notes
    (out_dir / RUN_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return notes
