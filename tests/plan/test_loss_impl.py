"""The planner models the training loss (train/loss.py) and activation offloading (train/offload.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from llama_sft.plan.memory import GIB, Setting, estimate, logits_bytes, loss_chunk_tokens
from llama_sft.plan.search import largest_batch
from llama_sft.plan.shapes import load_shape


@pytest.mark.parametrize("vocab", [64, 32000, 49152, 128256, 256000])
def test_chunk_size_is_the_trainings(vocab):
    from llama_sft.train.loss import chunk_tokens

    assert loss_chunk_tokens(vocab) == chunk_tokens(vocab)


def test_chunked_logits_by_hand():
    shape = load_shape("llama3-8b")  # V 128,256, h 4096, untied head
    s = Setting(method="lora", micro_batch_size=2, seq_len=4096)
    v, h, t, c = 128256, 4096, 8192, loss_chunk_tokens(128256)
    assert c == 128
    assert logits_bytes(shape, s) == {"forward": 2 * h * t + 8 * v * c, "loss-backward": 2 * h * t}
    full = replace(s, method="full")  # + the head's fp32 gradient accumulator and its bf16 cast
    assert logits_bytes(shape, full)["loss-backward"] == 2 * h * t + 6 * v * h
    plain = replace(s, loss_impl="plain")
    assert logits_bytes(shape, plain) == {"forward": 10 * v * t, "loss-backward": 12 * v * t}
    assert estimate(shape, plain).logits > 10 * estimate(shape, s).logits


def test_the_24gib_example_fits_a_batch_3x_larger():
    # the example: SmolLM2-135M's shape, 1 x 24 GiB, seq 4096, LoRA, gradient checkpointing
    shape = load_shape("llama2-7b")
    shape = replace(
        shape, name="smollm2-135m", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    )  # fmt: skip
    s = Setting(seq_len=4096, gradient_checkpointing=True)
    plain = largest_batch(shape, replace(s, loss_impl="plain"), 24 * GIB)
    chunked = largest_batch(shape, s, 24 * GIB)
    assert plain.micro_batch_size == 9 and plain.breakdown.logits > 20 * GIB
    assert chunked.micro_batch_size >= 3 * plain.micro_batch_size
    assert chunked.breakdown.logits < plain.breakdown.logits / 10


def test_activation_offloading_moves_activations_to_host():
    shape = load_shape("llama2-7b")
    s = Setting(method="lora", micro_batch_size=1, seq_len=16384)
    on, off = estimate(shape, replace(s, activation_offloading=True)), estimate(shape, s)
    assert on.activations < off.activations / 10
    assert on.host > 0.9 * (off.activations - on.activations)
    assert any("activations offloaded" in n for n in on.notes)


def test_cli_flags(capsys):
    from llama_sft.cli.main import main

    args = [
        "plan",
        "--model",
        "llama3-8b",
        "--gpus",
        "1",
        "--gpu-memory",
        "80GiB",
        "--method",
        "lora",
        "--json",
    ]
    assert main(args + ["--seq-len", "8192"]) == 0
    chunked = json.loads(capsys.readouterr().out)
    assert main(args + ["--seq-len", "8192", "--loss-impl", "plain", "--activation-offloading"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert {r["loss_impl"] for r in chunked} == {"chunked"} and {r["loss_impl"] for r in plain} == {"plain"}
    assert all(r["activation_offloading"] for r in plain)
    with pytest.raises(SystemExit):
        main(args + ["--loss-impl", "fused"])
