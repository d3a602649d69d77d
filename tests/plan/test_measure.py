"""A real (tiny) training run on CPU measured through the profiler's allocator count, against the model."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pytest

from llama_sft.plan.measure import RunSpec, shape_dict
from llama_sft.plan.memory import Setting, estimate
from llama_sft.plan.shapes import ModelShape


@pytest.mark.slow
@pytest.mark.parametrize("method,ckpt,accum", [("lora", False, 1), ("full", True, 2)])
def test_measured_peak_matches_prediction(method, ckpt, accum):
    shape = ModelShape(
        "t",
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=2000,
    )
    spec = RunSpec(
        shape=shape_dict(shape),
        method=method,
        gradient_checkpointing=ckpt,
        micro_batch_size=2,
        seq_len=128,
        grad_accum=accum,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "llama_sft.plan.measure", json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
    predicted = estimate(
        shape,
        Setting(
            method=method,
            gradient_checkpointing=ckpt,
            micro_batch_size=2,
            seq_len=128,
            attention_mask=False,
            grads_resident=accum > 1,
            device="cpu",
            loss_impl="plain",  # measure.py trains with transformers' own loss
        ),
    )
    assert abs(predicted.allocated / measured - 1) < 0.10
