"""Silence third-party messages a user of llama-sft cannot act on, each matched narrowly.

A run should print what the user must know (data problems, notes, the loss), so that a real warning
is not lost among lines nobody can fix. Only messages about code paths we do not control are
filtered, each by its exact text; anything else still shows.
"""

from __future__ import annotations

import logging
import os
import warnings

# peft 0.21 reads `model.is_gradient_checkpointing` in PeftModel.__init__; transformers 5.24 renamed it
# `is_activation_checkpointing` and warns on every adapter load. Our own code uses the new names.
PEFT_CHECKPOINTING = r"`is_gradient_checkpointing` is deprecated"
# bitsandbytes' CPU backend looks for an optional kernel package at import, also when no 4-bit layer
# is ever used (it is imported by peft and transformers whenever installed).
BNB_CPU_KERNEL = "Failed to load CPU gemm_4bit_forward"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_third_party() -> None:
    """Install the filters (idempotent). Call before transformers, peft or deepspeed are imported."""
    warnings.filterwarnings("ignore", message=PEFT_CHECKPOINTING, category=FutureWarning)
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropMessage) for f in bnb.filters):
        bnb.addFilter(_DropMessage(BNB_CPU_KERNEL))
    # DeepSpeed probes for an accelerator at import and warns when it finds none; on a machine
    # without CUDA name the CPU accelerator it would pick anyway (a launcher may set it first).
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
