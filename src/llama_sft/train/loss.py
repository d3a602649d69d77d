"""The training loss without the [tokens x vocab] logits: cross-entropy through the LM head, chunk by chunk.

With a real vocabulary the head, not the transformer, decides how much fits: plain cross-entropy keeps
bf16 logits, their fp32 upcast, log_softmax's output and, in backward, two more fp32 gradients of the
same size (12 bytes x vocab per token; 1.5 MB per token at LLaMA-3's 128,256 tokens). Here only the
supervised positions (label != -100 after the shift) go through the head, `chunk_tokens(vocab)` of
them at a time, and each chunk's logits are dropped as soon as its loss is known:

- `fused` (the head is a plain `nn.Linear`, as in every LoRA/QLoRA/DoRA/full run that does not adapt
  the head itself): one autograd function computes each chunk's loss *and* its gradients with respect
  to the hidden states and the head weight in the forward pass (softmax - one-hot), and the backward
  pass only scales them by the incoming gradient. No recomputation, so the head costs the same three
  matmuls as plain cross-entropy, minus the masked positions. Tied embeddings need nothing special:
  the weight's gradient flows back to the one shared parameter.
- `checkpointed` (any other head: peft's LoRA/DoRA on `lm_head`, a `modules_to_save` wrapper, a
  ZeRO-3 partitioned or DTensor weight): each chunk is `torch.utils.checkpoint`-ed through the head
  module itself, so adapters, hooks and parameter gathering run as usual, forward and recomputed.

Where it hooks in, and why there: `install(model, impl)` replaces the forward of the causal LM
*instance* (the one inside peft's wrapper) with one that calls the same decoder and computes the loss
from its last hidden state. Everything above it (peft, DDP, FSDP, DeepSpeed, accelerate's autocast,
the Trainer's `num_items_in_batch`) still calls `forward` as before, so gradient synchronisation and
parameter gathering are untouched. transformers' `loss_function` is too late (it receives logits
already made) and computing the loss in `SFTTrainer.compute_loss` from returned hidden states would
run the head outside the wrapped forward, where FSDP/ZeRO-3 have already released its weight.

Normalization is transformers' own, exactly: the summed token losses divided by `num_items_in_batch`
(the Trainer's count of supervised tokens over the whole optimizer step), or by this batch's count
when it is not given. Evaluation (no grad, or `model.eval()`) and calls without labels take the
model's own forward: eval loss and returned logits are unchanged.
"""

from __future__ import annotations

import logging
import types

import torch

from ..config import LOSS_IMPLS, liger_problem
from ..data.encode import IGNORE_INDEX

log = logging.getLogger("llama_sft")

# Elements of one chunk's logits: 2^24 (64 MiB in fp32) keeps the head's working set at a tenth of
# plain cross-entropy's for a 2048-token row, yet a chunk is still a large matmul (256 rows x 49k vocab,
# 128 x 128k). benchmarks/results/memory.md measures what it costs.
CHUNK_ELEMENTS = 2**24
MIN_CHUNK, MAX_CHUNK = 16, 4096


def chunk_tokens(vocab_size: int) -> int:
    """Supervised positions per chunk: the largest power of two whose logits fit CHUNK_ELEMENTS."""
    n = max(1, CHUNK_ELEMENTS // max(1, vocab_size))
    return max(MIN_CHUNK, min(MAX_CHUNK, 1 << (n.bit_length() - 1)))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i) with its gradients made chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logits = torch.nn.functional.linear(h, weight)  # the head's dtype (bf16 under autocast)
            z = logits.float()  # the same tensor when the head is fp32: it is overwritten in place below
            target = z.gather(1, t[:, None])
            top = z.amax(dim=-1, keepdim=True)
            e = z.sub_(top).exp_()  # one exp pass serves the loss and its gradient
            norm = e.sum(dim=-1, keepdim=True)
            total += (norm.log() + top - target).sum()
            if not (need_h or need_w):
                continue
            # d(sum CE)/d logits = softmax - one_hot
            g = e.div_(norm)
            g[torch.arange(len(t), device=g.device), t] -= 1
            g = g.to(logits.dtype)
            if need_h:
                grad_h[start : start + chunk] = torch.nn.functional.linear(g, weight.t()).to(hidden.dtype)
            if need_w and g.dtype == torch.float32:
                grad_w.addmm_(g.t(), h.float())  # in place: one pass over the V x h accumulator per chunk
            elif need_w:
                grad_w += (g.t() @ h.to(g.dtype)).float()
            del logits, z, e, g
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        # In place: the gradients were made for this one backward (no second backward through the loss:
        # retain_graph would see them scaled twice), and a V x h copy is what the chunking saves.
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h.mul_(grad_out.to(grad_h.dtype)) if grad_h is not None else None
        gw = grad_w.mul_(grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def _chunk_loss(head, h, t):
    return torch.nn.functional.cross_entropy(head(h).float(), t, reduction="sum")


def fusable(head) -> bool:
    """A plain, bias-free Linear whose weight is a whole local tensor (not ZeRO-3 or DTensor sharded)."""
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return False
    w = head.weight
    return not hasattr(w, "ds_id") and type(w.data).__name__ != "DTensor"


def head_loss_sum(hidden: torch.Tensor, head, targets: torch.Tensor, impl: str = "chunked") -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` against `targets` ([n, h], [n]; no ignored rows)."""
    chunk = chunk_tokens(head.weight.shape[0] if hasattr(head, "weight") else head.out_features)
    if impl == "liger":
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        if not fusable(head):
            raise RuntimeError("--loss_impl liger needs a plain Linear head (no adapter on lm_head)")
        return LigerFusedLinearCrossEntropyLoss(reduction="sum")(head.weight, hidden, targets)
    if fusable(head):
        return _FusedLinearCrossEntropy.apply(hidden, head.weight, targets, chunk)
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(
            _chunk_loss,
            head,
            hidden[start : start + chunk],
            targets[start : start + chunk],
            use_reentrant=False,
        )
    return total


def causal_lm_loss(
    hidden: torch.Tensor,
    head,
    labels: torch.Tensor,
    num_items_in_batch=None,
    shift_labels: torch.Tensor | None = None,
    impl: str = "chunked",
) -> torch.Tensor:
    """transformers' ForCausalLMLoss (shift, sum, / num_items_in_batch or mean) without full logits."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    flat = shift_labels.reshape(-1).to(hidden.device)
    keep = flat.ne(IGNORE_INDEX).nonzero().squeeze(1)
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    total = head_loss_sum(rows, head, flat.index_select(0, keep), impl)
    if num_items_in_batch is None:
        return total / keep.numel()  # 0/0 -> nan when nothing is supervised, as in transformers
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _causal_lm(model):
    """The transformers causal LM inside peft's wrappers (the object whose forward makes the logits)."""
    inner = model
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    if not (hasattr(inner, "model") and hasattr(inner, "get_output_embeddings")):
        raise ValueError(
            f"--loss_impl chunked/liger needs a decoder with an output head (model.model + lm_head); "
            f"{type(inner).__name__} has none: use --loss_impl plain"
        )
    return inner


def install(model, impl: str = "chunked"):
    """Make `model`'s training forward compute the loss with `impl` (see the module docstring).

    Idempotent; `plain` restores the model's own forward. Returns `model`.
    """
    if impl not in LOSS_IMPLS:
        raise ValueError(f"loss implementation {impl!r}: choose one of {', '.join(LOSS_IMPLS)}")
    lm = _causal_lm(model)
    if impl == "liger" and (problem := liger_problem()):
        raise RuntimeError(f"--loss_impl liger: {problem}; use --loss_impl chunked (exact, any device)")
    vars(lm).pop("forward", None)  # an earlier install: back to the class's forward
    lm._llama_sft_loss_impl = impl
    if impl == "plain":
        return model
    plain = lm.forward  # bound method of the class

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, **kwargs):
        wants_logits = kwargs.get("return_dict") is False or kwargs.get("output_hidden_states")
        if labels is None or not self.training or not torch.is_grad_enabled() or wants_logits:
            return plain(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                labels=labels,
                **kwargs,
            )
        from transformers.modeling_outputs import CausalLMOutputWithPast

        num_items = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        kwargs.pop("logits_to_keep", None)
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        loss = causal_lm_loss(
            outputs.last_hidden_state, self.get_output_embeddings(), labels, num_items, shift_labels, impl
        )
        return CausalLMOutputWithPast(loss=loss, logits=None, cache=getattr(outputs, "cache", None))

    lm.forward = types.MethodType(forward, lm)
    return model


def installed(model) -> str:
    """The loss implementation `model` trains with."""
    lm = _causal_lm(model)
    return lm._llama_sft_loss_impl if "forward" in vars(lm) else "plain"
