"""Export a run as one standalone model: merged safetensors (training template, stop tokens) or GGUF.

Names are resolved on first use, so `llama-sft --help` and `plan` can read this package's constants
(e.g. the GGUF out types) without importing torch.
"""

from __future__ import annotations

__all__ = ["load_merged", "merge_run", "save_tokenizer", "stop_token_ids"]


def __getattr__(name: str):
    if name == "stop_token_ids":
        from ..rundir import stop_token_ids

        return stop_token_ids
    if name in ("load_merged", "merge_run", "save_tokenizer"):
        from . import merge

        return getattr(merge, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
