"""`llama-sft eval`: loss, generations and long-context loss for a run, written as JSON and a table.

Defaults come from the run record (masking, trained length, RoPE parameters), so eval measures
what training optimised unless told otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..generation import SamplingParams
from .generations import generate_answers, score_answers
from .loss import position_loss, supervised_loss

RESULTS = "eval_results.json"
GENERATIONS = "generations.jsonl"


@dataclass
class EvalOptions:
    data: list[str]
    output_dir: str | None = None  # default: <run>/eval
    data_format: str = "auto"
    skip_bad: bool = False
    strict: bool = False
    limit: int | None = None  # first N conversations only
    max_length: int | None = None  # default: the run's model_max_length
    masking: str | None = None  # default: the run's masking
    batch_size: int = 4
    generate: bool = True
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=128))
    long_context: bool = False
    context_length: int | None = None  # default: the trained length
    windows: int = 4
    buckets: int = 8
    progress: bool = True


def trained_length(record: dict | None, model) -> int:
    from ..generation import context_length

    limit = context_length(model) or 2048
    if record and record.get("model_max_length"):
        return min(int(record["model_max_length"]), limit)
    return limit


def original_context(rope: dict | None, length: int) -> int | None:
    """The context the base model had before RoPE scaling (None when unscaled or unknown)."""
    if not rope or rope.get("rope_type") in (None, "default"):
        return None
    if rope.get("original_max_position_embeddings"):
        return int(rope["original_max_position_embeddings"])
    factor = float(rope.get("factor") or 1.0)
    return int(length / factor) if factor > 1 else None


def _bar(options: EvalOptions, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="conv" if desc != "long context" else "row",
        disable=not options.progress,
        leave=False,
    )


def run_eval(model, tokenizer, template, run_dir: str | Path, options: EvalOptions) -> dict:
    from ..data.validate import load_conversations
    from ..train.outputs import read_run_record

    record = read_run_record(run_dir)
    conversations, report = load_conversations(
        options.data,
        options.data_format,
        strict=options.strict,
        skip_bad=options.skip_bad,
        template_name=None,
    )
    if options.limit is not None:
        conversations = conversations[: options.limit]
    if not conversations:
        raise ConfigError(f"{', '.join(options.data)}: no usable conversations to evaluate")
    masking = options.masking or (record or {}).get("masking") or "train_on_assistant"
    length = options.max_length or trained_length(record, model)
    result: dict = {
        "model": str(run_dir),
        "template": template.name,
        "data": [str(p) for p in options.data],
        "skipped_records": len(report.skipped_ids),
        "max_length": length,
    }
    with _bar(options, len(conversations), "loss") as bar:
        loss = supervised_loss(
            model, tokenizer, template, conversations, length, masking, options.batch_size, bar.update
        )
    per_conversation = loss.pop("per_conversation")
    result["loss"] = loss
    out_dir = Path(options.output_dir) if options.output_dir else Path(run_dir) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    if options.generate:
        with _bar(options, len(conversations), "generate") as bar:
            answers = generate_answers(
                model, tokenizer, template, conversations, options.sampling, bar.update
            )
        for answer, conv_loss in zip(answers, per_conversation, strict=True):
            answer["loss"] = conv_loss["loss"] if conv_loss["tokens"] else None
        with open(out_dir / GENERATIONS, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        s = options.sampling
        result["generation"] = {
            **score_answers(answers),
            "file": str(out_dir / GENERATIONS),
            "sampling": "greedy"
            if not s.temperature
            else f"temperature {s.temperature}, top_p {s.top_p}, seed {s.seed}",
            "max_new_tokens": s.max_new_tokens,
        }
    if options.long_context:
        rope = (record or {}).get("rope_parameters") or getattr(model.config, "rope_parameters", None)
        context = options.context_length or trained_length(record, model)
        texts = [c.text for c in _rendered(template, tokenizer, conversations)]
        with _bar(options, options.windows, "long context") as bar:
            result["long_context"] = position_loss(
                model,
                tokenizer,
                texts,
                context,
                options.windows,
                options.buckets,
                original_context=original_context(rope, context),
                progress=bar.update,
            )
        result["long_context"]["rope_parameters"] = rope
    (out_dir / RESULTS).write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    result["results_file"] = str(out_dir / RESULTS)
    return result


def _rendered(template, tokenizer, conversations):
    from ..data.templates import SpecialText

    special = SpecialText.from_tokenizer(tokenizer)
    return [template.render(c.messages, special=special, tools=c.tools) for c in conversations]


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_summary(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    loss = result["loss"]
    table = Table(
        title=f"eval: {result['model']} ({result['template']}, {loss['conversations']} conversations)"
    )
    for col in ("metric", "tokens", "loss", "perplexity"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    table.add_row(
        f"supervised tokens ({loss['masking']})",
        str(loss["tokens"]),
        _fmt(loss["loss"]),
        _fmt(loss["perplexity"], 3),
    )
    for turn, t in loss["per_turn"].items():
        label = f"  reply {turn}" if turn != "0" else "  outside replies"
        table.add_row(label, str(t["tokens"]), _fmt(t["loss"]), _fmt(t["perplexity"], 3))
    console.print(table)
    gen = result.get("generation")
    if gen:
        parts = [f"{gen['generated']} answers ({gen['sampling']})"]
        if "exact_match" in gen:
            parts.append(f"exact match {gen['exact_match']:.1%}")
        if "rouge_l" in gen:
            parts.append(f"ROUGE-L F1 {gen['rouge_l']:.3f}")
        if gen.get("stopped_by_length"):
            parts.append(f"{gen['stopped_by_length']} hit max_new_tokens")
        console.print(" · ".join(parts) + f" -> {gen['file']}", highlight=False)
    lc = result.get("long_context")
    if lc:
        t = Table(
            title=f"loss by position ({lc['windows']} rows of {lc['length']} tokens"
            + (", data reused" if lc["data_reused"] else "")
            + ")"
        )
        for col in ("positions", "tokens", "loss", "perplexity"):
            t.add_column(col, justify="right")
        for b in lc["buckets"]:
            mark = " *" if b.get("beyond_original_context") else ""
            t.add_row(
                f"{b['start']}-{b['end']}{mark}", str(b["tokens"]), _fmt(b["loss"]), _fmt(b["perplexity"], 3)
            )
        console.print(t)
        if lc.get("original_context"):
            console.print(
                f"* past the base model's original context ({lc['original_context']}); RoPE {lc['rope_parameters']}"
            )
    console.print(f"results: {result.get('results_file')}", highlight=False)
