"""Plain vs chunked cross-entropy (train/loss.py): peak memory from PyTorch's CPU allocator and step time.

Two measurements, each in fresh processes so every peak starts from an empty allocator:

- `head`: the loss alone, from final hidden states [tokens x hidden] through the head to the gradient
  (every position supervised: the worst case for chunking, which skips ignored ones). Its peak above
  the inputs is the planner's `logits` term, measured, minus the gradients the backward must write
  anyway (hidden's, and the head weight's when it trains).
- `step`: whole training steps (forward, backward, AdamW) with gradient checkpointing, as in the
  planner's 24 GiB example, on 1 row of `seq` tokens whose first 40% are an unsupervised prompt.
  Peak of the whole process (weights, adapters, optimizer states included); step time is the median
  of the timed steps after one warm-up step; every run asserts its loss fell and its gradient norm
  is non-zero.

Models: the real SmolLM2-135M-Instruct (49,152 vocab, tied head, fp32) and a LLaMA-3-vocabulary model
(128,256 vocab, hidden 256, 2 layers, random weights). The machine is shared: plain and chunked runs
alternate (ABBA) and medians are reported.

    python benchmarks/memory.py            # ~1 h on 2 cores shared with 7 other jobs
    python benchmarks/memory.py --quick    # 2048 tokens only

Writes benchmarks/results/memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure_memory import cpu_peak, header, median, run_worker  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MIB = 1024**2
LLAMA3 = dict(vocab_size=128256, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
PROMPT_SHARE = 0.4


def build(model: str, method: str):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if model == "smollm2":
        from llama_sft.model.smollm2 import smollm2_dir

        m = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    else:
        m = LlamaForCausalLM(LlamaConfig(**LLAMA3, max_position_embeddings=8192, tie_word_embeddings=False))
    m.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"]))  # fmt: skip
    return m


def step_worker(spec: dict) -> dict:
    import torch

    from llama_sft.train.loss import install

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    with cpu_peak() as peak:
        model = build(spec["model"], spec["method"])
        install(model, spec["impl"])
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec["method"] == "lora":
            model.enable_input_require_grads()
        model.train()
        vocab = model.config.vocab_size
        ids = torch.randint(3, vocab, (1, spec["seq"]), generator=g)
        labels = ids.clone()
        labels[:, : int(PROMPT_SHARE * spec["seq"])] = -100
        count = int(labels[:, 1:].ne(-100).sum())
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3 if spec["method"] == "lora" else 1e-4)
        losses, norms, times, cpus = [], [], [], []
        for _ in range(spec["warmup"] + spec["steps"]):
            start, cpu = time.perf_counter(), time.process_time()
            loss = model(input_ids=ids, labels=labels, num_items_in_batch=count).loss
            loss.backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, float("inf"))))
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
            losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], f"loss did not fall: {losses}"
    assert all(n > 0 for n in norms), f"zero gradient norm: {norms}"
    return {**spec, "peak_mib": peak["peak_bytes"] / MIB, "step_s": times[spec["warmup"] :], "cpu_s": cpus[spec["warmup"] :],
            "losses": losses, "grad_norms": norms}  # fmt: skip


def head_worker(spec: dict) -> dict:
    """The loss alone; plain and chunked alternate in one process, each block's peak counted separately."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    from llama_sft.train.loss import causal_lm_loss, chunk_tokens

    torch.set_num_threads(2)
    torch.manual_seed(0)
    if spec["model"] == "smollm2":
        base = build("smollm2", "full")
        weight = base.lm_head.weight.detach().clone()
        del base
    else:
        weight = torch.randn(LLAMA3["vocab_size"], LLAMA3["hidden_size"]) * 0.02
    vocab, width = weight.shape
    head = torch.nn.Linear(width, vocab, bias=False)
    head.weight = torch.nn.Parameter(weight, requires_grad=spec["method"] == "full")
    tokens = spec["seq"]
    labels = torch.randint(0, vocab, (1, tokens))
    count = tokens - 1
    grads_bytes = 4 * tokens * width + (4 * vocab * width if spec["method"] == "full" else 0)
    hidden = {impl: torch.randn(1, tokens, width, requires_grad=True) for impl in ("plain", "chunked")}
    rows = {
        impl: {"peak_mib": [], "step_s": [], "cpu_s": [], "losses": [], "grad_norms": []} for impl in hidden
    }
    for r in range(1 + spec["repeats"]):
        for impl in ("plain", "chunked") if r % 2 == 0 else ("chunked", "plain"):
            h = hidden[impl]
            start, cpu = time.perf_counter(), time.process_time()
            with cpu_peak() as peak:
                if impl == "plain":
                    loss = ForCausalLMLoss(head(h), labels, vocab, num_items_in_batch=count)
                else:
                    loss = causal_lm_loss(h, head, labels, count)
                loss.backward()
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            with torch.no_grad():
                norm = float(h.grad.norm())
                h -= 1000.0 * h.grad  # a step on the inputs: the loss must fall
            h.grad = None
            head.weight.grad = None
            out = rows[impl]
            out["losses"].append(float(loss.detach()))
            out["grad_norms"].append(norm)
            if r > 0:  # warm-up excluded
                out["peak_mib"].append((peak["peak_bytes"] - grads_bytes) / MIB)
                out["step_s"].append(elapsed)
                out["cpu_s"].append(cpu)
    for impl, out in rows.items():
        assert out["losses"][-1] < out["losses"][0], f"{impl}: loss did not fall: {out['losses']}"
        assert all(n > 0 for n in out["grad_norms"]), f"{impl}: zero gradient norm"
    return {**spec, "vocab": vocab, "hidden": width, "chunk_tokens": chunk_tokens(vocab), "rows": rows}


def summarize_steps(runs: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["model"], r["method"], r["seq"]) for r in runs})
    for model, method, seq in keys:
        row = {"model": model, "method": method, "seq": seq}
        for impl in ("plain", "chunked"):
            mine = [
                r
                for r in runs
                if (r["model"], r["method"], r["seq"], r["impl"]) == (model, method, seq, impl)
            ]
            row[f"{impl}_peak_mib"] = round(median([r["peak_mib"] for r in mine]), 1)
            row[f"{impl}_step_s"] = round(median([t for r in mine for t in r["step_s"]]), 3)
            row[f"{impl}_cpu_s"] = round(median([t for r in mine for t in r["cpu_s"]]), 3)
            row[f"{impl}_timed_steps"] = sum(len(r["step_s"]) for r in mine)
        row["peak_ratio"] = round(row["plain_peak_mib"] / row["chunked_peak_mib"], 2)
        row["time_ratio"] = round(row["chunked_step_s"] / row["plain_step_s"], 3)
        row["cpu_ratio"] = round(row["chunked_cpu_s"] / row["plain_cpu_s"], 3)
        out.append(row)
    return out


def summarize_heads(runs: list[dict]) -> list[dict]:
    out = []
    for r in runs:
        p, c = r["rows"]["plain"], r["rows"]["chunked"]
        row = {"model": r["model"], "method": r["method"], "seq": r["seq"], "vocab": r["vocab"],
               "chunk_tokens": r["chunk_tokens"],
               "plain_logits_mib": round(median(p["peak_mib"]), 1),
               "chunked_logits_mib": round(median(c["peak_mib"]), 1),
               "plain_s": round(median(p["step_s"]), 3), "chunked_s": round(median(c["step_s"]), 3),
               "plain_cpu_s": round(median(p["cpu_s"]), 3), "chunked_cpu_s": round(median(c["cpu_s"]), 3)}  # fmt: skip
        row["logits_ratio"] = round(row["plain_logits_mib"] / max(row["chunked_logits_mib"], 1e-9), 1)
        row["time_ratio"] = round(row["chunked_s"] / row["plain_s"], 3)
        row["cpu_ratio"] = round(row["chunked_cpu_s"] / row["plain_cpu_s"], 3)
        out.append(row)
    return out


def planner_rows() -> list[dict]:
    """The planner's 24 GiB example (SmolLM2-135M, 1 GPU, seq 4096, LoRA) under each loss."""
    import dataclasses

    from llama_sft.model.smollm2 import smollm2_dir
    from llama_sft.plan.memory import GIB, Setting
    from llama_sft.plan.search import largest_batch
    from llama_sft.plan.shapes import load_shape

    shape = load_shape(str(smollm2_dir()))
    if "loss_impl" not in {f.name for f in dataclasses.fields(Setting)}:
        return []  # a planner from before the loss was modelled
    out = []
    for ckpt in (False, True):
        for impl in ("plain", "chunked"):
            row = largest_batch(
                shape, Setting(seq_len=4096, gradient_checkpointing=ckpt, loss_impl=impl), 24 * GIB
            )
            b = row.breakdown
            out.append({"checkpointing": ckpt, "loss_impl": impl, "micro_batch": row.micro_batch_size,
                        "peak_gib": round(b.peak / GIB, 2), "logits_gib": round(b.logits / GIB, 3),
                        "activations_gib": round(b.activations / GIB, 2)})  # fmt: skip
    return out


def markdown(result: dict) -> str:
    h = result["header"]
    commits = {
        name: f"`{x['commit'][:12]}` (clean tree: {x['clean_tree']}, load {x['load_average_1m']})"
        for name in ("head", "step")
        if (x := result.get(f"{name}_header"))
    }
    lines = [
        "# Plain vs chunked cross-entropy: memory and step time",
        "",
        f"{h['cpu']}, {h['cores_usable']} usable cores shared with 7 other jobs, torch {h['versions']['torch']}, "
        f"transformers {h['versions']['transformers']}, {h['date_utc']} UTC. Generated by `benchmarks/memory.py`; "
        "commits: " + "; ".join(f"{k} rows at {v}" for k, v in commits.items()) + ".",
        "",
        "Peaks are c10's CPU allocator (the profiler's memory events, as `llama_sft.plan.measure`); times are "
        "medians after a warm-up, plain and chunked interleaved. Wall seconds on this shared machine are noisy "
        "(8 jobs on 2 cores); the ratio compares process CPU seconds (both threads), which contention distorts less.",
        "",
        "## The logits term (loss alone: hidden states -> head -> loss -> gradients, every token supervised)",
        "",
        "| model | method | tokens | vocab | chunk | plain MiB | chunked MiB | down | plain s (CPU s) | chunked s (CPU s) | CPU-time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["head"]:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['seq']} | {r['vocab']} | {r['chunk_tokens']} | "
            f"{r['plain_logits_mib']:.0f} | {r['chunked_logits_mib']:.0f} | {r['logits_ratio']:.0f}x | "
            f"{r['plain_s']:.2f} ({r['plain_cpu_s']:.2f}) | {r['chunked_s']:.2f} ({r['chunked_cpu_s']:.2f}) | {r['cpu_ratio']:.2f} |"
        )
    lines += [
        "",
        f"## Whole steps (gradient checkpointing, AdamW, 1 row, first {int(PROMPT_SHARE * 100)}% of tokens unsupervised)",
        "",
        "| model | method | tokens | plain peak MiB | chunked peak MiB | ratio | plain s/step (CPU s) | chunked s/step (CPU s) | CPU-time ratio | timed steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["step"]:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['seq']} | {r['plain_peak_mib']:.0f} | {r['chunked_peak_mib']:.0f} | "
            f"{r['peak_ratio']:.2f}x | {r['plain_step_s']:.2f} ({r['plain_cpu_s']:.2f}) | {r['chunked_step_s']:.2f} ({r['chunked_cpu_s']:.2f}) | {r['cpu_ratio']:.2f} | "
            f"{r['plain_timed_steps']}+{r['chunked_timed_steps']} |"
        )
    lines += [
        "",
        "## The planner's 24 GiB example (`llama-sft plan --model <smollm2> --gpus 1 --gpu-memory 24GiB --seq-len 4096 --method lora`)",
        "",
        "| checkpointing | loss | largest micro-batch | peak GiB | logits GiB | activations GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["planner"]:
        lines.append(
            f"| {r['checkpointing']} | {r['loss_impl']} | {r['micro_batch']} | {r['peak_gib']} | "
            f"{r['logits_gib']} | {r['activations_gib']} |"
        )
    return "\n".join(lines) + "\n"


def all_pairs(runs: list[dict]) -> bool:
    impls = {}
    for r in runs:
        impls.setdefault((r["model"], r["method"], r["seq"]), set()).add(r["impl"])
    return all(v == {"plain", "chunked"} for v in impls.values())


def save(result: dict, only: str | None) -> None:
    """Write both files now (a long run keeps what it measured); sections run at once keep each other's."""
    out_json = RESULTS / "memory.json"
    RESULTS.mkdir(exist_ok=True)
    if only and out_json.exists():
        mine = {k: v for k, v in result.items() if k.startswith(only) or k in ("header", "planner")}
        result = {**json.loads(out_json.read_text()), **mine}
    out_json.write_text(json.dumps(result, indent=1))
    (RESULTS / "memory.md").write_text(markdown(result))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2048 tokens only")
    ap.add_argument(
        "--only", choices=["head", "step", "planner"], default=None,
        help="run one section and merge it into the existing results (each section names its own commit)",
    )  # fmt: skip
    ap.add_argument(
        "--repeats", type=int, default=2, help="timed loss-alone pairs per setting at 2048 tokens"
    )
    ap.add_argument("--steps", type=int, default=1, help="timed whole steps per process at 2048 tokens")
    args = ap.parse_args(argv)
    seqs = [2048] if args.quick else [2048, 8192]
    out_json = RESULTS / "memory.json"
    result = json.loads(out_json.read_text()) if args.only and out_json.exists() else {}
    result.setdefault("head", [])
    result.setdefault("step", [])
    result.setdefault("planner", [])
    result["header"] = header()
    script = Path(__file__)
    if args.only in (None, "head"):
        runs = []
        for seq in seqs:  # every 2048 row first: the 8192 rows take most of the time
            for model in ("smollm2", "llama3vocab"):
                for method in ("lora", "full"):
                    repeats = args.repeats if seq <= 2048 else 1  # 8192: for the memory, one timed pair
                    spec = {"kind": "head", "model": model, "method": method, "seq": seq, "repeats": repeats}
                    runs.append(run_worker(script, spec))
                    print(json.dumps(summarize_heads(runs[-1:])[0]), flush=True)
                    result["head_header"], result["head_runs"], result["head"] = (
                        header(),
                        runs,
                        summarize_heads(runs),
                    )
                    save(result, args.only)
    if args.only in (None, "step"):
        runs = []
        # (model, method, tokens, process pairs); 2 cores shared with 7 other jobs allow little more
        plan = [("smollm2", "lora", 2048, 1)]
        plan += [] if args.quick else [("llama3vocab", "lora", 2048, 1), ("smollm2", "full", 2048, 1)]
        for model, method, seq, pairs in plan:
            for i in range(pairs):
                for impl in ("plain", "chunked") if i % 2 == 0 else ("chunked", "plain"):
                    steps = args.steps if seq <= 2048 else 1
                    spec = {"kind": "step", "model": model, "method": method, "seq": seq, "impl": impl,
                            "warmup": 1, "steps": steps}  # fmt: skip
                    runs.append(run_worker(script, spec))
                    keys = ("model", "method", "seq", "impl", "peak_mib", "step_s", "cpu_s")
                    print(json.dumps({k: runs[-1][k] for k in keys}), flush=True)
                    result["step_header"], result["step_runs"] = header(), runs
                    result["step"] = summarize_steps(runs) if all_pairs(runs) else []
                    save(result, args.only)
    result["planner"] = planner_rows()
    save(result, args.only)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        spec = json.loads(sys.argv[1])
        print(json.dumps(head_worker(spec) if spec["kind"] == "head" else step_worker(spec)))
        sys.exit(0)
    sys.exit(main())
