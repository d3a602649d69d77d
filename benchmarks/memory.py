"""Plain vs chunked cross-entropy (train/loss.py): peak memory from PyTorch's CPU allocator and step time.

Two measurements (benchmarks/memory_worker.py), each in fresh single-threaded processes so every peak
starts from an empty allocator and neighbours on a shared machine disturb CPU seconds little:

- `head`: the loss alone, from final hidden states [tokens x hidden] through the head to the gradient
  (every position supervised: the worst case for chunking, which skips ignored ones). Its peak above
  the inputs is the planner's `logits` term, measured, minus the gradients the backward must write
  anyway (hidden's, and the head weight's when it trains). Plain and chunked alternate (ABAB...) in one
  process; times are medians of the timed repeats after one warm-up pair.
- `step`: whole training steps (forward, backward, AdamW) with gradient checkpointing, as in the
  planner's 24 GiB example, on 1 row of real chat data encoded by llama-sft (prompts masked,
  train_on_assistant), the loss implementations alternating step by step in one process: `plain`,
  `chunked`, and `chunked-all` (every token supervised, the chunked loss's worst case). Peak = what is
  resident at the step's start + the allocator's peak above it; time is the median of the timed steps
  after one warm-up round; every variant asserts its loss fell and its gradient norms are non-zero.

Models: the real SmolLM2-135M-Instruct (49,152 vocab, tied head, fp32) and a LLaMA-3-vocabulary model
(128,256 vocab, hidden 256, 2 layers, random weights).

    python benchmarks/memory.py --only head --seqs 2048
    flock /work/wt/_briefs/bigmem.lock python benchmarks/memory.py --only head --seqs 8192   # ~13 GB
    python benchmarks/memory.py --only step --step smollm2:lora:2048 --step llama3vocab:lora:2048

Writes benchmarks/results/memory.{json,md}; sections and rows run separately are merged (each section
names the commit it ran at). Refuses a dirty tree (benchmarks/common.py) unless --allow-dirty.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from _measure_memory import median, run_worker  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORKER = Path(__file__).with_name("memory_worker.py")
VARIANTS = ("plain", "chunked", "chunked-all")


def summarize_steps(runs: list[dict]) -> list[dict]:
    """One row per run: medians of each variant, ratios against plain (CPU seconds: neighbours inflate wall)."""
    out = []
    for r in runs:
        row = {k: r[k] for k in ("model", "method", "seq", "supervised_share", "conversations")}
        for v, o in r["rows"].items():
            row[v] = {"peak_mib": round(median(o["peak_mib"]), 1), "step_s": round(median(o["step_s"]), 2),
                      "cpu_s": round(median(o["cpu_s"]), 2), "timed_steps": len(o["cpu_s"]),
                      "first_loss": round(o["losses"][0], 4), "last_loss": round(o["losses"][-1], 4)}  # fmt: skip
        p = row["plain"]
        for v in r["rows"]:
            if v != "plain":
                row[v]["peak_down"] = round(p["peak_mib"] / row[v]["peak_mib"], 2)
                row[v]["cpu_ratio"] = round(row[v]["cpu_s"] / p["cpu_s"], 3)
                row[v]["wall_ratio"] = round(row[v]["step_s"] / p["step_s"], 3)
        out.append(row)
    return out


def summarize_heads(runs: list[dict]) -> list[dict]:
    """One row per model, method and length. Peaks from any run that measured the implementation; the time
    ratio only from runs where both alternated in one process. A plain peak measured only at 2048 tokens
    is scaled to longer rows (the logits are tokens x vocab: exactly linear) and flagged as such."""
    out, groups = [], {}
    for r in runs:
        groups.setdefault((r["model"], r["method"], r["seq"]), []).append(r)
    for (model, method, seq), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        row = {"model": model, "method": method, "seq": seq, "vocab": rs[0]["vocab"],
               "chunk_tokens": rs[0]["chunk_tokens"], "repeats": max(r["repeats"] for r in rs),
               "plain_source": "measured"}  # fmt: skip
        for impl in ("plain", "chunked"):
            have = [r["rows"][impl] for r in rs if impl in r["rows"]]
            row[f"{impl}_logits_mib"] = (
                round(median([x for h in have for x in h["peak_mib"]]), 1) if have else None
            )
        pairs = [r for r in rs if {"plain", "chunked"} <= set(r["rows"])]
        for impl in ("plain", "chunked"):
            for k, src in (("s", "step_s"), ("cpu_s", "cpu_s")):
                xs = [x for r in pairs for x in r["rows"][impl][src]]
                row[f"{impl}_{k}"] = round(median(xs), 3) if xs else None
        if row["plain_logits_mib"] is None:
            short = [
                r
                for r in runs
                if (r["model"], r["method"], r["seq"]) == (model, method, 2048) and "plain" in r["rows"]
            ]
            if short:
                row["plain_logits_mib"] = round(median(short[0]["rows"]["plain"]["peak_mib"]) * seq / 2048, 1)
                row["plain_source"] = "scaled from 2048"
        if row["plain_logits_mib"] and row["chunked_logits_mib"]:
            row["logits_ratio"] = round(row["plain_logits_mib"] / row["chunked_logits_mib"], 1)
        if row["plain_cpu_s"]:
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
    lines = ["# Plain vs chunked cross-entropy: memory and step time", ""]
    for name in ("head", "step"):  # each run names its command, commit and load; older runs their section's
        provs = [r.get("provenance") or result.get(f"{name}_provenance") for r in result[f"{name}_runs"]]
        for prov in {p["command"]: p for p in provs if p}.values():
            lines += [f"**{name} rows**: " + " ".join(common.header_lines(prov, prov["command"])), ""]
    for note in {json.dumps(r["source"]): r["source"] for r in result.get("step_logged", [])}.values():
        lines += [f"**step rows from a run's log** (medians only): `{note['command']}` at commit `{note['commit']}` "
                  f"(clean tree), {note['date']}, 1-minute load {note['load']}. {note['why']}", ""]  # fmt: skip
    lines += [
        "Peaks are c10's CPU allocator (the profiler's memory events, as `llama_sft.plan.measure`); times are "
        "medians after a warm-up, the implementations interleaved in one single-threaded process. The ratios "
        "compare process CPU seconds, which neighbours on this shared machine distort far less than wall seconds "
        "(both shown). CPU-measured; GPU overhead modelled, not measured.",
        "",
        "## The logits term (loss alone: hidden states -> head -> loss -> gradients, every token supervised)",
        "",
        "| model | method | tokens | vocab | chunk | plain MiB | chunked MiB | down | plain CPU s (wall) | "
        "chunked CPU s (wall) | CPU-time ratio | timed pairs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(x, fmt=".0f"):
        return "-" if x is None else format(x, fmt)

    for r in result["head"]:
        plain = num(r["plain_logits_mib"]) + (
            "" if r["plain_source"] == "measured" else f" ({r['plain_source']})"
        )
        timing = (
            f"{num(r['plain_cpu_s'], '.2f')} ({num(r['plain_s'], '.2f')}) | "
            f"{num(r['chunked_cpu_s'], '.2f')} ({num(r['chunked_s'], '.2f')}) | {num(r.get('cpu_ratio'), '.2f')}"
        )
        lines.append(
            f"| {r['model']} | {r['method']} | {r['seq']} | {r['vocab']} | {r['chunk_tokens']} | {plain} | "
            f"{num(r['chunked_logits_mib'])} | {num(r.get('logits_ratio'))}x | {timing} | {r['repeats']} |"
        )
    lines += [
        "",
        "## Whole steps (gradient checkpointing, AdamW, 1 row of chat data; `chunked-all`: every token supervised)",
        "",
        "| model | method | tokens | supervised | variant | peak MiB | down vs plain | CPU s/step (wall) | "
        "CPU-time ratio | timed steps | loss first -> last |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["step"] + result.get("step_logged", []):
        for v in VARIANTS:
            if not (x := r.get(v)):
                continue
            sup = "100%" if v.endswith("-all") else f"{100 * r['supervised_share']:.0f}%"
            down = f"{x['peak_down']:.2f}x" if "peak_down" in x else "-"
            ratio = f"{x['cpu_ratio']:.3f}" if "cpu_ratio" in x else "1"
            lines.append(
                f"| {r['model']} | {r['method']} | {r['seq']} | {sup} | {v} | {x['peak_mib']:.0f} | {down} | "
                f"{x['cpu_s']:.2f} ({x['step_s']:.2f}) | {ratio} | {x['timed_steps']} | "
                f"{x['first_loss']:.3f} -> {x['last_loss']:.3f} |"
            )
    lines += [
        "",
        "## The planner's 24 GiB example (`llama-sft plan --model <smollm2> --gpus 1 --gpu-memory 24GiB "
        "--seq-len 4096 --method lora`, predicted)",
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


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of this run replace stored rows of the same model, method and length; the others stay."""
    key = lambda r: (r["model"], r["method"], r["seq"], tuple(r.get("impls", ())))  # noqa: E731
    mine = {key(r) for r in new}
    return sorted(
        [r for r in old if key(r) not in mine] + new, key=lambda r: (r["seq"], r["model"], r["method"])
    )


def save(result: dict, keys: tuple[str, ...]) -> None:
    """Write `keys` of `result` over the stored file, re-read now: a section run at the same time keeps its own."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "memory.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    for k in ("head", "step", "planner", "head_runs", "step_runs"):
        stored.setdefault(k, [])
    for k in keys:  # runs: merged by row, so two sections or two step runs at once keep each other's rows
        stored[k] = merge_rows(stored[k], result[k]) if k.endswith("_runs") else result[k]
    stored["head"] = summarize_heads(stored["head_runs"])
    stored["step"] = summarize_steps(stored["step_runs"])
    path.write_text(json.dumps(stored, indent=1))
    (RESULTS / "memory.md").write_text(markdown(stored))


def add_logged_step(path: Path) -> int:
    """Rows printed by a step run (its medians: per-step lists are lost) stored with where they came from."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
    note = json.loads(path.with_suffix(".source.json").read_text())  # commit, command, load, why
    stored = json.loads((RESULTS / "memory.json").read_text())
    stored["step_logged"] = [row | {"source": note} for row in lines]
    (RESULTS / "memory.json").write_text(json.dumps(stored, indent=1))
    (RESULTS / "memory.md").write_text(markdown(stored))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["head", "step", "planner"], default=None, help="run one section")
    ap.add_argument("--seqs", default="2048,8192", help="head rows: token counts (comma separated)")
    ap.add_argument("--models", default="smollm2,llama3vocab", help="head rows: models")
    ap.add_argument("--repeats", type=int, default=3, help="timed loss-alone pairs per row at <= 2048 tokens")
    ap.add_argument("--long-repeats", type=int, default=1, help="timed loss-alone pairs per row above 2048")
    ap.add_argument(
        "--impls", default="plain,chunked",
        help="head rows: implementations (chunked alone needs no big-memory lock; plain is then scaled from 2048)",
    )  # fmt: skip
    ap.add_argument(
        "--step", action="append", default=None, metavar="MODEL:METHOD:SEQ",
        help="whole-step rows (repeatable); default smollm2:lora:2048 and llama3vocab:lora:2048",
    )  # fmt: skip
    ap.add_argument("--steps", type=int, default=3, help="timed whole steps per variant (after 1 warm-up)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="whole-step variants")
    ap.add_argument(
        "--add-logged-step", metavar="FILE",
        help="store whole-step summary lines a run printed (JSON, one a line) whose writer failed after its "
        "worker finished; kept apart under step_logged with that run's commit",
    )  # fmt: skip
    ap.add_argument(
        "--allow-dirty", action="store_true", help="save from a dirty tree, flagged in the results"
    )
    args = ap.parse_args(argv)
    if args.add_logged_step:
        return add_logged_step(Path(args.add_logged_step))
    common.require_clean(args.allow_dirty)
    command = "python benchmarks/memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out_json = RESULTS / "memory.json"
    result = json.loads(out_json.read_text()) if out_json.exists() else {}
    for k in ("head", "step", "planner", "head_runs", "step_runs"):
        result.setdefault(k, [])
    if args.only in (None, "head"):
        prov = common.provenance() | {"command": command}
        runs = []
        for seq in [int(x) for x in args.seqs.split(",")]:
            for model in args.models.split(","):
                for method in ("lora", "full"):
                    repeats = args.repeats if seq <= 2048 else args.long_repeats
                    spec = {"kind": "head", "model": model, "method": method, "seq": seq, "repeats": repeats}
                    if args.impls != "plain,chunked":
                        spec["impls"] = args.impls.split(",")
                    runs.append(run_worker(WORKER, spec))
                    print(json.dumps(summarize_heads(runs[-1:])[0]), flush=True)
                    result["head_provenance"] = common.finish(prov)
                    runs[-1]["provenance"] = result["head_provenance"]
                    result["head_runs"] = merge_rows(result["head_runs"], runs)
                    save(result, ("head_provenance", "head_runs"))
    if args.only in (None, "step"):
        prov = common.provenance() | {"command": command}
        runs = []
        for item in args.step or ["smollm2:lora:2048", "llama3vocab:lora:2048"]:
            model, method, seq = item.split(":")
            spec = {"kind": "step", "model": model, "method": method, "seq": int(seq),
                    "variants": args.variants.split(","), "warmup": 1, "steps": args.steps}  # fmt: skip
            runs.append(run_worker(WORKER, spec, timeout=3 * 3600))
            print(json.dumps(summarize_steps(runs[-1:])[0]), flush=True)
            result["step_provenance"] = common.finish(prov)
            runs[-1]["provenance"] = result["step_provenance"]
            result["step_runs"] = merge_rows(result["step_runs"], runs)
            save(result, ("step_provenance", "step_runs"))
    result["planner"] = planner_rows()
    save(result, ("planner",))
    print(markdown(json.loads((RESULTS / "memory.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
