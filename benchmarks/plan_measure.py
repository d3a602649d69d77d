"""`llama_sft.plan.measure` for packed rows and other losses: the planner's harness with llama-sft's train/ on top.

    python benchmarks/plan_measure.py '{"spec": {...RunSpec...}, "packed": 4}'
    python benchmarks/plan_measure.py '{"spec": {...RunSpec...}, "loss": "chunked"}'

`llama_sft.plan` sits on the ground floor and cannot import `train` (where `PackedCollator` and the
`sdpa_packed` kernel live), so the packed variant of a measured run is assembled here: rows of
`packed` conversations of equal length end to end, with positions restarting per conversation and
varlen boundaries, trained on `sdpa_packed` exactly as `llama-sft train --packing packed` does. With
`loss`, train/loss.py's `install(model, loss)` runs right after the harness builds the model, as
`llama-sft train --loss_impl` does (the Trainer's `num_items_in_batch` reaches it unchanged).
Prints one JSON line, as `python -m llama_sft.plan.measure` does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llama_sft.plan import measure as harness  # noqa: E402


def packed_train_steps(segments: int):
    def train_steps(model, args, spec):
        import torch
        from transformers import Trainer

        from llama_sft.train.packing import PackedCollator, use_packed_attention

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        use_packed_attention(base)
        g = torch.Generator().manual_seed(spec.seed)
        n = spec.micro_batch_size * spec.steps * spec.grad_accum
        size = spec.seq_len // segments
        rows = []
        for _ in range(n):  # one dataset item = one packed row of `segments` conversations
            ids = torch.randint(3, spec.shape["vocab_size"], (segments, size), generator=g).tolist()
            rows.append({"input_ids": sum(ids, []), "labels": sum(ids, []), "seq_lengths": [size] * segments})
        Trainer(
            model=model, args=args, train_dataset=rows, data_collator=PackedCollator(0, spec.seq_len)
        ).train()

    return train_steps


def with_loss(impl: str):
    """`harness.build_model`, then train/loss.py's `install` (the Trainer then trains with `impl`)."""
    build = harness.build_model

    def build_model(spec):
        from llama_sft.train.loss import install, installed

        model = install(build(spec), impl)
        assert installed(model) == impl
        return model

    return build_model


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    job = json.loads(sys.argv[1])
    spec = harness.RunSpec(**job["spec"])
    if job.get("packed"):
        harness.train_steps = packed_train_steps(job["packed"])
    if job.get("loss", "plain") != "plain":
        harness.build_model = with_loss(job["loss"])
    print(json.dumps(harness.measure(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
