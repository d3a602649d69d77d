"""Conversation -> (input_ids, labels), with labels derived from the template's character spans.

The input ids are exactly `tokenizer(rendered_text, add_special_tokens=False)`: the text a server
builds with the same template (BOS included as text, as HF chat templates do). A token is
supervised when it *starts* inside a supervised character span, so the space the template puts
after "ASSISTANT:" is trained even when LLaMA's vocabulary makes it a token of its own, and EOS
is trained even when pad == eos.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from .messages import Conversation
from .templates import Rendered, SpecialText, Template, TemplateError

IGNORE_INDEX = -100
STRATEGIES = ("train_on_assistant", "train_on_last", "train_on_all")
# Appended to a strategy name (so it is part of the data cache key): the final trace is context.
REASONING_AS_CONTEXT = "+reasoning_as_context"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    text: str
    full_length: int  # tokens before truncation
    # Tokens that straddle a prompt/reply boundary (the prompt tokenizes differently alone).
    boundary_tokens: int = 0
    # Character offsets of the kept tokens and the template's reply spans, so callers that map tokens
    # back to text (inspect, per-turn eval loss) need not tokenize or render again.
    offsets: list = field(default_factory=list)
    spans: tuple = ()

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def n_supervised(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


def supervised_spans(
    rendered: Rendered, strategy: str, train_on_reasoning: bool = True
) -> tuple[tuple[int, int], ...]:
    if not train_on_reasoning and rendered.trace_spans:
        from .reasoning import subtract

        return subtract(supervised_spans(rendered, strategy), rendered.trace_spans)
    if strategy == "train_on_assistant":
        return rendered.spans
    if strategy == "train_on_last":
        return rendered.spans[-1:]
    if strategy == "train_on_all":
        return ((0, len(rendered.text)),)
    raise ValueError(f"unknown masking strategy {strategy!r}; choose from {STRATEGIES}")


_START, _END = itemgetter(0), itemgetter(1)


def labels_from_offsets(
    ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans
) -> tuple[list[int], int]:
    """Label each token by where it starts; also count tokens that straddle a span's start."""
    if len(ids) == 0:
        return [], 0
    # Plain lists of Python ints, as tokenizers return them (so labels hold Python ints either way).
    if isinstance(ids, list) and type(ids[0]) is int and isinstance(offsets, list) and _ordered(offsets):
        return _labels_ordered(ids, offsets, spans)
    return _labels_any(ids, offsets, spans)


def _ordered(offsets: list) -> bool:
    # sorted() is stable, so it returns the list unchanged exactly when the keys never decrease.
    return sorted(offsets, key=_START) == offsets and sorted(offsets, key=_END) == offsets


def _labels_ordered(ids: list[int], offsets: list, spans) -> tuple[list[int], int]:
    """The common case, starts and ends both non-decreasing: each span is one slice of tokens,
    found by bisection, and its straddlers are the run just before it whose ends pass its start.
    Equal to `_labels_any` for such offsets, at a fraction of the cost (no per-token Python)."""
    labels = [IGNORE_INDEX] * len(ids)
    straddle = 0
    for s, e in spans:
        first = bisect_left(offsets, s, key=_START)  # first token starting at or after s
        stop = bisect_left(offsets, e, lo=first, key=_START) if e > s else first
        labels[first:stop] = ids[first:stop]
        straddle += first - bisect_right(offsets, s, hi=first, key=_END)  # start < s < end
    return labels, straddle


def _labels_any(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans) -> tuple[list[int], int]:
    ids_arr = np.asarray(ids, dtype=np.int64)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = off[:, 0], off[:, 1]
    supervised = np.zeros(len(ids_arr), dtype=bool)
    straddle = 0
    for s, e in spans:
        supervised |= (starts >= s) & (starts < e)
        straddle += int(np.count_nonzero((starts < s) & (ends > s)))
    return np.where(supervised, ids_arr, IGNORE_INDEX).tolist(), straddle


def check_bos(ids: Sequence[int], tokenizer, text: str) -> None:
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        raise TemplateError(
            f"BOS appears twice at the start of {text[:40]!r}: the template and the data both add it"
        )


def encode_conversations(
    conversations: Sequence[Conversation],
    template: Template,
    tokenizer,
    max_length: int | None = None,
    strategy: str = "train_on_assistant",
    special_policy: str | None = None,
    train_on_reasoning: bool = True,
) -> list[Encoded]:
    """Render, tokenize in one batched call, and label. Truncates from the right to `max_length`.

    `special_policy` (see special_content.py; default: the tokenizer's, else warn): with `split`,
    special-token strings in message content are tokenized as plain text.
    `train_on_reasoning=False` keeps the final turn's reasoning trace as context."""
    from .special_content import content_hits, encode_split, policy_of, special_strings

    if strategy.endswith(REASONING_AS_CONTEXT):
        strategy, train_on_reasoning = strategy.removesuffix(REASONING_AS_CONTEXT), False
    special = SpecialText.from_tokenizer(tokenizer)
    if not conversations:
        return []
    if policy_of(tokenizer, special_policy) == "split":
        strings = special_strings(tokenizer)
        pairs = [content_hits(template, c.messages, special, strings, tools=c.tools) for c in conversations]
        rendered = [r for r, _ in pairs]
        all_ids, all_offsets = encode_split(tokenizer, [r.text for r in rendered], [h for _, h in pairs])
    else:
        rendered = [template.render(c.messages, special=special, tools=c.tools) for c in conversations]
        # Only ids and offsets: skipping the attention mask saves a Python list per conversation.
        enc = tokenizer(
            [r.text for r in rendered],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        all_ids, all_offsets = enc["input_ids"], enc["offset_mapping"]
    out = []
    bos = tokenizer.bos_token_id  # once: the attribute goes through a vocabulary lookup every time
    for r, ids, offsets in zip(rendered, all_ids, all_offsets, strict=True):
        if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            check_bos(ids, tokenizer, r.text)
        labels, straddle = labels_from_offsets(
            ids, offsets, supervised_spans(r, strategy, train_on_reasoning)
        )
        full = len(ids)
        if max_length is not None and full > max_length:
            ids, labels, offsets = ids[:max_length], labels[:max_length], offsets[:max_length]
        out.append(Encoded(list(ids), labels, r.text, full, straddle, list(offsets), r.spans))
    return out


def encode_conversation(
    conversation: Conversation,
    template: Template,
    tokenizer,
    max_length: int | None = None,
    strategy: str = "train_on_assistant",
    special_policy: str | None = None,
    train_on_reasoning: bool = True,
) -> Encoded:
    return encode_conversations(
        [conversation],
        template,
        tokenizer,
        max_length,
        strategy,
        special_policy=special_policy,
        train_on_reasoning=train_on_reasoning,
    )[0]
