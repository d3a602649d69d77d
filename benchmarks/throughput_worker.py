"""One system of benchmarks/throughput.py in its own process: build the model, train a few steps, time them.

Run by the orchestrator as `python benchmarks/throughput_worker.py SPEC_JSON`; prints one JSON line.
Every system trains through a transformers Trainer (ours: llama-sft's `SFTTrainer` and collators; TRL:
its `SFTTrainer`; FastChat: transformers' `Trainer` on fschat's `preprocess` output) on the same
conversations and the same model. The first step is warm-up and not timed; then `timed_steps` steps
are timed one by one in CPU seconds of this process (`time.process_time`, one torch thread), which
other jobs on a shared machine barely disturb, and in wall seconds.

Checks that the run trained (a timed run that did not is a broken benchmark, not a fast one): the
gradient norm the Trainer computes before every optimizer step is finite and non-zero, and the loss
on the first batch, recomputed after the last step, is below the loss the first step saw.

The epoch's token counts need no compute: every batch of the system's epoch is collated once, before
training, to count supervised tokens (after the causal shift), tokens computed (rows x width) and
real tokens. The reported rate is supervised/computed tokens of the epoch times the median computed
tokens per CPU second of the timed steps; see the orchestrator's docstring for why.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

IGNORE = -100
WARMUP_STEPS = 1


def counts(batch: dict) -> tuple[int, int, int]:
    """(supervised tokens after the shift, tokens computed, real tokens) of one collated batch."""
    labels, ids = batch["labels"], batch["input_ids"]
    supervised = int(labels[..., 1:].ne(IGNORE).sum())
    # Packed rows (one a batch here) carry no padding; padded batches say which tokens are real.
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(ids.numel())
    return supervised, int(ids.numel()), real


def epoch_counts(trainer) -> dict:
    """Collate every batch of the epoch the trainer would run (without training) and count tokens."""
    loader = trainer.get_train_dataloader()
    total = [0, 0, 0]
    steps = 0
    for batch in loader:
        for k, v in enumerate(counts(batch)):
            total[k] += v
        steps += 1
    return {"steps": steps, "supervised": total[0], "computed": total[1], "real": total[2]}


class Recorder:
    """Collator wrapper (keeps the first batch and each step's counts) and Trainer callback (times steps)."""

    def __init__(self, collator):
        self.collator, self.first, self.batches = collator, None, []
        self.begin, self.steps = None, []  # steps: (cpu s, wall s)

    def __call__(self, features):
        batch = self.collator(features)
        if self.first is None:
            self.first = {k: (v.clone() if hasattr(v, "clone") else v) for k, v in batch.items()}
        self.batches.append(counts(batch))
        return batch

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class StepClock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                outer.begin = (time.process_time(), time.perf_counter())

            def on_step_end(self, args, state, control, **kwargs):
                cpu, wall = time.process_time(), time.perf_counter()
                outer.steps.append((cpu - outer.begin[0], wall - outer.begin[1]))

        return StepClock()


def build_model(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from llama_sft.train.packing import PACKED_SDPA, register_packed_attention

    register_packed_attention()
    attn = PACKED_SDPA if spec["attention"] == "sdpa_packed" else "sdpa"
    torch.manual_seed(spec["seed"])
    if spec["model"]["kind"] == "pretrained":
        model = AutoModelForCausalLM.from_pretrained(
            spec["model"]["path"], dtype=torch.float32, attn_implementation=attn
        )
    else:
        config = LlamaConfig(**spec["model"]["config"], use_cache=False, attn_implementation=attn)
        model = LlamaForCausalLM(config)
    model.config.use_cache = False
    if spec["model"].get("lora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **spec["model"]["lora"]))
    return model


def training_args(spec: dict, **extra) -> dict:
    return dict(
        output_dir=spec["out"],
        max_steps=WARMUP_STEPS + spec["timed_steps"],
        learning_rate=spec["model"]["learning_rate"],
        weight_decay=0.0,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        seed=spec["seed"],
        bf16=False,
        gradient_checkpointing=False,
        remove_unused_columns=False,
        **extra,
    )


def build_trainer(spec: dict, model, blob: dict):
    """The Trainer each system trains with (the orchestrator's SYSTEMS table says what each one is)."""
    import datasets
    from transformers import Trainer, TrainingArguments, default_data_collator

    from llama_sft.train.collator import PaddingCollator
    from llama_sft.train.packing import PackedCollator, PackedDataset
    from llama_sft.train.trainer import SFTTrainer

    system, rows, pad, max_length = spec["system"], blob["rows"], blob["pad"], spec["max_length"]
    batch = spec["batch"]
    if system.startswith("trl"):
        from transformers import PreTrainedTokenizerFast
        from trl import SFTConfig
        from trl import SFTTrainer as TRLTrainer

        tokenizer = PreTrainedTokenizerFast.from_pretrained(blob["tokenizer_dir"])
        tokenizer.pad_token_id = pad
        data = datasets.Dataset.from_list(
            [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
        )
        args = SFTConfig(
            **training_args(spec) | {"remove_unused_columns": True},
            per_device_train_batch_size=batch,
            packing=True,  # bfd, padding-free: TRL's fastest path
            max_length=max_length,
        )
        return TRLTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    if system == "fastchat_own":
        fc = blob["fastchat"]
        data = [
            {k: fc[k][i] for k in ("input_ids", "labels", "attention_mask")}
            for i in range(len(fc["input_ids"]))
        ]
        args = TrainingArguments(**training_args(spec), per_device_train_batch_size=batch)
        return Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
    rows = [dict(r, sample_index=i) for i, r in enumerate(rows)]
    if system == "fastchat":
        data, collator, sampling = rows, PaddingCollator(pad, max_length=max_length), "random"
    elif system == "padded":
        data, collator, sampling = datasets.Dataset.from_list(rows), PaddingCollator(pad), "group_by_length"
    else:  # packed, packed_sdpa
        data, collator, sampling = PackedDataset(rows, max_length), PackedCollator(pad, max_length), "random"
    args = TrainingArguments(
        **training_args(spec), per_device_train_batch_size=batch, train_sampling_strategy=sampling
    )
    return SFTTrainer(model=model, args=args, train_dataset=data, data_collator=collator)


def run(spec: dict) -> dict:
    import torch
    import transformers
    from common import PeakRSS

    import llama_sft

    torch.set_num_threads(spec["threads"])
    transformers.logging.set_verbosity_error()
    blob = torch.load(spec["data"], weights_only=False)
    model = build_model(spec)
    trainer = build_trainer(spec, model, blob)
    epoch = epoch_counts(trainer)
    recorder = Recorder(trainer.data_collator)
    trainer.data_collator = recorder
    trainer.add_callback(recorder.callback())
    losses, norms = [], []
    trainer.model.register_forward_hook(
        lambda module, args, output: losses.append(float(output.loss)) if module.training else None
    )
    trainer_norm = trainer._get_grad_norm  # the norm the Trainer computes anyway before each step

    def record_norm(m, grad_norm=None):
        norm = trainer_norm(m, grad_norm=grad_norm)
        norms.append(float(norm))
        return norm

    trainer._get_grad_norm = record_norm
    with PeakRSS() as rss:
        trainer.train()
    first = {k: v for k, v in recorder.first.items() if k not in ("sample_index",)}
    trainer.model.eval()
    with torch.no_grad():
        after = float(trainer.model(**first).loss)
    timed = recorder.steps[WARMUP_STEPS:]
    timed_batches = recorder.batches[WARMUP_STEPS : WARMUP_STEPS + len(timed)]
    if not timed or len(timed) != spec["timed_steps"]:
        raise RuntimeError(
            f"{spec['system']}: {len(recorder.steps)} steps ran, expected {WARMUP_STEPS} + timed"
        )
    bad = [n for n in norms if not (n > 0 and n == n and n != float("inf"))]
    if bad or not norms:
        raise AssertionError(f"{spec['system']}: gradient norm not finite and non-zero: {norms}")
    if not after < losses[0]:
        raise AssertionError(
            f"{spec['system']}: loss on the first batch did not fall ({losses[0]:.4f} -> {after:.4f})"
        )
    speeds = [b[1] / t[0] for b, t in zip(timed_batches, timed, strict=True)]  # computed tokens / CPU s
    speeds_wall = [b[1] / t[1] for b, t in zip(timed_batches, timed, strict=True)]
    useful = epoch["supervised"] / epoch["computed"]
    return {
        "system": spec["system"],
        "workload": spec["workload"],
        "llama_sft": llama_sft.__file__,  # the orchestrator checks it is this checkout's src, not an install
        "max_length": spec["max_length"],
        "attention": model.config._attn_implementation
        if hasattr(model.config, "_attn_implementation")
        else spec["attention"],
        "batch": spec["batch"],
        "epoch": epoch,
        "supervised_share_of_computed": round(useful, 4),
        "padding_share": round(1 - epoch["real"] / epoch["computed"], 4),
        "timed_steps": [
            {"cpu_s": round(t[0], 2), "wall_s": round(t[1], 2), "computed": b[1], "supervised": b[0]}
            for t, b in zip(timed, timed_batches, strict=True)
        ],
        "warmup_step_cpu_s": round(recorder.steps[0][0], 2),
        "computed_tokens_per_cpu_s_median": round(statistics.median(speeds), 1),
        "computed_tokens_per_wall_s_median": round(statistics.median(speeds_wall), 1),
        "supervised_tokens_per_cpu_s": round(useful * statistics.median(speeds), 1),
        "supervised_tokens_per_wall_s": round(useful * statistics.median(speeds_wall), 1),
        "loss_first_batch": [round(losses[0], 4), round(after, 4)],
        "grad_norms": [round(n, 4) for n in norms],
        "peak_rss_mb": round(rss.peak / 2**20),
        "peak_rise_mb": round((rss.peak - rss.start) / 2**20),
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
