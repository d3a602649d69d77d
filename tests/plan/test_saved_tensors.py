"""The per-layer activation formula equals the bytes autograd really saves in a LLaMA decoder layer,
under bf16 autocast as the Trainer runs it (tiny random model, CPU)."""

from __future__ import annotations

import pytest

from llama_sft.plan.measure import RunSpec, build_model, shape_dict
from llama_sft.plan.memory import Setting, layer_saved
from llama_sft.plan.shapes import ModelShape

# Distinct sizes so that a wrong term cannot hide behind an equal one.
SHAPE = ModelShape(
    "t",
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=3,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=100,
)
B, S = 2, 16


def saved_per_token(method: str, precision: str = "bf16", attn: str = "sdpa", padding: bool = False) -> float:
    import torch

    spec = RunSpec(
        shape=shape_dict(SHAPE),
        method=method,
        precision=precision,
        attn=attn,
        padding=padding,
        micro_batch_size=B,
        seq_len=S,
    )
    model = build_model(spec)
    model.train()
    ids = torch.randint(3, SHAPE.vocab_size, (B, S))
    mask = torch.ones_like(ids)
    if padding:
        mask[:, -1] = 0
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    layer = model.get_base_model().model.layers[1] if method != "full" else model.model.layers[1]
    inside, seen, total = [False], set(), [0]
    layer.register_forward_pre_hook(
        lambda *a: inside.__setitem__(0, True)
    )  # layer 0 saved the shared RoPE tables
    layer.register_forward_hook(lambda *a: inside.__setitem__(0, False))

    def pack(t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        # Weights and their bf16 autocast copies (2-D, not token-major) are counted as weights, not here.
        is_weight = key in params or (t.dim() == 2 and t.shape[0] != B * S)
        if inside[0] and key not in seen and not is_weight:
            total[0] += storage.nbytes()
        seen.add(key)
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        model(input_ids=ids, attention_mask=mask, labels=ids)
    return total[0] / (B * S)


@pytest.mark.parametrize(
    "method,precision,attn,padding",
    [
        ("lora", "bf16", "sdpa", False),
        ("lora", "bf16", "sdpa", True),
        ("lora", "bf16", "eager", False),
        ("full", "bf16", "sdpa", False),
        ("full", "mixed", "sdpa", False),
        ("full", "bf16", "eager", True),
    ],
)
def test_layer_formula_matches_autograd(method, precision, attn, padding):
    s = Setting(
        method=method,
        precision=precision,
        attn=attn,
        attention_mask=padding or attn == "eager",
        seq_len=S,
        device="cpu",
    )
    assert saved_per_token(method, precision, attn, padding) == layer_saved(SHAPE, s)
