"""Host RAM per rank while `llama-sft train` loads the weights, by who reads the checkpoint.

Loading, not training, sets the host-memory peak of most runs: a rank that reads the checkpoint
holds the whole model in host RAM (the memory-mapped safetensors, in the load dtype) before the
Trainer moves or shards it onto its GPU. Who reads, with transformers 5.24 and accelerate 1.15:

| sharding | reads the checkpoint | the other ranks |
|---|---|---|
| none (DDP), ZeRO-1/2 | every rank | - |
| ZeRO-3 | global rank 0 (transformers builds the model inside `zero.Init`; the others load on `meta`) | receive each gathered parameter on the GPU |
| FSDP with `cpu_ram_efficient_loading` (the shipped `configs/accelerate/fsdp.yaml`) | the first rank of each node (model/lean_load.py) | build an empty model; shards arrive by broadcast |
| FSDP without it (bare `--fsdp` flags) | every rank | - |
| QLoRA, any sharding | every rank (bitsandbytes quantizes while reading) | - |

A reader holds `weights` bytes: 2 per parameter (bf16), 4 for full fine-tuning in mixed precision
(fp32 weights). When the checkpoint is stored in the load dtype those are page cache, shared by the
readers of a node; when it is converted (an fp16 or fp32 checkpoint loaded in bf16) each reader
holds a private copy. Per node this counts one copy per reader, the upper bound. Measured on CPU
(tests/train/test_lean_load_memory.py, docs/distributed.md; 2 processes): the non-reading rank's
anonymous memory peaked at its shard (on CPU the device is host memory), the largest parameter
twice over (the whole tensor in flight and the copy made of it: 6 MiB for a 292 MiB random LLaMA,
108 MiB for SmolLM2-135M's embedding) and ~40 MiB of fixed costs. On a GPU the shard and the tensor
in flight are device memory, so `other_bytes` is 0: nothing that grows with the model.

Offloaded shards and optimizer states (`offload params/optimizer`) come on top during training;
memory.py counts them (`Breakdown.host`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory import GIB, Setting
from .shapes import ModelShape


@dataclass(frozen=True)
class LoadHost:
    """Host bytes while loading: on a rank that reads the checkpoint and on one that does not."""

    reader_bytes: float
    other_bytes: float
    readers_per_node: int
    ranks_per_node: int
    who: str  # who reads, in words

    @property
    def per_node(self) -> float:
        others = self.ranks_per_node - self.readers_per_node
        return self.readers_per_node * self.reader_bytes + others * self.other_bytes

    def note(self) -> str:
        if self.readers_per_node == self.ranks_per_node:
            return f"loading: {self.who} reads the checkpoint, {self.reader_bytes / GIB:.1f} GiB of host RAM each"
        return (
            f"loading: {self.who} reads the checkpoint ({self.reader_bytes / GIB:.1f} GiB of host RAM), "
            f"the other ranks {self.other_bytes / GIB:.1f} GiB"
        )


def load_host(shape: ModelShape, s: Setting, gpus_per_node: int = 1, lean_fsdp: bool = True) -> LoadHost:
    """Host RAM while loading for one setting. `lean_fsdp`: FSDP with `cpu_ram_efficient_loading`."""
    per_param = 4 if (s.method == "full" and s.precision == "mixed" and not s.deepspeed) else 2
    weights = per_param * shape.total_params
    ranks = max(1, min(gpus_per_node, s.world_size))
    # On a CPU the device is host memory: a receiving rank keeps its shard there, and the parameter in
    # flight (broadcast whole by accelerate, gathered whole by DeepSpeed) with the copy made of it.
    largest = per_param * max(shape.vocab_size, shape.intermediate_size) * shape.hidden_size
    other = weights / s.world_size + 2 * largest if s.device == "cpu" else 0.0
    quantized = s.method == "qlora"
    if s.sharding == "zero3" and not quantized:
        return LoadHost(weights, other, 1, ranks, "rank 0")
    if s.sharding == "fsdp" and lean_fsdp and not quantized:
        return LoadHost(weights, other, 1, ranks, "each node's first rank")
    return LoadHost(weights, weights, ranks, ranks, "every rank")
