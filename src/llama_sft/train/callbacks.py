"""Trainer callbacks: metrics.jsonl on rank 0, perplexity next to eval loss, the allocator setting
that returns freed memory while the model loads."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from .malloc import pin_mmap_threshold, release_after_loading


class MetricsLogger(TrainerCallback):
    """Appends every log entry (train and eval) to output_dir/metrics.jsonl, rank 0 only."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = dict(logs)
        if "eval_loss" in entry:
            entry["eval_perplexity"] = math.exp(min(entry["eval_loss"], 50))
        entry.update(step=state.global_step, epoch=state.epoch, elapsed_s=round(time.time() - self.start, 2))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        logs.update({k: v for k, v in entry.items() if k == "eval_perplexity"})


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LeanLoading(TrainerCallback):
    """Create it just before the weights load: glibc returns freed buffers to the system until the
    Trainer has prepared the model (train/malloc.py), then its usual setting comes back."""

    def __init__(self):
        self.pinned = pin_mmap_threshold()

    def on_train_begin(self, args, state, control, **kwargs):
        if self.pinned:
            release_after_loading()
            self.pinned = False
