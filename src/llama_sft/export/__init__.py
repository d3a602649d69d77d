"""Export a run as one standalone model directory (merged weights, training template, stop tokens)."""

from ..rundir import stop_token_ids
from .merge import load_merged, merge_run, save_tokenizer

__all__ = ["load_merged", "merge_run", "save_tokenizer", "stop_token_ids"]
