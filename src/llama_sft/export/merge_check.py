"""Before `merge` writes anything: the merged model must give the logits the adapter gives.

A merge that silently went wrong (an adapter that did not load, a scaling applied twice, a 4-bit base
dequantized in the wrong layout) still writes a model that loads and talks; only comparing it
with what was trained shows the damage. So `merge` runs a few short conversations, rendered with
the run's own template, through the adapter on its base (the reference) and through the merged
model, and refuses to write when any logit differs by more than the tolerance.

The reference is the model as trained: LoRA on the base in the merge dtype; for QLoRA, LoRA on the
4-bit NF4 base computing in the run's compute dtype (`--qlora_base original`: LoRA on the
unquantized base, the model chat and eval load). The tolerance is what rounding alone explains:
float32 merges agree to ~1e-5 (W x + B A x versus (W + B A) x), so 1e-3 leaves room and still
catches a wrong merge by orders of magnitude; a 16-bit merge rounds every merged weight to 8
(bfloat16) or 11 (float16) significant bits, which moves logits by up to ~0.1-0.5 on a 30-layer
model, so 16-bit merges are allowed 1.0 (a wrong merge moves them by several units).
"""

from __future__ import annotations

import torch

from ..data.messages import Message
from ..data.templates import SpecialText, Template
from ..exceptions import ConfigError

# Largest allowed |merged - reference| over every logit of the check prompts, by the coarser dtype
# of the two models (see the module docstring for where the numbers come from).
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 1.0, torch.float16: 1.0}
CHECK_CONVERSATIONS = (
    (Message("user", "Hello! Who are you?"),),
    (Message("user", "What is the capital of France?"),),
    (
        Message("user", "Give me one word for happy."),
        Message("assistant", "Joyful."),
        Message("user", "And one for sad?"),
    ),
)


class MergeCheckFailed(ConfigError):
    """The merged model does not reproduce the adapter; nothing was written."""


def default_tolerance(*dtypes: torch.dtype) -> float:
    return max(TOLERANCE.get(d, 1.0) for d in dtypes)


def check_inputs(template: Template, tokenizer) -> list[torch.Tensor]:
    """Token ids of the check conversations, rendered exactly as training renders them, ending with
    the generation prompt (so the last logits are the first reply token's)."""
    special = SpecialText.from_tokenizer(tokenizer)
    texts = [
        template.render(list(c), add_generation_prompt=True, special=special).text
        for c in CHECK_CONVERSATIONS
    ]
    return [tokenizer(t, add_special_tokens=False, return_tensors="pt")["input_ids"] for t in texts]


@torch.no_grad()
def logits_on(model, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(input_ids=ids.to(device)).logits.float().cpu() for ids in inputs]
    model.train(was_training)
    return out


def compare(reference: list[torch.Tensor], merged: list[torch.Tensor], tolerance: float) -> dict:
    """Raises MergeCheckFailed beyond `tolerance`; returns what was measured (kept in the run record)."""
    diff = max((m - r).abs().max().item() for r, m in zip(reference, merged, strict=True))
    top1 = sum(int((m.argmax(-1) == r.argmax(-1)).sum()) for r, m in zip(reference, merged, strict=True))
    tokens = sum(r.shape[1] for r in reference)
    result = {
        "prompts": len(reference),
        "tokens": tokens,
        "max_abs_logit_diff": diff,
        "tolerance": tolerance,
        "top1_agreement": round(top1 / tokens, 4),
    }
    if not diff <= tolerance:  # also refuses NaN
        raise MergeCheckFailed(
            f"merge check failed: the merged model's logits differ from the adapter's by up to {diff:.4g} "
            f"(tolerance {tolerance:g}; next-token agreement {result['top1_agreement']:.0%} over {tokens} "
            "tokens of the check prompts), so nothing was written. A merge this far off is not rounding: "
            "check that the run directory's adapter matches its base. --tolerance X overrides the limit."
        )
    return result
