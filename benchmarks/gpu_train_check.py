"""GPU training check: LoRA bf16, QLoRA and full fine-tuning through `llama-sft train`, with and
without gradient checkpointing, on random-init LLaMA shapes (nothing downloaded).

    python benchmarks/gpu_train_check.py --out DIR            # one CUDA GPU, ~6 min on an H100
    python benchmarks/gpu_train_check.py --dry_run --out DIR  # CPU, tiny shapes: checks the script runs

Cases: LoRA r8 and QLoRA r8 on Llama-2-7B shapes (32 layers, d 4096), full fine-tuning on a smaller
config (8 layers of Llama-2-7B width, so weights + fp32 Adam fit one card). Each case runs in a
fresh process (its own peak memory): 6 steps of micro-batch 4 at model_max_length 2048 on
conversations that fill ~2,000 tokens, then the saved adapter/model is loaded back with
`load_trained` and must give finite logits on a short prompt.

Reported per case: real tokens/s over steps 2-6 (step 1 holds the compile/allocator warm-up), peak
GPU memory (`torch.cuda.max_memory_allocated`), and whether the output loaded and matched.
Writes gpu_train_check.json and .md into --out. Not yet run on a GPU (no device was lent when it was
written); the dry run passes on CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096)  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512)  # fmt: skip
CASES = [  # (name, method, shapes, gradient checkpointing)
    ("lora-bf16", "lora", "7b", False),
    ("lora-bf16-ckpt", "lora", "7b", True),
    ("qlora-ckpt", "qlora", "7b", True),
    ("full-8layer", "full", "7b-8l", False),
    ("full-8layer-ckpt", "full", "7b-8l", True),
]


def make_base(path: Path, shapes: dict, dry: bool) -> Path:
    """A random-init LLaMA saved like a hub checkpoint, with a tokenizer (built locally)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama_sft.tiny import build_tokenizer

    if (path / "config.json").exists():
        return path
    tokenizer = build_tokenizer(vocab_size=400 if dry else 4000)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shapes)  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.float32 if dry else torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_data(path: Path, words: int, n: int = 64) -> Path:
    import random

    rng = random.Random(0)
    vocab = "alpha beta gamma delta river stone cloud maple silver lantern harbor meadow copper".split()
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            turns = []
            for _ in range(4):
                turns.append(
                    {"from": "human", "value": " ".join(rng.choice(vocab) for _ in range(words // 8))}
                )
                turns.append({"from": "gpt", "value": " ".join(rng.choice(vocab) for _ in range(words // 8))})
            handle.write(json.dumps({"id": f"c{i}", "conversations": turns}) + "\n")
    return path


def worker(spec: dict) -> dict:
    import torch

    from llama_sft.config import parse_run_config
    from llama_sft.model.trained import load_trained
    from llama_sft.train.run import train

    dry = spec["dry"]
    flags = [
        "--model_name_or_path", spec["base"], "--data_path", spec["data"], "--output_dir", spec["out"],
        "--method", spec["method"], "--lora_r", "8", "--max_steps", "6", "--per_device_train_batch_size", "4",
        "--model_max_length", str(spec["max_length"]), "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--learning_rate", "1e-4", "--gradient_checkpointing", str(spec["ckpt"]),
        "--disable_tqdm", "True", "--packing", "padded",
    ]  # fmt: skip
    if not dry:
        flags += ["--bf16", "True"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(parse_run_config(flags))
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    metrics = [json.loads(line) for line in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines()]
    steps = {m["step"]: m["elapsed_s"] for m in metrics if "loss" in m}
    tokens_per_step = 4 * spec["max_length"]  # rows are near-full: the data fills ~max_length tokens
    tokens_per_s = tokens_per_step * 5 / (steps[6] - steps[1]) if steps.get(6, 0) > steps.get(1, 0) else None
    # The output loads back and gives the trained model's logits.
    model, tokenizer, _ = load_trained(spec["out"], dtype=torch.float32 if dry else torch.bfloat16,
                                       device="cuda" if torch.cuda.is_available() else None)  # fmt: skip
    ids = tokenizer("hello river stone", return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    loaded = bool(torch.isfinite(logits).all())
    return {"case": spec["name"], "method": spec["method"], "gradient_checkpointing": spec["ckpt"],
            "tokens_per_s": tokens_per_s, "peak_gib": peak / 2**30 if peak else None,
            "final_loss": [m["loss"] for m in metrics if "loss" in m][-1], "output_loaded": loaded}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=[c[0] for c in CASES])
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: use --dry_run on CPU")
        return 2
    work = Path("/tmp/llama_sft_gpu_check")
    work.mkdir(exist_ok=True)
    max_length = 256 if dry else 2048
    data = make_data(work / "data.jsonl", words=max_length // 2)
    shapes = {
        "7b": TINY if dry else LLAMA2_7B,
        "7b-8l": TINY if dry else {**LLAMA2_7B, "num_hidden_layers": 8},
    }
    rows = []
    for name, method, shape, ckpt in CASES:
        if name not in args.cases or (dry and method == "qlora"):
            continue
        base = make_base(work / f"base-{shape}", shapes[shape], dry)
        spec = {"name": name, "method": method, "ckpt": ckpt, "base": str(base), "data": str(data),
                "out": str(work / f"run-{name}"), "max_length": max_length, "dry": dry}  # fmt: skip
        start = time.time()
        proc = subprocess.run([sys.executable, __file__, "--out", str(out), "--worker", json.dumps(spec)],
                              capture_output=True, text=True)  # fmt: skip
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        row = json.loads(lines[-1][7:]) if lines else {"case": name, "error": proc.stderr[-2000:]}
        row["wall_s"] = round(time.time() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (dry run)"
    (out / "gpu_train_check.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    table = [
        "| case | tokens/s | peak GiB | final loss | output loaded | wall s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if "error" in r:
            table.append(f"| {r['case']} | error | | | | {r['wall_s']} |")
            continue
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        table.append(
            f"| {r['case']} | {tps} | {peak} | {r['final_loss']:.3f} | {r['output_loaded']} | {r['wall_s']} |"
        )
    (out / "gpu_train_check.md").write_text(f"# GPU training check on {device}\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if rows and all("error" not in r and r["output_loaded"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
