"""Load the base model as the run asks: dtype, attention, RoPE scaling, 4-bit, adapters.

Checks that can fail without weights (flash-attn missing, a bitsandbytes that cannot run 4-bit
here) run in `preflight` before anything large is loaded. The 4-bit choices are in `quantize`.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from ..config import ConfigError, RunConfig
from . import quantize
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
        quantize.check_bitsandbytes()  # CUDA or CPU: bitsandbytes >= 0.50 runs NF4 on both
    if run.lora.use_dora and run.lora.method == "full":
        raise ConfigError("--use_dora True applies to adapters; use it with --method lora or qlora")


def quantization_config(run: RunConfig):
    """The BitsAndBytesConfig this run loads its base with (`quantize` explains the dtypes)."""
    return quantize.run_quantization_config(run, compute_dtype(run))


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
        kwargs["device_map"] = quantize.device_map(run)
    model = AutoModelForCausalLM.from_pretrained(run.model.model_name_or_path, **kwargs)
    if run.lora.method == "qlora":
        quantize.keep_training_layout(model)
    model.config.use_cache = False  # the KV cache is useless in training and breaks checkpointing
    return model
