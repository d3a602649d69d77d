"""Packed rows on `sdpa_packed` carry no mask: the planner's formula for them equals what autograd saves,
and `llama-sft plan --packing packed` reaches the estimate instead of only echoing the flag."""

from __future__ import annotations

import json

import pytest

from llama_sft.cli.main import main
from llama_sft.plan.measure import RunSpec, build_model, shape_dict
from llama_sft.plan.memory import GIB, Setting, estimate, layer_saved
from llama_sft.plan.shapes import ModelShape, load_shape

SHAPE = ModelShape(
    "t",
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=3,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=100,
)
SEGMENTS = (9, 16, 7)  # three conversations in one packed row


def packed_saved_per_token(method: str) -> float:
    """Bytes autograd saves per token in decoder layer 1 for one packed row on sdpa_packed (bf16 autocast)."""
    import torch

    from llama_sft.train.packing import PackedCollator, use_packed_attention

    spec = RunSpec(
        shape=shape_dict(SHAPE), method=method, attn="sdpa", micro_batch_size=1, seq_len=sum(SEGMENTS)
    )
    model = build_model(spec)
    base = model if method == "full" else model.get_base_model()
    assert use_packed_attention(base) == "sdpa_packed"
    model.train()
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, SHAPE.vocab_size, (n,), generator=g).tolist() for n in SEGMENTS]
    batch = PackedCollator(0, sum(SEGMENTS))([{"input_ids": r, "labels": r} for r in rows])
    tokens = batch["input_ids"].numel()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    layer = base.model.layers[1]
    inside, seen, total = [False], set(), [0]
    layer.register_forward_pre_hook(lambda *a: inside.__setitem__(0, True))
    layer.register_forward_hook(lambda *a: inside.__setitem__(0, False))

    def pack(t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        is_weight = key in params or (t.dim() == 2 and t.shape[0] != tokens)
        if inside[0] and key not in seen and not is_weight:
            total[0] += storage.nbytes()
        seen.add(key)
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        model(**batch)
    return total[0] / tokens


@pytest.mark.parametrize("method", ["lora", "full"])
def test_packed_layer_formula_matches_autograd(method):
    s = Setting(method=method, attn="sdpa_packed", attention_mask=False, seq_len=sum(SEGMENTS), device="cpu")
    # The logsumexp is per segment (fp32, heads x length): the same bytes per token as one row's.
    assert packed_saved_per_token(method) == layer_saved(SHAPE, s)


def test_packed_rows_carry_no_mask():
    shape = load_shape("llama2-7b").with_layers(2)
    masked = estimate(shape, Setting(attn="sdpa", attention_mask=True, seq_len=4096, device="cpu"))
    packed = estimate(shape, Setting(attn="sdpa_packed", attention_mask=False, seq_len=4096, device="cpu"))
    # The mask (seq^2 bytes) and each layer's bf16 bias (2 x seq bytes per token) are gone.
    assert masked.activations - packed.activations >= 4096**2 + 2 * 2 * 4096 * 4096 - 1


def plan_rows(capsys, packing: str) -> list[dict]:
    argv = ["plan", "--model", "llama2-7b", "--gpus", "1", "--gpu-memory", "80GiB", "--method", "lora"]
    assert main([*argv, "--seq-len", "4096", "--packing", packing, "--json"]) == 0
    return [
        r for r in json.loads(capsys.readouterr().out) if r["sharding"] == "none" and r["offload"] == "none"
    ]


def test_plan_packing_reaches_the_estimate(capsys):
    padded, packed = plan_rows(capsys, "padded"), plan_rows(capsys, "packed")
    shape = load_shape("llama2-7b")
    for row in packed:
        s = Setting(
            attn="sdpa_packed",
            attention_mask=False,
            seq_len=4096,
            gradient_checkpointing=row["gradient_checkpointing"],
            micro_batch_size=max(row["micro_batch_size"], 1),
        )
        assert row["peak_gib"] == pytest.approx(estimate(shape, s).peak / GIB, abs=0.01)
    # Without the mask, more rows fit (the flag changed the answer, not just the JSON).
    no_ckpt = lambda rows: next(r for r in rows if not r["gradient_checkpointing"])  # noqa: E731
    a, b = no_ckpt(packed), no_ckpt(padded)
    assert a["micro_batch_size"] > b["micro_batch_size"] or (
        a["micro_batch_size"] == b["micro_batch_size"] and a["peak_gib"] < b["peak_gib"]
    )
    assert {r["packing"] for r in packed} == {"packed"}
