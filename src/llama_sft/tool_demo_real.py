"""`llama-sft demo --tools`: a real chat model learns to call tools on prompts it never saw, on CPU.

SmolLM2-135M-Instruct is fine-tuned with LoRA through the real `train` code path on the tool set the
package ships (`tool_demo.py`: `get_weather` / `get_time` in OpenAI's record shape, plus plain
questions), rendered with the built-in `chatml` template, whose tool format is Hermes'
`<tool_call>` convention. SmolLM2's own template has no tool support (it would drop the calls), so
the run saves `chatml`, and `llama-sft serve` renders exactly the prompts scored here. The base
model and the fine-tuned one then answer the held-out prompts (cities never in training, half in
unseen phrasings, new plain questions) as `serve` does, scored by `tool_demo.score`.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

from .demo_real import _pct, measure, real_model, save_results, train_flags
from .tool_demo import score, shipped, write_jsonl

MAX_LENGTH = 384  # the longest training record is ~340 tokens, most of it the tool schemas
# Batch 4 as 2 x 2 accumulated: four ~330-token records at once peaked at 4.5 GB RSS (measured).
# Shown side by side: seen and unseen phrasings of both tools, a fact and a weather topic.
EXAMPLES = (
    "heldout_0",
    "heldout_1",
    "heldout_2",
    "heldout_3",
    "heldout_5",
    "heldout_plain_1",
    "heldout_plain_2",
)


def call_text(calls: list) -> str:
    return "; ".join(f"{name}({json.dumps(args, ensure_ascii=False)})" for name, args in calls) or "(no call)"


def run_real_tool_demo(
    output_dir: str | Path = "runs/tool-demo",
    steps: int = 32,
    learning_rate: float = 2e-3,
    lora_r: int = 16,
    seed: int = 0,
    model_dir: str | Path | None = None,
    heldout: list[dict] | None = None,
) -> dict:
    """Score the base model on the held-out prompts, fine-tune, score again; `heldout` narrows the
    held-out records (a test's reduced run)."""
    import torch
    from rich.console import Console

    from .config import parse_run_config
    from .generation import load_for_inference
    from .model.trained import load_trained
    from .train.run import train

    console = Console()
    started, cpu0 = time.perf_counter(), os.times()
    out = Path(output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    model_dir = real_model(model_dir, console)
    train_records, held = shipped("train"), heldout if heldout is not None else shipped("heldout")
    data = out / "data" / "train.jsonl"
    write_jsonl(data, train_records)
    write_jsonl(out / "data" / "heldout.jsonl", held)
    console.print(
        f"      data: {len(train_records)} training records (get_weather, get_time, plain questions); "
        f"{len(held)} held-out (cities never in training) -> {out / 'data'}"
    )

    console.print("[bold]2/4[/] the base model answers the held-out prompts (template chatml, Hermes tools)")
    torch.manual_seed(seed)
    base, tokenizer, template = load_for_inference(model_dir, conv_template="chatml")
    before = score(base, tokenizer, template, held)
    console.print(
        f"      exact call {_pct(before['call'])}, no call when none needed {_pct(before['no_call'])}"
    )
    del base
    gc.collect()

    console.print(
        f"[bold]3/4[/] LoRA r{lora_r} on every projection, {steps} steps x batch 4, lr {learning_rate}"
    )
    flags = train_flags(
        model_dir,
        data,
        out,
        steps,
        learning_rate,
        lora_r,
        seed,
        "chatml",
        MAX_LENGTH,
        dropout=0.0,
        micro_batch=2,
    )
    summary = train(parse_run_config(flags))
    model, tokenizer, template = load_trained(out / "model")
    after = score(model, tokenizer, template, held)
    result = {
        "model": "SmolLM2-135M-Instruct (Q4_1 dequantized to fp32)",
        "model_dir": str(model_dir),
        "before": before,
        "after": after,
        "train": summary,
        "settings": {"steps": steps, "learning_rate": learning_rate, "lora_r": lora_r, "batch": 4},
        "settings_extra": {
            "seq_len": MAX_LENGTH,
            "template": "chatml",
            "lora_dropout": 0.0,
            "micro_batch": 2,
        },
        "measured": measure(started, cpu0),
        "output_dir": str(out),
    }
    show(console, result)
    save_results(out, result, report_section(result))
    console.print(
        f"Saved: adapter and report.md in {out / 'model'}; results in {out / 'demo_results.json'}.\n"
        f"Next: `llama-sft serve {out / 'model'}` and call it with `tools=` from the openai client."
    )
    return result


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mark(ok: bool | None) -> str:
    return "✓" if ok else "✗"


def example_rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(prompt, base reply, fine-tuned reply, expected call) for a few held-out prompts, marked:
    the `EXAMPLES`, or the first four when the held-out set has none of them."""
    pairs = list(zip(result["before"]["rows"], result["after"]["rows"], strict=True))
    chosen = [(b, a) for b, a in pairs if b["id"] in EXAMPLES] or pairs[:4]
    rows = []
    for b, a in chosen:
        key = "call" if "call" in b else "no_call"
        shown = [f"{_mark(r[key])} {_clip(r['reply'])}" for r in (b, a)]
        rows.append((b["prompt"], *shown, call_text(b["expected"])))
    return rows


def score_rows(result: dict) -> list[tuple[str, str, str]]:
    b, a = result["before"], result["after"]
    n_call = sum("call" in r for r in b["rows"])
    n_plain = len(b["rows"]) - n_call
    return [
        (f"exact call: name and arguments ({n_call} prompts)", _pct(b["call"]), _pct(a["call"])),
        ("answer written from the tool's result (exact)", _pct(b["answer"]), _pct(a["answer"])),
        (f"no call where none is needed ({n_plain} prompts)", _pct(b["no_call"]), _pct(a["no_call"])),
    ]


def show(console, result: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print("[bold]4/4[/] held-out prompts (cities never in training), base vs fine-tuned:")
    table = Table()
    for col in ("prompt", "base model", "fine-tuned", "expected call"):
        table.add_column(col, overflow="fold")
    for row in example_rows(result):
        table.add_row(*(escape(x) for x in row))
    console.print(table)
    summary = Table(title="score on held-out prompts")
    for col in ("measure", "base", "fine-tuned"):
        summary.add_column(col)
    for row in score_rows(result):
        summary.add_row(*row)
    console.print(summary)
    m = result["measured"]
    console.print(
        f"      wall {m['wall_s']} s, CPU {m['cpu_s']} s on {m['threads']} threads, peak RSS {m['peak_rss_gb']} GB"
    )


def report_section(result: dict) -> str:
    m = result["measured"]

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "\\n")[:120]

    lines = [
        "",
        "## Tool demo: base vs fine-tuned on held-out prompts",
        "",
        "| measure | base | fine-tuned |",
    ]
    lines += ["|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in score_rows(result)), ""]
    lines += [
        f"Wall {m['wall_s']} s, CPU {m['cpu_s']} s, peak RSS {m['peak_rss_gb']} GB. "
        "Model: SmolLM2-135M-Instruct, Q4_1 dequantized to fp32 (lossy against the bf16 release).",
        "",
        "| prompt | base | fine-tuned | expected call |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(cell(x) for x in row)} |" for row in example_rows(result)]
    return "\n".join(lines) + "\n"
