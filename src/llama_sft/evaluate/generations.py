"""Answer each conversation's last user turn and score the answer against the reply in the data.

Prompts are built by `generation.build_prompt`, the same function chat and serve use; the
reference is the conversation's last assistant reply. Scores: exact match (after stripping
surrounding whitespace) and ROUGE-L F1 (the `rouge-score` package, on lower-cased Unicode words).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from ..data.messages import Conversation, Message
from ..data.templates import Template
from ..generation import ReplyStream, SamplingParams, build_prompt


def prompt_and_reference(conversation: Conversation) -> tuple[list[Message], str | None]:
    """The conversation up to and including its last user turn, and the reply that followed (if any)."""
    messages = list(conversation.messages)
    if messages and messages[-1].role == "assistant":
        return messages[:-1], messages[-1].content
    return messages, None


def eval_prompt(template: Template, tokenizer, conversation: Conversation) -> str:
    return build_prompt(template, tokenizer, prompt_and_reference(conversation)[0])


class _Words:
    """rouge-score's default tokenizer keeps only [a-z0-9]; this one keeps any Unicode word."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def rouge_l_scorer() -> Callable[[str, str], float] | None:
    """ROUGE-L F1 as a function (reference, prediction) -> float, or None without rouge-score."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return None
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
    return lambda reference, prediction: scorer.score(reference, prediction)["rougeL"].fmeasure


def generate_answers(
    model,
    tokenizer,
    template: Template,
    conversations: Sequence[Conversation],
    params: SamplingParams,
    progress: Callable[[int], None] | None = None,
) -> list[dict]:
    """One record per conversation: prompt, reference, generation and its scores."""
    rouge = rouge_l_scorer()
    records = []
    for n, conv in enumerate(conversations):
        messages, reference = prompt_and_reference(conv)
        # A distinct, reproducible seed per conversation, so sampled answers do not depend on order.
        seeded = replace(params, seed=params.seed + n) if params.seed is not None else params
        stream = ReplyStream(model, tokenizer, template, messages, seeded)
        answer = "".join(stream).strip()
        record = {
            "id": conv.id,
            "source": conv.source,
            "turn": sum(m.role == "user" for m in messages),
            "prompt": messages[-1].content if messages else "",
            "reference": reference,
            "generation": answer,
            "finish_reason": stream.finish_reason,
            "prompt_tokens": stream.prompt_tokens,
            "completion_tokens": stream.completion_tokens,
        }
        if reference is not None:
            record["exact_match"] = int(answer == reference.strip())
            if rouge is not None:
                record["rouge_l"] = round(rouge(reference, answer), 4)
        records.append(record)
        if progress:
            progress(1)
    return records


def score_answers(records: Sequence[dict]) -> dict:
    scored = [r for r in records if r.get("reference") is not None]
    out: dict = {"generated": len(records), "with_reference": len(scored)}
    if scored:
        out["exact_match"] = round(sum(r["exact_match"] for r in scored) / len(scored), 4)
        if all("rouge_l" in r for r in scored):
            out["rouge_l"] = round(sum(r["rouge_l"] for r in scored) / len(scored), 4)
        else:
            out["rouge_l_note"] = "install rouge-score for ROUGE-L (pip install rouge-score)"
    out["stopped_by_length"] = sum(r["finish_reason"] == "length" for r in records)
    return out
