"""LoRA / QLoRA / DoRA adapters with peft, and the trainable-parameter summary."""

from __future__ import annotations

import logging

from ..config import RunConfig

log = logging.getLogger(__name__)


def add_adapters(model, run: RunConfig):
    """Wrap `model` for the run's method; full fine-tuning returns it unchanged."""
    if run.lora.method == "full":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    from ..quiet import quiet_third_party

    quiet_third_party()  # also when called as a library, not through the CLI

    if run.lora.method == "qlora":
        # Casts and freezes only: checkpointing is the Trainer's (`activation_checkpointing`, use_reentrant
        # False, input grads below); peft would call the deprecated `gradient_checkpointing_enable`.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if run.lora.lora_weight_path:
        log.info("starting from adapter %s", run.lora.lora_weight_path)
        return PeftModel.from_pretrained(model, run.lora.lora_weight_path, is_trainable=True)
    config = LoraConfig(
        r=run.lora.lora_r,
        lora_alpha=run.lora.lora_alpha,
        lora_dropout=run.lora.lora_dropout,
        target_modules=run.lora.lora_target_modules,
        bias=run.lora.lora_bias,
        use_dora=run.lora.use_dora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if run.training.activation_checkpointing:
        model.enable_input_require_grads()
    return model


def trainable_summary(model) -> dict:
    # Under ZeRO-3 a parameter is an empty shard; ds_numel is its real size.
    def size(p) -> int:
        return getattr(p, "ds_numel", p.numel())

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for p in model.parameters())
    return {
        "trainable_params": trainable,
        "total_params": total,
        "trainable_share": round(trainable / max(total, 1), 6),
    }
