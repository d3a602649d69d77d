"""The memory model's arithmetic, checked by hand and against what PyTorch and peft really do."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llama_sft.plan.memory import NF4_BYTES, Setting, _params, estimate, layer_saved
from llama_sft.plan.shapes import DEFAULT_TARGETS, PRESETS, ModelShape, load_shape

# hidden 8, 2 heads of 4, one KV head, intermediate 16, vocab 10: small enough to add up by hand.
HAND = ModelShape(
    "hand",
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=10,
)


def test_hand_parameter_counts():
    # q 8x8, k 8x4, v 8x4, o 8x8, gate/up/down 8x16 -> 576; norms 2x8 + final 8; embedding and head 80 each.
    assert HAND.layer_linear_params == 64 + 32 + 32 + 64 + 3 * 128
    assert HAND.total_params == 576 + 16 + 8 + 80 + 80
    # LoRA r=2 on every projection: r * (in + out) each.
    assert HAND.lora_params(2) == 2 * ((8 + 8) + (8 + 4) + (8 + 4) + (8 + 8) + 2 * (8 + 16) + (16 + 8))


def test_hand_breakdown_full_bf16():
    s = Setting(
        method="full", micro_batch_size=1, seq_len=4, attention_mask=False, device="cpu", loss_impl="plain"
    )
    b = estimate(HAND, s)
    p = 760
    assert (b.weights, b.trainable, b.grads, b.optimizer) == (2 * p, 0, 2 * p, 4 * p)
    # Per token per layer: 2 norms x (fp32 input 32 + rsqrt 4 + bf16 normed 16), q/k/v input 16, q 16, k 8,
    # v 8, output 16, logsumexp 8, gate/up input 16, gate, silu, up, product 4 x 32.
    assert layer_saved(HAND, s) == 2 * (32 + 4 + 16) + 16 + 16 + 8 + 8 + 16 + 8 + 16 + 4 * 32 == 320
    final = 32 + 4 + 16 + 16  # final norm (fp32 input, rsqrt, normed) and the head's input
    assert b.activations == 4 * (320 + final)
    assert b.logits == 12 * 10 * 4 and b.phase == "loss-backward"
    assert b.overhead == 0 and b.peak == b.allocated == 2 * p + 2 * p + 4 * p + 4 * (320 + final) + 480


def test_cuda_adds_overhead_and_mixed_precision_doubles_states():
    s = Setting(method="full", micro_batch_size=1, seq_len=4, attention_mask=False)
    b = estimate(HAND, s)
    assert b.overhead > 0.7 * 1024**3
    mixed = _params(HAND, replace(s, precision="mixed"))
    assert (mixed["weights"], mixed["grads"], mixed["optimizer"]) == (4 * 760, 4 * 760, 8 * 760)


def test_qlora_weights_are_nf4_on_projections():
    s = Setting(method="qlora", micro_batch_size=1, seq_len=4, device="cpu", lora_r=2)
    b = estimate(HAND, s)
    assert b.weights == pytest.approx(NF4_BYTES * 576 + 4 * (760 - 576) + 2 * 80 + 2 * HAND.lora_params(2))
    assert any("CUDA" in n for n in b.notes)


@pytest.mark.parametrize("world", [2, 8])
def test_sharding_divides_the_right_terms(world):
    shape = load_shape("llama2-7b")
    p = shape.total_params
    base = Setting(method="full", world_size=world, micro_batch_size=1, seq_len=512)
    z = {st: _params(shape, replace(base, sharding=st)) for st in ("zero1", "zero2", "zero3", "fsdp")}
    # ZeRO-1: fp32 master and Adam states split; bf16 weights and grads whole.
    assert z["zero1"]["trainable"] == pytest.approx(4 * p / world)
    assert z["zero1"]["optimizer"] == pytest.approx(8 * p / world)
    assert z["zero1"]["grads"] == pytest.approx(2 * p) and z["zero1"]["weights"] == pytest.approx(2 * p)
    # ZeRO-2: grads too. ZeRO-3: weights too (plus the gathered ones it reuses: 1e9 parameters).
    assert z["zero2"]["grads"] == pytest.approx(2 * p / world) and z["zero2"]["weights"] == pytest.approx(
        2 * p
    )
    assert z["zero3"]["weights"] == pytest.approx(2 * p / world + 2 * 1e9)
    # FSDP: everything split, plus two gathered layers (and one layer's unsharded grads).
    layer = shape.layer_linear_params + shape.layer_norm_params
    assert z["fsdp"]["optimizer"] == pytest.approx(4 * p / world)
    assert z["fsdp"]["weights"] == pytest.approx(2 * p / world + 4 * layer)
    assert z["fsdp"]["grads"] == pytest.approx(2 * p / world + 2 * layer)
    # Plain DDP keeps a bucket copy of the grads; activations never depend on sharding.
    assert _params(shape, base)["buffers"] == pytest.approx(2 * p)
    shardings = ("none", "zero1", "zero2", "zero3", "fsdp")
    assert len({layer_saved(shape, replace(base, sharding=st)) for st in shardings}) == 1


def test_offload_moves_states_to_host():
    shape = load_shape("llama2-13b")
    s = Setting(method="full", sharding="zero3", world_size=8, micro_batch_size=1)
    on_gpu, off = estimate(shape, s), estimate(shape, replace(s, offload="optimizer"))
    assert off.optimizer == 0 and off.trainable == 0 and off.host > 0 and on_gpu.host == 0
    assert estimate(shape, replace(s, offload="params")).weights < on_gpu.weights
    with pytest.raises(ValueError, match="needs DeepSpeed"):
        Setting(offload="optimizer", sharding="fsdp")


def test_checkpointing_and_batch_scale_activations():
    shape = load_shape("llama2-7b")
    s = Setting(method="lora", micro_batch_size=2, seq_len=2048)
    plain, ckpt = estimate(shape, s), estimate(shape, replace(s, gradient_checkpointing=True))
    assert ckpt.activations < plain.activations / 5
    double = estimate(shape, replace(s, micro_batch_size=4))
    assert double.activations == pytest.approx(2 * plain.activations, rel=1e-6)


def test_logits_dominate_at_128k_vocab():
    s = Setting(
        method="lora", gradient_checkpointing=True, micro_batch_size=4, seq_len=2048, loss_impl="plain"
    )
    b = estimate(load_shape("llama3-8b"), s)
    assert b.phase == "loss-backward" and b.logits == 12 * 128256 * 4 * 2048


def test_default_targets_match_training_config():
    from llama_sft.config import DEFAULT_TARGETS as TRAIN_TARGETS

    assert list(DEFAULT_TARGETS) == list(TRAIN_TARGETS)


@pytest.mark.parametrize(
    "name,billions",
    [
        ("llama2-7b", 6.74),
        ("llama2-13b", 13.02),
        ("llama2-70b", 68.98),
        ("llama3-8b", 8.03),
        ("llama3-70b", 70.55),
    ],
)
def test_presets_have_the_published_sizes(name, billions):
    assert name in PRESETS and round(load_shape(name).total_params / 1e9, 2) == billions


def test_lora_count_equals_peft():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = ModelShape(
        "t",
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=64,
        )
    )
    assert sum(p.numel() for p in model.parameters()) == shape.total_params
    for targets in (DEFAULT_TARGETS, ("q_proj", "v_proj")):
        peft_model = get_peft_model(
            model, LoraConfig(r=4, target_modules=list(targets), task_type="CAUSAL_LM")
        )
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        assert trainable == shape.lora_params(4, targets)
        model = peft_model.unload()
