"""The one Trainer subclass: a finite-loss guard at `compute_loss`, the documented extension point."""

from __future__ import annotations

import torch
from transformers import Trainer


class NonFiniteLossError(RuntimeError):
    pass


class SFTTrainer(Trainer):
    """transformers.Trainer that stops on NaN/inf loss naming the step and the batch's samples.

    The check costs one scalar read per micro-batch; a silent NaN costs a whole run.
    """

    def __init__(self, *args, sample_ids=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_ids = sample_ids  # dataset row -> record id, for error messages

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_index = inputs.pop("sample_index", None)
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        if not torch.isfinite(loss.detach()).all():
            rows = sample_index.tolist() if sample_index is not None else []
            ids = [self.sample_ids[r] for r in rows] if self.sample_ids is not None else rows
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.state.global_step}; the batch held samples {ids}. "
                "Lower the learning rate, use bf16 instead of fp16, or inspect those records with `llama-sft data inspect`."
            )
        return result

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("sample_index", None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
