"""Load the base model as the run asks: dtype, attention, RoPE scaling, 4-bit, adapters.

Checks that can fail without weights (flash-attn missing, QLoRA without CUDA/bitsandbytes) run in
`preflight` before anything large is loaded.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from ..config import ConfigError, RunConfig
from .rope import apply_rope_scaling

log = logging.getLogger(__name__)


def compute_dtype(run: RunConfig) -> torch.dtype:
    name = run.model.torch_dtype
    if name == "auto":
        return torch.bfloat16 if run.training.bf16 else torch.float16 if run.training.fp16 else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    except KeyError:
        raise ConfigError(f"--torch_dtype {name!r}: choose auto, bfloat16, float16 or float32") from None


def preflight(run: RunConfig) -> None:
    """Fail early, with the fix, for combinations this machine cannot run."""
    if run.model.attn_implementation == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                "--flash_attn True needs the flash-attn package (pip install flash-attn, CUDA only); "
                "drop the flag to use PyTorch SDPA attention"
            )
        if not torch.cuda.is_available():
            raise ConfigError("--flash_attn True needs a CUDA GPU; drop the flag on CPU")
    if run.lora.method == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "QLoRA needs bitsandbytes: pip install 'llama-sft[qlora]' (or use --method lora)"
            )
        if not torch.cuda.is_available():
            raise ConfigError(
                "QLoRA loads the base in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                "on CPU use --method lora or --method full"
            )
    if run.lora.use_dora and run.lora.method == "full":
        raise ConfigError("--use_dora True applies to adapters; use it with --method lora or qlora")


def quantization_config(run: RunConfig):
    from transformers import BitsAndBytesConfig

    dtype = compute_dtype(run)
    sharded = bool(run.training.deepspeed) or bool(run.training.fsdp)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16,
        # ZeRO-3 / FSDP shard parameters by dtype: store the 4-bit weights in the compute dtype so they can.
        bnb_4bit_quant_storage=dtype if sharded and dtype != torch.float32 else torch.uint8,
    )


def load_model_config(run: RunConfig):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        run.model.model_name_or_path, trust_remote_code=run.model.trust_remote_code
    )


def load_model(run: RunConfig, config=None):
    """The base model (not yet wrapped with adapters)."""
    from transformers import AutoModelForCausalLM

    config = config or load_model_config(run)
    apply_rope_scaling(
        config, run.model.rope_scaling_type, run.model.rope_scaling_factor, run.data.model_max_length
    )
    kwargs = {
        "config": config,
        "trust_remote_code": run.model.trust_remote_code,
        "dtype": compute_dtype(run),
        "use_safetensors": True,
    }
    if run.model.attn_implementation:
        kwargs["attn_implementation"] = run.model.attn_implementation
    if run.lora.method == "qlora":
        kwargs["quantization_config"] = quantization_config(run)
        if not (run.training.deepspeed or run.training.fsdp):
            import os

            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(run.model.model_name_or_path, **kwargs)
    model.config.use_cache = False  # the KV cache is useless in training and breaks checkpointing
    return model
