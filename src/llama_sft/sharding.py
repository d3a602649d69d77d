"""Which distributed setup a run is in: launcher, DeepSpeed ZeRO stage, FSDP, and the one answer to
"are the weights sharded across processes?".

Loading (4-bit storage dtype, `device_map`) and the distributed checks must agree on that answer,
and it has to come from every way a run can ask for sharding: `--deepspeed FILE`, `--fsdp ...`,
and `accelerate launch --config_file` with a DeepSpeed or FSDP YAML (which asks through environment
variables and never touches the flags). It lives here, below `model` and `train`, so both read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import ConfigError, RunConfig


def launched() -> bool:
    """True under torchrun, accelerate launch and the deepspeed launcher (they all set LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def process_count() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def deepspeed_config(run: RunConfig) -> dict | None:
    """The DeepSpeed config in force: `--deepspeed FILE`, or the one an accelerate YAML names."""
    t = run.training
    hf_config = getattr(t, "hf_deepspeed_config", None)  # TrainingArguments built it from --deepspeed
    if hf_config is not None:
        return hf_config.config
    if t.deepspeed:
        if isinstance(t.deepspeed, dict):
            return t.deepspeed
        path = Path(t.deepspeed)
        if not path.exists():
            raise ConfigError(
                f"--deepspeed {path}: file not found (shipped configs: configs/deepspeed/*.json)"
            )
        return json.loads(path.read_text(encoding="utf-8"))
    # accelerate launch with distributed_type: DEEPSPEED (TrainingArguments built the plugin from
    # ACCELERATE_USE_DEEPSPEED and the config file accelerate exported).
    plugin = getattr(t, "deepspeed_plugin", None)
    return plugin.deepspeed_config if plugin is not None else None


def zero_stage(run: RunConfig) -> int | None:
    """0-3 under DeepSpeed, None without it."""
    config = deepspeed_config(run)
    return None if config is None else int(config.get("zero_optimization", {}).get("stage", 0))


def fsdp_requested(run: RunConfig) -> bool:
    """`--fsdp ...`, or `accelerate launch` with an FSDP YAML (which sets ACCELERATE_USE_FSDP)."""
    return bool(run.training.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_state_dict_type(run: RunConfig) -> str:
    if run.training.fsdp:
        return str((run.training.fsdp_config or {}).get("state_dict_type", "FULL_STATE_DICT"))
    return os.environ.get("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")


def shards_weights(run: RunConfig) -> bool:
    """True when ZeRO-3 or FSDP will split the model's weights across processes, however it was asked
    for. Such a run loads without a `device_map` (the engine places the shards), and its 4-bit
    weights must be stored in the dtype of the other weights, because both engines shard by dtype."""
    return zero_stage(run) == 3 or fsdp_requested(run)
