"""Measured peak memory of real training steps, to check the planner against.

A run builds a random-init `LlamaForCausalLM` of the given shape (no weights are downloaded),
applies peft LoRA when asked, and trains a few steps through transformers' `Trainer` with `--bf16`,
the path `llama-sft train` takes.

On a GPU the peak is `torch.cuda.max_memory_allocated()`. On the CPU torch has no such counter,
so we read the one its CPU allocator keeps for the profiler: with
`torch.profiler.profile(profile_memory=True)` every allocation and free made through c10's CPU
allocator is reported with the allocator's running total of live bytes (`total_allocated`), and
the peak is the largest of those totals. The profiler must start before the model is built, in a
fresh process (`python -m llama_sft.plan.measure SPEC`), because the allocator only counts blocks
allocated while profiling is on. Memory that does not go through c10's allocator (the Python heap,
oneDNN scratch space) is not seen; neither is it by `max_memory_allocated` on a GPU.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from .shapes import DEFAULT_TARGETS, ModelShape


@dataclass
class RunSpec:
    """One measured run: a shape, a method and the batch it trains on."""

    shape: dict
    method: str = "lora"
    gradient_checkpointing: bool = False
    micro_batch_size: int = 1
    seq_len: int = 256
    steps: int = 2
    grad_accum: int = 1
    lora_r: int = 8
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    lora_dropout: float = 0.05
    precision: str = "bf16"
    attn: str = "sdpa"
    padding: bool = False  # end every row with one pad token, so attention gets a mask
    zero_stage: int = 0  # > 0: DeepSpeed ZeRO through the Trainer; launch one process per rank
    device: str = "cpu"
    seed: int = 0


def deepspeed_config(stage: int) -> dict:
    """A ZeRO config with transformers' "auto" values (bucket sizes from hidden_size), no offload."""
    return {
        "bf16": {"enabled": True},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": {
            "stage": stage,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
        },
    }


def build_model(spec: RunSpec):
    """Random-init model of `spec.shape` with the method's dtypes, adapters and quantization."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = spec.shape
    config = LlamaConfig(
        **{k: v for k, v in shape.items() if k != "name"},
        use_cache=False,
        max_position_embeddings=max(4096, spec.seq_len),
        attn_implementation=spec.attn,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(spec.seed)
    dtype = torch.float32 if (spec.method == "full" and spec.precision == "mixed") else torch.bfloat16
    # QLoRA: build in bf16 on the CPU, then quantize layer by layer onto the GPU.
    with torch.device("cpu" if spec.method == "qlora" else spec.device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    if spec.method == "full":
        return model
    if spec.method == "qlora":
        model = _quantize_nf4(model).to(spec.device)
        from peft import prepare_model_for_kbit_training

        # Casts and freezes only; the Trainer turns checkpointing on (peft would use the deprecated name).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=spec.lora_r,
        lora_alpha=2 * spec.lora_r,
        lora_dropout=spec.lora_dropout,
        target_modules=list(spec.lora_targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _quantize_nf4(model):
    """Swap each decoder projection for a bitsandbytes NF4 Linear4bit holding the same weight (CUDA only)."""
    import bitsandbytes as bnb
    import torch

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, linear in list(parent.named_children()):
                if not isinstance(linear, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(
                    linear.in_features,
                    linear.out_features,
                    bias=False,
                    compute_dtype=torch.bfloat16,
                    quant_type="nf4",
                    compress_statistics=True,
                    device="cpu",
                )
                q.weight = bnb.nn.Params4bit(
                    linear.weight.data.to("cpu"),
                    requires_grad=False,
                    quant_type="nf4",
                    compress_statistics=True,
                )
                setattr(parent, name, q.to("cuda"))
                del linear
    return model


class _Rows:
    """Full-length rows of random token ids; labels are the inputs (every token trained)."""

    def __init__(self, n: int, seq_len: int, vocab: int, padding: bool, seed: int):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, vocab, (n, seq_len), generator=g)
        self.mask = torch.ones_like(self.ids)
        if padding:
            self.ids[:, -1], self.mask[:, -1] = 0, 0

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i].clone()
        labels[self.mask[i] == 0] = -100
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": labels}


def training_args(spec: RunSpec, output_dir: str):
    """Built before the model: under ZeRO-3 it makes the model's parameters partitioned at creation."""
    from transformers import TrainingArguments

    if spec.zero_stage:
        import deepspeed

        deepspeed.init_distributed()
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=spec.micro_batch_size,
        max_steps=spec.steps,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=1e-4,
        bf16=True,
        use_cpu=spec.device == "cpu",
        activation_checkpointing=spec.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=spec.seed,
        deepspeed=deepspeed_config(spec.zero_stage) if spec.zero_stage else None,
    )


def train_steps(model, args, spec: RunSpec) -> None:
    from transformers import Trainer

    rows = _Rows(
        spec.micro_batch_size * spec.steps * spec.grad_accum,
        spec.seq_len,
        spec.shape["vocab_size"],
        spec.padding,
        spec.seed,
    )
    Trainer(model=model, args=args, train_dataset=rows).train()


def _cpu_allocation_totals(prof) -> list[tuple[int, int]]:
    """(time, live bytes) after every CPU allocation or free the profiler saw."""
    out, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        extra = node.extra_fields
        if type(extra).__name__ == "_ExtraFields_Allocation" and str(extra.device) == "cpu":
            out.append((node.start_time_ns, extra.total_allocated))
    return sorted(out)


def measure(spec: RunSpec) -> dict:
    """Build, train and report the peak (bytes) and the memory held before training started."""
    import torch

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if spec.device == "cpu":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                args = training_args(spec, tmp)
                model = build_model(spec)
                before = time.time_ns()
                train_steps(model, args, spec)
            totals = _cpu_allocation_totals(prof)
            peak = max(total for _, total in totals)
            at_start = max((total for t, total in totals if t <= before), default=0)
            # The profiler clock may not be wall time: fall back to the parameters' own bytes.
            resident = _param_bytes(model)
        else:
            args = training_args(spec, tmp)
            model = build_model(spec)
            at_start = resident = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()  # the training peak, not the build's
            train_steps(model, args, spec)
            peak = torch.cuda.max_memory_allocated()
    return {
        "peak_bytes": int(peak),
        "model_bytes": int(resident),
        "before_train_bytes": int(at_start),
        "seconds": round(time.time() - started, 1),
        "rank": int(os.environ.get("RANK", 0)),
        "spec": asdict(spec),
    }


def _param_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def shape_dict(shape: ModelShape) -> dict:
    d = {
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "vocab_size": shape.vocab_size,
        "tie_word_embeddings": shape.tie_word_embeddings,
    }
    if shape.head_dim:
        d["head_dim"] = shape.head_dim
    return d


def main(argv: list[str] | None = None) -> int:
    """`python -m llama_sft.plan.measure '{"shape": {...}, ...}'` prints one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    spec = RunSpec(**json.loads(argv[0]))
    if spec.zero_stage:
        os.environ.setdefault("DS_ACCELERATOR", spec.device)
    result = json.dumps(measure(spec))
    if len(argv) > 1:  # one file per rank when launched by torchrun
        with open(f"{argv[1]}.rank{os.environ.get('RANK', 0)}.json", "w", encoding="utf-8") as f:
            f.write(result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
