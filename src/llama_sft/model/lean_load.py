"""Rank-0-only weight reading under FSDP (`cpu_ram_efficient_loading`): the other ranks build an empty
model and receive their shards from rank 0.

accelerate's FSDP2 preparation with `cpu_ram_efficient_loading` takes rank 0's full state dict,
moves every rank's model to the meta device, shards it and broadcasts the weights from rank 0, so the
other ranks never need the checkpoint. transformers 5 still reads the whole checkpoint on every rank
before that, so a node with 8 GPUs would hold 8 copies of a 70B model in host RAM for a while. Here
ranks other than the node's first build the model from its config with weight initialization off:
the parameters are `torch.empty` (allocated, never written, so not resident) and the non-persistent
buffers (RoPE frequencies) are computed as usual, which accelerate keeps. ZeRO-3 needs nothing of
this: transformers builds the model inside `zero.Init` (the arguments' HfDeepSpeedConfig is alive
before `from_pretrained`), which partitions each parameter as it is created.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("llama_sft")


def cpu_ram_efficient_loading(training_args) -> bool:
    """FSDP asked to load on rank 0 only: `--fsdp_config '{"cpu_ram_efficient_loading": true}'` (which
    TrainingArguments exports) or `fsdp_cpu_ram_efficient_loading: true` in an accelerate YAML."""
    fsdp = (
        bool(getattr(training_args, "fsdp", None))
        or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    )
    flag = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() in ("1", "true")
    return fsdp and flag


def reads_weights(training_args, quantized: bool) -> bool:
    """False on the processes that get their weights by broadcast instead of from the checkpoint."""
    if quantized or not cpu_ram_efficient_loading(training_args):
        return True
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def empty_model(config, dtype, attn_implementation: str | None = None, trust_remote_code: bool = False):
    """The model's structure and buffers without its weights (for ranks that receive them by broadcast)."""
    from transformers import AutoModelForCausalLM
    from transformers import initialization as init

    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with init.no_init_weights():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.tie_weights()
    model.config.use_cache = False
    log.info("rank %s: weights come from rank 0 (cpu_ram_efficient_loading)", os.environ.get("RANK", "?"))
    return model


def load_for_this_rank(run, config):
    """`load_model`, or on the ranks that receive their weights by broadcast, the empty model."""
    from .load import compute_dtype, load_model
    from .rope import apply_rope_scaling

    if reads_weights(run.training, quantized=run.lora.method == "qlora"):
        return load_model(run, config)
    apply_rope_scaling(
        config, run.model.rope_scaling_type, run.model.rope_scaling_factor, run.data.model_max_length
    )
    return empty_model(config, compute_dtype(run), run.model.attn_implementation, run.model.trust_remote_code)
