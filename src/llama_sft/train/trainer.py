"""The one Trainer subclass: a finite-loss guard and a per-token eval loss, at documented extension points.

Training loss normalization is transformers': the Trainer counts the supervised tokens of all
micro-batches of an optimizer step (`labels[..., 1:]`, across ranks with
`average_tokens_across_devices`) and passes that `num_items_in_batch` to the model, which sums its
token losses and divides by it. The update is then the per-token mean over the whole step, whatever
the accumulation, the number of processes or the batching mode (tests/train/test_equivalence.py).
The training loss itself is made without full logits (train/loss.py, installed on the model, not
here, so that it runs inside the wrapped forward); `--activation_offloading` wraps the forward pass
in train/offload.py's saved-tensor hooks.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from transformers import Trainer

from ..data.encode import IGNORE_INDEX
from .offload import ActivationOffload

log = logging.getLogger("llama_sft")


class NonFiniteLossError(RuntimeError):
    pass


def supervised_tokens(labels: torch.Tensor) -> int:
    """Tokens a causal LM is trained to predict: labels after the one-position shift."""
    return int(labels[..., 1:].ne(IGNORE_INDEX).sum())


class SFTTrainer(Trainer):
    """transformers.Trainer that stops on NaN/inf loss naming the step and the batch's samples, and
    reports the eval loss per supervised token instead of the mean of per-batch means.

    The check costs one scalar read per micro-batch; a silent NaN costs a whole run.
    """

    def __init__(self, *args, sample_ids=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_ids = sample_ids  # dataset row -> record id, for error messages
        self._eval_totals: torch.Tensor | None = None  # (loss sum, supervised tokens) while evaluating
        if not self.model_accepts_loss_kwargs:
            log.warning(
                "the model's forward takes no loss kwargs: the training loss is averaged per micro-batch, "
                "not per supervised token"
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_index = inputs.pop("sample_index", None)
        tokens = None
        if self._eval_totals is not None:
            # Evaluation: the model's own per-token mean over this batch, weighted by its tokens below.
            tokens = supervised_tokens(inputs["labels"]) if "labels" in inputs else 0
            num_items_in_batch = None
        offload = getattr(self.args, "activation_offloading", False) and model.training
        with ActivationOffload(model) if offload else contextlib.nullcontext():
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        loss = result[0] if return_outputs else result
        if tokens == 0:
            return result  # nothing supervised: the mean is 0/0 and counts for nothing
        if not torch.isfinite(loss.detach()).all():
            rows = sample_index.tolist() if sample_index is not None else []
            ids = [self.sample_ids[r] for r in rows] if self.sample_ids is not None else rows
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.state.global_step + 1}; the batch held samples {ids}. "
                "Lower the learning rate, use bf16 instead of fp16, or inspect those records with `llama-sft data inspect`."
            )
        if tokens is not None:
            self._eval_totals += torch.tensor(
                [loss.detach().double().mean().item() * tokens, tokens], dtype=torch.float64
            )
        return result

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("sample_index", None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """The base loop averages per-batch means (a batch of 3 tokens weighs as much as one of 3,000);
        replace its loss with summed token losses / supervised tokens, summed over processes.
        """
        self._eval_totals = torch.zeros(2, dtype=torch.float64)
        try:
            output = super().evaluation_loop(
                dataloader,
                description,
                prediction_loss_only=prediction_loss_only,
                ignore_keys=ignore_keys,
                metric_key_prefix=metric_key_prefix,
            )
            totals = self._eval_totals
        finally:
            self._eval_totals = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # accelerate evens out the last batch by repeating a few samples; like the base loop, they count twice
            totals = totals.to(self.args.device)
            torch.distributed.all_reduce(totals)
            totals = totals.cpu()
        key = f"{metric_key_prefix}_loss"
        if key in output.metrics and totals[1] > 0:
            output.metrics[key] = float(totals[0] / totals[1])
            output.metrics[f"{metric_key_prefix}_supervised_tokens"] = int(totals[1])
        return output
