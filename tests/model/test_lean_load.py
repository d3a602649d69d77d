"""Rank-0-only loading under FSDP: the other ranks' empty model costs no host memory for its weights
but carries the real RoPE buffers (which accelerate keeps; the weights come by broadcast)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llama_sft.model.lean_load import empty_model, reads_weights
from llama_sft.train.host_memory import anon_mb


def test_empty_model_allocates_no_resident_weights_and_real_rope_buffers():
    config = LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=6, num_attention_heads=8
    )
    before = anon_mb()
    model = empty_model(config, torch.float32)
    grown = anon_mb() - before
    size_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    assert size_mb > 300 and grown < 0.1 * size_mb, (size_mb, grown)
    reference = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 1}))
    assert torch.equal(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    assert model.lm_head.weight.shape == (32000, 1024) and not model.config.use_cache


def test_only_rank_0_reads_when_fsdp_asks_for_cpu_ram_efficient_loading(monkeypatch):
    class Args:
        fsdp = "full_shard"

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not reads_weights(Args, quantized=False)
    assert reads_weights(Args, quantized=True)  # bitsandbytes quantizes while reading: every rank reads
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert reads_weights(Args, quantized=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    assert reads_weights(Args, quantized=False)
