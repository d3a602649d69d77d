"""Training throughput on CPU, on real shapes: FastChat, llama-sft (padded, packed) and TRL.

    python benchmarks/throughput.py --quick   # real SmolLM2-135M at 2048; last line is the two ratios
    python benchmarks/throughput.py           # + the LLaMA-2-7B-width slice; writes results/throughput.{json,md}

Workloads (real vocabularies, nothing renumbered):
  smollm2          the real SmolLM2-135M-Instruct (`llama_sft.model.smollm2.smollm2_dir()`: 30 layers,
                   hidden 576, GQA 9/3, 49,152-token vocabulary), its own tokenizer, chatml.
  llama2-7b-slice  LLaMA-2-7B's width (hidden 4096, MLP 11008, 32 heads, 32 KV heads as 7B has no GQA,
                   32,000-token vocabulary) with 1 decoder layer and random weights, LLaMA-2's real
                   SentencePiece tokenizer, vicuna_v1.1.
Both: LoRA r8 on all seven projections (no dropout), frozen fp32 base, lr 5e-4, AdamW. LoRA, not full
fine-tuning, because 8 jobs share 24 GB here: full fine-tuning of SmolLM2 at 2048 peaked at 6 GB.
Systems (each in a fresh process; `--systems` picks):
  fastchat      FastChat's batching reproduced with our pipeline: every row padded to model_max_length
                (`--packing none`), random order, 1 conversation a batch.
  fastchat_own  FastChat's own data path: fschat 0.2.36 `preprocess` (LLaMA tokenizer only: its mask
                offsets assume SentencePiece) and transformers' Trainer.
  padded        ours, `--packing padded`: 4 conversations a batch, length-grouped, padded to the longest.
  packed        ours, `--packing packed`: best-fit-decreasing rows up to model_max_length, `sdpa_packed`.
  packed_sdpa   the same rows on transformers' plain sdpa (block-diagonal mask from the positions).
  trl           TRL SFTTrainer, packing=True (bfd, padding-free: its fastest path), its default sdpa.
  trl_kernel    the same TRL run with the model switched to our `sdpa_packed` kernel.
TRL's SFTConfig turns on gradient checkpointing and bf16 by default; both are off here, as for everyone.

Method. One warm-up step (not timed), then `--timed-steps` steps timed one by one in CPU seconds of
the system's process (one torch thread: on a shared machine wall time measures the neighbours). Each
system's whole epoch is collated once without training to count its supervised tokens (after the
causal shift), computed tokens (rows x width) and real tokens. The rate is

    supervised tokens/s = (supervised / computed tokens of the epoch) x median(computed tokens per CPU s)

so it is the token-count share (exact, from the whole epoch) times the compute speed (measured). The
ratio of two systems is therefore the token-count ceiling (how many more useful tokens per computed
token) times the measured speed ratio; both are printed. A system can beat the ceiling only by
computing each token faster (shorter attention spans). Every run checks that the gradient norm is
finite and non-zero at every step and that the loss on the first batch fell after training.

Peers (TRL, fschat) live in `.venv-bench/`, never in the project's dependencies; run from the project
venv, the script re-runs itself there. Make it once (see benchmarks/common.py):
    python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0
    .venv-bench/bin/pip install -e . trl==1.16.0 requests gguf && .venv-bench/bin/pip install --no-deps fschat==0.2.36
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SYSTEMS = {
    "fastchat": "FastChat pad-to-max (reproduced: our pipeline, --packing none)",
    "fastchat_own": "FastChat's own data path (fschat preprocess + Trainer)",
    "padded": "ours --packing padded (length-grouped, 4 a batch)",
    "packed": "ours --packing packed (sdpa_packed)",
    "packed_sdpa": "ours --packing packed on plain sdpa",
    "trl": "TRL SFTTrainer packing=True (bfd, padding-free), sdpa",
    "trl_kernel": "TRL SFTTrainer packing=True, our sdpa_packed kernel",
}
ATTENTION = {"packed": "sdpa_packed", "trl_kernel": "sdpa_packed"}
BATCH = {"padded": 4}
LORA = dict(
    r=8,
    lora_alpha=16,
    lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
SLICE = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=1, num_attention_heads=32,
             num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)  # fmt: skip
QUICK = {"smollm2": {2048: ["fastchat", "packed", "trl"]}}
FULL = {
    "smollm2": {2048: ["fastchat", "packed", "packed_sdpa", "trl", "trl_kernel"]},
    "llama2-7b-slice": {2048: ["fastchat", "fastchat_own", "packed", "trl", "trl_kernel"]},
}


def workload(name: str) -> dict:
    """Model, tokenizer and template of a workload (see the module docstring)."""
    if name == "smollm2":
        from llama_sft.model.smollm2 import smollm2_dir

        path = str(smollm2_dir())
        return {
            "model": {"kind": "pretrained", "path": path, "lora": LORA, "learning_rate": 5e-4},
            "tokenizer": path,
            "template": "chatml",
            "describe": "SmolLM2-135M-Instruct (real weights, Q4_1 dequantized to fp32; 30 layers, hidden 576, "
            "GQA 9/3, 49,152 vocab), LoRA r8 on all projections (no dropout), frozen fp32 base",
        }
    if name == "llama2-7b-slice":
        return {
            "model": {"kind": "config", "config": SLICE, "lora": LORA, "learning_rate": 5e-4},
            "tokenizer": "llama-2",
            "template": "vicuna_v1.1",
            "describe": "LLaMA-2-7B width (hidden 4096, MLP 11008, 32/32 heads, 32,000 vocab), 1 layer, random "
            "weights, LoRA r8 on all projections (no dropout), frozen fp32 base",
        }
    raise ValueError(f"unknown workload {name!r}")


def load_tokenizer(which: str):
    import preprocess as prep
    from transformers import AutoTokenizer

    from llama_sft.data.tokenizer import prepare_tokenizer

    if which == "llama-2":
        tokenizer, desc = prep.load_llama_vocab(None)
        if "LLaMA-2" not in desc:
            sys.exit(f"error: the llama2-7b-slice workload needs LLaMA-2's vocabulary; got {desc}")
        return tokenizer, desc
    return prepare_tokenizer(AutoTokenizer.from_pretrained(which)), f"SmolLM2's own ({which})"


def prepare_data(name: str, max_length: int, n: int, seed: int, want_fastchat: bool, work: Path) -> dict:
    """Tokenize once (our pipeline, and fschat's where asked), save for the workers; returns data stats."""
    import preprocess as prep
    import torch
    import transformers

    from llama_sft.data.dataset import encode_with_report
    from llama_sft.data.issues import ValidationReport
    from llama_sft.data.templates import get_template
    from llama_sft.data.validate import load_conversations

    transformers.logging.set_verbosity_error()  # "longer than model_max_length": expected, we truncate
    w = workload(name)
    tokenizer, tok_desc = load_tokenizer(w["tokenizer"])
    tokenizer.model_max_length, tokenizer.padding_side = max_length, "right"
    path = work / f"{name}-{max_length}.json"
    path.write_text(json.dumps(prep.sharegpt_mix(n, seed)))
    conversations = load_conversations(path, "sharegpt", template_name=w["template"])[0]
    rows, stats = encode_with_report(
        conversations,
        get_template(w["template"]),
        tokenizer,
        max_length,
        "train_on_assistant",
        ValidationReport(),
    )
    tok_dir = work / f"tokenizer-{name}"
    tokenizer.save_pretrained(str(tok_dir))
    blob = {"rows": rows, "pad": tokenizer.pad_token_id, "tokenizer_dir": str(tok_dir)}
    if want_fastchat:
        fc_load, fc_encode, _ = prep.fastchat(tokenizer)
        fc = fc_encode(fc_load(path))
        blob["fastchat"] = {k: fc[k] for k in ("input_ids", "labels")} | {
            "attention_mask": fc["attention_mask"].long()
        }
    file = work / f"data-{name}-{max_length}.pt"
    torch.save(blob, file)
    lengths = sorted(r["length"] for r in rows)
    return {
        "file": str(file),
        "tokenizer": tok_desc,
        "template": w["template"],
        "conversations": len(rows),
        "tokens": sum(lengths),
        "tokens_p50": lengths[len(lengths) // 2],
        "tokens_p90": lengths[int(0.9 * len(lengths))],
        "tokens_max": lengths[-1],
        "truncated": stats.truncated,
        "supervised_tokens": sum(sum(1 for x in r["labels"][1:] if x != -100) for r in rows),
    }


def run_worker(spec: dict) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(spec["threads"]),
        "MKL_NUM_THREADS": str(spec["threads"]),
        "RAYON_NUM_THREADS": str(spec["threads"]),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, str(Path(__file__).with_name("throughput_worker.py")), json.dumps(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{spec['system']} on {spec['workload']} at {spec['max_length']} failed:\n{done.stderr[-4000:]}"
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ours = Path(__file__).resolve().parents[1] / "src"
    if not Path(result["llama_sft"]).resolve().is_relative_to(ours):
        raise RuntimeError(f"{spec['system']} imported llama_sft from {result['llama_sft']}, not from {ours}")
    return result


def available(system: str, workload_name: str) -> str | None:
    """Why a system cannot run here, or None."""
    import importlib.util

    module = "trl" if system.startswith("trl") else "fastchat" if system == "fastchat_own" else None
    if module and importlib.util.find_spec(module) is None:
        return f"{module} not installed (it lives in .venv-bench)"
    if system == "fastchat_own" and workload(workload_name)["tokenizer"] != "llama-2":
        return "fschat's preprocess assumes LLaMA's SentencePiece offsets"
    return None


def comparisons(results: list[dict]) -> list[dict]:
    """Every system against FastChat and TRL: measured ratio, token-count ceiling, speed ratio."""
    out = []
    keys = sorted({(r["workload"], r["max_length"]) for r in results}, key=str)
    for wl, length in keys:
        at = {
            r["system"]: r
            for r in results
            if (r["workload"], r["max_length"]) == (wl, length) and "skipped" not in r
        }
        for base in ("fastchat", "trl"):
            if base not in at:
                continue
            b = at[base]
            for name, r in at.items():
                if name == base:
                    continue
                out.append({
                    "workload": wl, "max_length": length, "system": name, "vs": base,
                    "measured": round(r["supervised_tokens_per_cpu_s"] / b["supervised_tokens_per_cpu_s"], 3),
                    "ceiling": round(r["supervised_share_of_computed"] / b["supervised_share_of_computed"], 3),
                    "ceiling_tokens": f"{b['epoch']['computed']:,}/{r['epoch']['computed']:,}",
                    "speed": round(r["computed_tokens_per_cpu_s_median"] / b["computed_tokens_per_cpu_s_median"], 3),
                })  # fmt: skip
    return out


def table(results: list[dict], comps: list[dict]) -> list[str]:
    lines = [
        "| workload | max_length | system | supervised/computed | computed tok/CPU-s (median) | supervised tok/CPU-s "
        "| vs FastChat: measured (ceiling) | vs TRL: measured (ceiling) | peak RSS MB | timed steps x CPU s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    ratio = {(c["workload"], c["max_length"], c["system"], c["vs"]): c for c in comps}
    for r in results:
        if "skipped" in r:
            lines.append(
                f"| {r['workload']} | {r['max_length']} | {SYSTEMS[r['system']]} | skipped: {r['skipped']} |||||||"
            )
            continue

        def vs(base, r=r):
            c = ratio.get((r["workload"], r["max_length"], r["system"], base))
            return f"{c['measured']:.2f}x ({c['ceiling']:.2f}x = {c['ceiling_tokens']})" if c else ""

        steps = ", ".join(f"{s['cpu_s']:.0f}" for s in r["timed_steps"])
        lines.append(
            f"| {r['workload']} | {r['max_length']} | {SYSTEMS[r['system']]} | {100 * r['supervised_share_of_computed']:.1f}% "
            f"| {r['computed_tokens_per_cpu_s_median']:,.0f} | {r['supervised_tokens_per_cpu_s']:,.0f} | {vs('fastchat')} "
            f"| {vs('trl')} | {r['peak_rss_mb']:,} | {len(r['timed_steps'])} x [{steps}] |"
        )
    return lines


def write_markdown(result: dict, path: Path) -> None:
    prov = result["provenance"]
    lines = [
        "# Training throughput on real shapes (CPU-measured; GPU overhead modelled, not measured)",
        "",
        *common.header_lines(prov, result["command"]),
        f"Each system in a fresh process with {result['threads']} torch thread(s), {result['jobs']} process(es) at a time; one warm-up step, then "
        f"{result['timed_steps']} timed steps; rates per CPU second of the process (see the script's docstring).",
        "",
        "Workloads:",
        *[f"- `{k}`: {v}" for k, v in result["workloads"].items()],
        "",
        "Data (`sharegpt_mix` of benchmarks/preprocess.py, seed "
        f"{result['seed']}, {result['conversations']} conversations):",
        *[
            f"- {key}: tokenizer {d['tokenizer']}, template {d['template']}; {d['tokens']:,} tokens (p50 {d['tokens_p50']}, "
            f"p90 {d['tokens_p90']}, max {d['tokens_max']}), {d['truncated']} truncated, {d['supervised_tokens']:,} supervised"
            for key, d in result["data"].items()
        ],
        "",
        *table(result["results"], result["comparisons"]),
        "",
        "How to read it: *supervised/computed* is the share of the tokens a system computes that the loss trains "
        "on, counted over its whole epoch. The *ceiling* of a ratio is the ratio of those shares (for the same "
        "supervised tokens: computed tokens of the peer / computed tokens of the system); the *measured* ratio is "
        "the ceiling times the ratio of computed tokens per CPU second. Every run asserted a finite, non-zero "
        "gradient norm at each step and a lower loss on its first batch after training (throughput.json).",
        "",
        "## Summary",
        "",
        result["summary"],
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def summary(comps: list[dict]) -> str:
    parts = []
    for c in comps:
        if c["system"] in ("packed", "trl_kernel", "fastchat_own") or (
            c["system"] == "packed_sdpa" and c["vs"] == "trl"
        ):
            parts.append(
                f"{c['workload']} @ {c['max_length']}: {c['system']} vs {c['vs']} {c['measured']:.2f}x measured, "
                f"token-count ceiling {c['ceiling']:.2f}x ({c['ceiling_tokens']}), compute speed {c['speed']:.2f}x"
            )
    return "CPU-measured; GPU overhead modelled, not measured. " + "; ".join(parts) + "."


def merge(files: list[str], out: Path) -> int:
    """Runs of single systems made side by side (on a loaded machine) as one results file."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    commits = {r["provenance"]["git_commit"] for r in runs}
    if len(commits) != 1 or not all(r["provenance"]["git_clean"] for r in runs):
        sys.exit(
            f"error: runs from several commits or a dirty tree cannot be merged: {sorted(map(str, commits))}"
        )
    result = dict(runs[0])
    result["results"] = [x for r in runs for x in r["results"]]
    result["data"] = {k: v for r in runs for k, v in r["data"].items()}
    result["workloads"] = {k: v for r in runs for k, v in r["workloads"].items()}
    result["command"] = (
        "; ".join(r["command"] for r in runs) + f" (merged: --merge, {len(runs)} runs side by side)"
    )
    loads = [r["provenance"][k] for r in runs for k in ("load_average_1m_at_start", "load_average_1m_at_end")]
    result["provenance"] = dict(
        runs[0]["provenance"], load_average_1m_at_start=min(loads), load_average_1m_at_end=max(loads)
    )
    result["comparisons"] = comparisons(result["results"])
    result["summary"] = summary(result["comparisons"])
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_markdown(result, out.with_suffix(".md"))
    print("\n".join(table(result["results"], result["comparisons"])))
    print(result["summary"])
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="SmolLM2 at 2048, fastchat/packed/trl, 2 timed steps (< 6 min idle)",
    )
    p.add_argument(
        "--workloads", nargs="+", choices=["smollm2", "llama2-7b-slice"], help="default: per --quick"
    )
    p.add_argument("--lengths", type=int, nargs="+", help="model_max_length values (default 2048)")
    p.add_argument(
        "--systems", nargs="+", choices=list(SYSTEMS), help="default: per workload (see FULL/QUICK)"
    )
    p.add_argument("--conversations", type=int, help="conversations per workload (default 64; quick 24)")
    p.add_argument("--timed-steps", type=int, default=2, help="timed steps per system after 1 warm-up step")
    p.add_argument("--threads", type=int, default=1, help="torch threads per system process")
    p.add_argument(
        "--jobs", type=int, default=1, help="system processes at once (each timed in its own CPU s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=None,
                   help="write benchmarks/results/throughput.{json,md} (default: full run yes, --quick no)")  # fmt: skip
    p.add_argument("--out", default=str(common.RESULTS / "throughput"), help="results path without suffix")
    p.add_argument(
        "--allow-dirty", action="store_true", help="save from a dirty tree, flagged in the results"
    )
    p.add_argument("--merge", nargs="+", metavar="JSON", help="combine saved runs (one commit) into --out")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    common.reexec_in_bench_venv(("trl", "fastchat"))
    save = (not args.quick) if args.save is None else args.save
    if save:
        common.require_clean(args.allow_dirty)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    plan = QUICK if args.quick else FULL
    if args.workloads:
        plan = {w: plan.get(w) or FULL[w] for w in args.workloads}
    if args.lengths:
        plan = {w: {n: next(iter(by.values())) for n in args.lengths} for w, by in plan.items()}
    if args.systems:
        plan = {w: {n: args.systems for n in by} for w, by in plan.items()}
    n = args.conversations or (24 if args.quick else 64)
    work = Path(tempfile.mkdtemp(prefix="llama-sft-throughput-"))
    try:
        return run_all(args, plan, n, save, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args, plan: dict, n: int, save: bool, work: Path) -> int:
    prov, started = common.provenance(), time.perf_counter()
    specs, data = [], {}
    for wl, by_length in plan.items():
        for length, systems in by_length.items():
            key = f"{wl}@{length}"
            want_fc = "fastchat_own" in systems and not available("fastchat_own", wl)
            data[key] = prepare_data(wl, length, n, args.seed, want_fc, work)
            for system in systems:
                why = available(system, wl)
                if why:
                    specs.append({"system": system, "workload": wl, "max_length": length, "skipped": why})
                    continue
                specs.append({
                    "system": system, "workload": wl, "max_length": length, "data": data[key]["file"],
                    "model": workload(wl)["model"], "attention": ATTENTION.get(system, "sdpa"),
                    "batch": BATCH.get(system, 1), "timed_steps": args.timed_steps, "threads": args.threads,
                    "seed": args.seed, "out": str(work / f"{system}-{key}"),
                })  # fmt: skip

    def one(spec: dict) -> dict:
        key = f"{spec['workload']}@{spec['max_length']}"
        if "skipped" in spec:
            print(f"[{key}] {spec['system']}: skipped ({spec['skipped']})", file=sys.stderr, flush=True)
            return spec
        try:
            r = run_worker(spec)
        except RuntimeError as exc:  # one broken system must not lose the others' measurements
            print(f"[{key}] {spec['system']}: FAILED\n{exc}", file=sys.stderr, flush=True)
            return {k: spec[k] for k in ("system", "workload", "max_length")} | {
                "skipped": f"failed: {str(exc)[-300:]}"
            }
        print(
            f"[{key}] {spec['system']:12s} {r['supervised_tokens_per_cpu_s']:8,.1f} supervised tok/CPU-s "
            f"({100 * r['supervised_share_of_computed']:.1f}% of {r['computed_tokens_per_cpu_s_median']:,.0f} "
            f"computed), loss {r['loss_first_batch']}, peak {r['peak_rss_mb']} MB "
            f"[{time.perf_counter() - started:.0f}s]",
            file=sys.stderr,
            flush=True,
        )
        return r

    # Several systems at once only shares the cores: rates are per CPU second of each process.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one, specs))
    comps = comparisons(results)
    result = {
        "command": "python " + " ".join(["benchmarks/throughput.py", *sys.argv[1:]]),
        "provenance": common.finish(prov),
        "quick": args.quick,
        "threads": args.threads,
        "jobs": args.jobs,
        "timed_steps": args.timed_steps,
        "seed": args.seed,
        "conversations": n,
        "workloads": {wl: workload(wl)["describe"] for wl in plan},
        "data": data,
        "results": results,
        "comparisons": comps,
        "summary": summary(comps),
        "elapsed_s": round(time.perf_counter() - started),
    }
    if save:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        write_markdown(result, out.with_suffix(".md"))
        print(f"wrote {out}.json and .md", file=sys.stderr)
    print("\n".join(table(results, comps)))
    print(result["summary"])
    print(
        f"elapsed {result['elapsed_s']} s, load average {prov['load_average_1m_at_start']} -> {common.load_average()}"
    )
    first = next(iter(plan))
    length = next(iter(plan[first]))
    c = {
        x["vs"]: x
        for x in comps
        if (x["workload"], x["max_length"], x["system"]) == (first, length, "packed")
    }
    fmt = lambda base: f"{c[base]['measured']:.2f}" if base in c else "n/a"  # noqa: E731
    print(f"supervised tokens/s ratio: vs FastChat {fmt('fastchat')}, vs TRL {fmt('trl')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
