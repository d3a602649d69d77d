"""GPU throughput: the comparison of benchmarks/throughput.py on Llama-2-7B shapes, bf16 LoRA, seq 2048.

    python benchmarks/gpu_throughput.py              # one CUDA GPU; writes benchmarks/results/gpu_throughput.{json,md}
    python benchmarks/gpu_throughput.py --dry_run    # CPU, tiny config, seq 512, 3 steps a system: checks it runs

Systems (each in a fresh process, so peak memory is its own):
  fastchat   every row padded to model_max_length (FastChat's batching), 4 conversations a batch;
  padded     ours, padded to the longest in the batch, length-grouped, 4 conversations a batch;
  packed     ours, packed rows (best-fit decreasing), 4 rows a batch; flash-attention 2 varlen when
             `flash-attn` is installed, else `sdpa_packed`;
  trl        TRL's SFTTrainer with packing (bfd, padding-free), 4 packed rows a batch (when `trl` is installed).
All: random-init LlamaForCausalLM with Llama-2-7B's shapes (32 layers, d 4096, MLP 11008, 32 heads,
vocab 32000), bf16 weights, LoRA r 8 on q/k/v/o/gate/up/down, gradient checkpointing, AdamW; `--use_liger_kernel`
passes through to transformers when `liger-kernel` is installed. fastchat and padded use FA2 (with
its unpadding) when installed, like FastChat's `train_mem.py`, else sdpa.

Reported per system: supervised and real tokens/s over the timed steps (after `--warmup` steps), the
padding share, peak GPU memory, and MFU = model FLOPs / (time x peak dense bf16 FLOP/s of the card).
Model FLOPs count useful work only, on real tokens with each conversation's own attention:
  linear: 2 N per token forward, 2 N backward to the activations, and 2 N for weight gradients only
          when the weights train (LoRA: 4 N + the adapters' 6 N_lora);
  attention: 12 x layers x d x (sum of squared conversation lengths), PaLM's count (non-causal, fwd + bwd).
Gradient checkpointing's recomputed forward is not model FLOPs (it would be hardware FLOPs).
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=32000,
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SYSTEMS = {"fastchat": 4, "padded": 4, "packed": 4, "trl": 4}  # default batch: conversations or packed rows
# Dense bf16 peak FLOP/s by device-name fragment (vendor datasheets, without sparsity); first match wins.
PEAK_BF16 = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def peak_flops(device_name: str, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, "--peak_tflops"
    for fragment, flops in PEAK_BF16:
        if fragment in device_name:
            return flops, f"datasheet ({fragment})"
    return None, "unknown card: pass --peak_tflops"


def model_flops(
    n_linear: int, n_lora: int, layers: int, hidden: int, real_tokens: int, sum_sq_lengths: int
) -> float:
    linear = 4 * n_linear * real_tokens + 6 * n_lora * real_tokens
    return linear + 12 * layers * hidden * sum_sq_lengths


def attention_for(system: str) -> str:
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa_packed" if system == "packed" else "sdpa"


class SegmentCounting:
    """Per batch: supervised tokens (after the shift), tokens computed, real tokens, sum of squared lengths."""

    def __init__(self, collator, max_length: int):
        self.collator, self.max_length, self.batches = collator, max_length, []

    def __call__(self, features):
        batch = self.collator(features)
        lengths = []
        for f in features:
            lengths += f.get("seq_lengths") or [min(len(f["input_ids"]), self.max_length)]
        labels = batch["labels"]
        self.batches.append(
            (
                int(labels[..., 1:].ne(-100).sum()),
                batch["input_ids"].numel(),
                sum(lengths),
                sum(n * n for n in lengths),
            )
        )
        return batch


def worker(spec: dict) -> dict:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from throughput import build_trainer, training_args
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from llama_sft.train.packing import register_packed_attention

    transformers.logging.set_verbosity_error()
    dry = spec["dry_run"]
    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    blob = torch.load(spec["data"])
    system, max_length = spec["system"], spec["max_length"]
    register_packed_attention()
    torch.manual_seed(spec["seed"])
    shapes = {**spec["model"], "vocab_size": max(spec["model"]["vocab_size"], blob["vocab"])}
    config = LlamaConfig(
        max_position_embeddings=max(4096, max_length), pad_token_id=blob["pad"], use_cache=False, **shapes
    )
    config._attn_implementation = spec["attention"]
    with torch.device(device):
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(default)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
    )
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = spec["warmup"] + spec["steps"]
    common = training_args(spec["out"], spec["seed"], max_steps=steps)
    common.update(
        use_cpu=dry,
        bf16=not dry,
        gradient_checkpointing=not dry,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_liger_kernel=spec["liger"],
    )
    trainer = build_trainer(system, model, blob, max_length, common, batch=spec["batch"])
    counter = SegmentCounting(trainer.data_collator, max_length)
    trainer.data_collator = counter
    marks: list[float] = []

    class Sync(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if not dry:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    trainer.add_callback(Sync())
    if not dry:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    warm = spec["warmup"]
    if len(marks) <= warm:
        raise RuntimeError(
            f"{system}: only {len(marks)} steps ran; give it more data or fewer --warmup steps"
        )
    timed = counter.batches[warm : len(marks)]
    seconds = marks[-1] - marks[warm - 1] if warm else marks[-1]
    supervised, tokens, real, sum_sq = (sum(b[i] for b in timed) for i in range(4))
    layers, hidden = shapes["num_hidden_layers"], shapes["hidden_size"]
    flops = model_flops(n_linear, n_lora, layers, hidden, real, sum_sq)
    peak, peak_source = peak_flops(spec["device_name"], spec["peak_tflops"])
    return {
        "system": system,
        "attention": spec["attention"],
        "batch": spec["batch"],
        "timed_steps": len(timed),
        "supervised_tokens_per_s": round(supervised / seconds, 1),
        "real_tokens_per_s": round(real / seconds, 1),
        "padding_share": round(1 - real / tokens, 4),
        "seconds": round(seconds, 3),
        "model_tflops_per_s": round(flops / seconds / 1e12, 3),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_source": peak_source,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if not dry else None,
        "n_linear_params": n_linear,
        "n_lora_params": n_lora,
    }


def run_worker(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {
            "system": spec["system"],
            "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed",
            "stderr_tail": done.stderr[-3000:],
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dry_run", action="store_true", help="CPU, tiny model, fp32, few steps: check the script runs"
    )
    p.add_argument("--max_length", type=int, help="model_max_length (default 2048; dry run 512)")
    p.add_argument("--conversations", type=int, help="generated conversations (default 600; dry run 48)")
    p.add_argument("--steps", type=int, help="timed steps per system (default 20; dry run 2)")
    p.add_argument("--warmup", type=int, help="untimed first steps (default 3; dry run 1)")
    p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    p.add_argument(
        "--batch", nargs="*", default=[], metavar="SYSTEM=N", help="per-device batch, e.g. packed=8"
    )
    p.add_argument(
        "--use_liger_kernel", action="store_true", help="transformers' Liger integration (needs liger-kernel)"
    )
    p.add_argument(
        "--peak_tflops", type=float, help="peak dense bf16 TFLOP/s of the card, if not in the table"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from throughput import package_version, prepare_data

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry_run to check the script on CPU", file=sys.stderr)
        return 2
    if args.use_liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        print("--use_liger_kernel needs `pip install liger-kernel`; running without it", file=sys.stderr)
        args.use_liger_kernel = False
    dry = args.dry_run
    args.max_length = args.max_length or (512 if dry else 2048)
    n = args.conversations or (32 if dry else 600)
    steps, warmup = (
        args.steps or (2 if dry else 20),
        args.warmup if args.warmup is not None else (1 if dry else 3),
    )
    batches = {
        **{k: 2 if dry else v for k, v in SYSTEMS.items()},
        **{k: int(v) for k, v in (x.split("=") for x in args.batch)},
    }
    device_name = "cpu (dry run)" if dry else torch.cuda.get_device_name()
    work = Path(tempfile.mkdtemp(prefix="llama-sft-gpu-throughput-"))
    atexit.register(shutil.rmtree, work, True)
    data = prepare_data(args.max_length, n, args.seed, False, work, renumber=False)
    results = []
    for system in args.systems:
        if system == "trl" and importlib.util.find_spec("trl") is None:
            results.append({"system": system, "skipped": "trl not installed"})
            continue
        spec = {
            "system": system,
            "max_length": args.max_length,
            "data": data["file"],
            "seed": args.seed,
            "model": TINY if dry else LLAMA2_7B,
            "attention": attention_for(system),
            "batch": batches[system],
            "steps": steps,
            "warmup": warmup,
            "liger": args.use_liger_kernel,
            "dry_run": dry,
            "device_name": device_name,
            "peak_tflops": args.peak_tflops or (1.0 if dry else None),
            "out": str(work / system),
        }
        r = run_worker(spec)
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    by = {r["system"]: r for r in results if "supervised_tokens_per_s" in r}
    ratios = {
        f"packed_vs_{k}": round(by["packed"]["supervised_tokens_per_s"] / by[k]["supervised_tokens_per_s"], 3)
        for k in ("fastchat", "padded", "trl")
        if "packed" in by and k in by
    }
    result = {
        "dry_run": dry,
        "device": device_name,
        "max_length": args.max_length,
        "steps": steps,
        "warmup": warmup,
        "model": TINY if dry else LLAMA2_7B,
        "data": data,
        "results": results,
        "ratios": ratios,
        "versions": {
            k: package_version(k)
            for k in ("torch", "transformers", "peft", "trl", "flash-attn", "liger-kernel")
        },
    }
    lines = [
        "| system | attention | batch | supervised tok/s | real tok/s | padding | MFU | peak GB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "supervised_tokens_per_s" not in r:
            lines.append(f"| {r['system']} | {r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(
            f"| {r['system']} | {r['attention']} | {r['batch']} | {r['supervised_tokens_per_s']:,.0f} | "
            f"{r['real_tokens_per_s']:,.0f} | {100 * r['padding_share']:.1f}% | {mfu} | {r['peak_memory_gb']} |"
        )
    if not dry:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "gpu_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
        head = (
            f"# GPU throughput: Llama-2-7B shapes, bf16 LoRA, seq {args.max_length}\n\n"
            f"`python benchmarks/gpu_throughput.py` on {device_name}; versions {json.dumps(result['versions'])}.\n"
        )
        (RESULTS / "gpu_throughput.md").write_text(
            head + "\n" + "\n".join(lines) + f"\n\nRatios: {json.dumps(ratios)}\n"
        )
    print("\n".join(lines))
    fmt = lambda key: f"{ratios[key]:.2f}" if key in ratios else "n/a"  # noqa: E731
    print(
        f"supervised tokens/s ratio: vs FastChat {fmt('packed_vs_fastchat')}, vs TRL {fmt('packed_vs_trl')}"
        + (" (dry run: CPU, tiny model; not a measurement)" if dry else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
