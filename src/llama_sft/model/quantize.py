"""QLoRA's 4-bit base: can bitsandbytes run here, in which dtypes, on which device.

bitsandbytes 0.50 runs NF4 (with double quantization) on CPU as well as on CUDA, so QLoRA is no
longer GPU-only. The choices below are the ones that differ between the two:

- compute dtype: the dtype the 4-bit layers dequantize into and multiply in. On CUDA a float32 run
  still computes them in bfloat16 (QLoRA's recipe; float32 4-bit matmuls waste the GPU). On CPU
  they compute in the run's dtype, float32 unless asked otherwise: the CPU run is float32 anyway
  (`--bf16` falls back there), float32 matmuls are fast on every x86 CPU while bfloat16 ones are
  only fast with AVX512-BF16/AMX, and a float32 compute dtype makes the dequantized base exactly
  the matrix training multiplied by, so `merge` reproduces the trained model to float32 rounding.
- storage dtype: uint8 normally; the dtype of the other weights when ZeRO-3 or FSDP shard the
  model (`sharding.shards_weights`), because both engines flatten and shard by dtype.
- device: the process's GPU, the CPU, or (sharded) none: the engine places the shards.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from ..config import ConfigError, RunConfig
from ..sharding import shards_weights

log = logging.getLogger(__name__)

TESTED_CPU_VERSION = "bitsandbytes>=0.50,<0.51"  # the range QLoRA on CPU is tested with
QUANT_TYPE = "nf4"


def check_bitsandbytes(device: str | None = None) -> str:
    """Quantize and dequantize a small matrix on `device` (default: cuda if present, else cpu);
    returns the bitsandbytes version. Raises ConfigError, with the fix, when it is missing or its
    build cannot run 4-bit on this device (old releases are CUDA-only)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("QLoRA needs bitsandbytes: pip install 'llama-sft[qlora]' (or use --method lora)")
    from importlib.metadata import version

    found = version("bitsandbytes")
    try:
        import bitsandbytes.functional as F

        weight = torch.linspace(-1, 1, 64 * 64, device=device).reshape(64, 64)
        packed, state = F.quantize_4bit(weight, quant_type=QUANT_TYPE, compress_statistics=True)
        error = (F.dequantize_4bit(packed, state) - weight).abs().max().item()
    except Exception as exc:  # an old CUDA-only build raises anything from ImportError to RuntimeError
        raise ConfigError(
            f"bitsandbytes {found} cannot run 4-bit NF4 on {device} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no message'}). QLoRA on CPU is tested with "
            f"{TESTED_CPU_VERSION}: pip install '{TESTED_CPU_VERSION}' (or use --method lora)"
        ) from None
    if not error < 0.2:  # NF4 of values in [-1, 1] is off by at most ~0.1
        raise ConfigError(
            f"bitsandbytes {found} on {device} dequantizes NF4 wrongly (max error "
            f"{error:.3f}); use {TESTED_CPU_VERSION} or --method lora"
        )
    return found


def qlora_compute_dtype(dtype: torch.dtype, cuda: bool | None = None) -> torch.dtype:
    """The dtype the 4-bit layers compute in, for a run in `dtype` (see the module docstring)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return torch.bfloat16 if cuda and dtype == torch.float32 else dtype


def quantization_config(
    dtype: torch.dtype, sharded: bool = False, cuda: bool | None = None, compute: torch.dtype | None = None
):
    """NF4 with double quantization, as in the QLoRA paper, for a run whose weights are `dtype`
    (`compute`: the compute dtype a finished run recorded, for merge to load its base as trained)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=QUANT_TYPE,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute or qlora_compute_dtype(dtype, cuda),
        # ZeRO-3 / FSDP shard parameters by dtype: store the 4-bit weights in the dtype of the others.
        bnb_4bit_quant_storage=dtype if sharded else torch.uint8,
    )


def run_quantization_config(run: RunConfig, dtype: torch.dtype):
    return quantization_config(dtype, sharded=shards_weights(run))


def device_map(run: RunConfig) -> dict | None:
    """Where the 4-bit base loads: none when ZeRO-3 or FSDP will place the shards, else this
    process's GPU, else the CPU (bitsandbytes quantizes as the weights arrive on the device)."""
    if shards_weights(run):
        return None
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return {"": "cpu"}


def keep_training_layout(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference; returns how many layers.

    On a CPU with AVX512-BF16, a `Linear4bit` that runs a forward in eval mode without grad (the
    Trainer's evaluation, a merge check) rewrites its weight once and for all into an inference
    layout with bfloat16 scales. Later forwards go through a kernel without autograd, so training
    after an evaluation silently stops propagating gradients through the base layers, and every
    output changes by bfloat16 rounding. Training, evaluation and merge must see one model."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def describe(config) -> dict:
    """What the run record keeps about the 4-bit base (merge reads the compute dtype back)."""
    return {
        "quant_type": config.bnb_4bit_quant_type,
        "double_quant": bool(config.bnb_4bit_use_double_quant),
        "compute_dtype": str(config.bnb_4bit_compute_dtype).removeprefix("torch."),
        "storage_dtype": str(config.bnb_4bit_quant_storage).removeprefix("torch."),
    }
