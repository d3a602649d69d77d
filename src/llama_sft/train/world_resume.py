"""Resuming on a different number of processes: what carries over exactly, what is refused.

Each checkpoint gets `llama_sft_world.json` (processes, per-device batch, accumulation, global batch,
strategy). On resume with another world size:

- DDP or one process (the checkpoint holds whole weights, whole optimizer state, scheduler and
  step): model, optimizer, LR schedule and samples seen are exact when the global batch is the same
  (per-device batch x accumulation x processes; change `--gradient_accumulation_steps` to keep it).
  The data order is the same too with `--train_sampling_strategy random` (one seeded permutation cut
  into global batches); with `group_by_length` the length groups are sized per process x
  accumulation, so the order after the resume point differs. Per-rank RNG states (dropout) cannot
  map onto another count of ranks and start fresh (transformers warns).
- A different global batch is refused: the step count, the schedule and the samples-seen count would
  no longer mean the same thing.
- DeepSpeed ZeRO and FSDP checkpoints are sharded per rank (ZeRO's optimizer partitions, FSDP's
  sharded state) and are refused with the conversion to use; the final `model.safetensors` /
  adapter of any run loads anywhere.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from ..config import ConfigError, RunConfig

log = logging.getLogger("llama_sft")

WORLD_FILE = "llama_sft_world.json"


def current_world(run: RunConfig, world_size: int) -> dict:
    from .distributed import fsdp_requested, zero_stage

    t = run.training
    stage = zero_stage(run)
    strategy = "fsdp" if fsdp_requested(run) else f"zero{stage}" if stage is not None else "ddp"
    return {
        "world_size": world_size,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "global_batch_size": t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size,
        "strategy": strategy,
        "train_sampling_strategy": getattr(t, "train_sampling_strategy", None),
    }


class WorldRecorder(TrainerCallback):
    """Writes WORLD_FILE into every checkpoint (rank 0)."""

    def __init__(self, world: dict):
        self.world = world

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / WORLD_FILE).write_text(json.dumps(self.world, indent=1) + "\n", encoding="utf-8")


def saved_world(checkpoint: str | Path) -> dict:
    """The checkpoint's world: its WORLD_FILE, or what its files show (per-rank RNG states, shards)."""
    checkpoint = Path(checkpoint)
    if (checkpoint / WORLD_FILE).exists():
        return json.loads((checkpoint / WORLD_FILE).read_text(encoding="utf-8"))
    ranks = len(list(checkpoint.glob("rng_state_*.pth"))) or 1
    zero = list(checkpoint.glob("global_step*"))
    fsdp = list(checkpoint.glob("*fsdp*")) or list(checkpoint.glob("optimizer_0"))
    return {"world_size": ranks, "strategy": "zero" if zero else "fsdp" if fsdp else "ddp"}


def check_world_resume(checkpoint: str | Path, now: dict) -> None:
    """Refuse a resume that cannot be exact; log what carries over when the world size changes."""
    then = saved_world(checkpoint)
    if then["world_size"] == now["world_size"]:
        return
    change = f"{checkpoint} was saved by {then['world_size']} process(es), this run has {now['world_size']}"
    strategy = then.get("strategy", "ddp")
    if strategy != "ddp" or now["strategy"] != "ddp":
        sharded = strategy if strategy != "ddp" else now["strategy"]
        raise ConfigError(
            f"{change}, and {sharded} checkpoints are sharded per rank: resume with "
            f"{then['world_size']} process(es), or start a new run from the saved weights. For DeepSpeed, "
            "`python -m deepspeed.checkpoint.ds_to_universal` converts a checkpoint to one that loads on "
            "any count (docs/distributed.md)"
        )
    if "global_batch_size" in then and then["global_batch_size"] != now["global_batch_size"]:
        keep = then["global_batch_size"] // (now["per_device_train_batch_size"] * now["world_size"])
        raise ConfigError(
            f"{change} with a global batch of {then['global_batch_size']}; this run's is "
            f"{now['global_batch_size']} ({now['per_device_train_batch_size']} per device x "
            f"{now['gradient_accumulation_steps']} accumulation x {now['world_size']}). Keep the global batch, "
            f"e.g. --gradient_accumulation_steps {max(keep, 1)} (or --global_batch_size {then['global_batch_size']}), "
            "so steps, schedule and samples seen mean the same"
        )
    log.warning(
        "%s: model, optimizer, LR schedule and samples seen carry over exactly (same global batch); "
        "the data order matches only with --train_sampling_strategy random, and per-rank RNG states "
        "(dropout) start fresh",
        change,
    )
