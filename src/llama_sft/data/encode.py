"""Conversation -> (input_ids, labels), with labels derived from the template's character spans.

The input ids are exactly `tokenizer(rendered_text, add_special_tokens=False)`: the text a server
builds with the same template (BOS included as text, as HF chat templates do). A token is
supervised when it *starts* inside a supervised character span, so the space the template puts
after "ASSISTANT:" is trained even when LLaMA's vocabulary makes it a token of its own, and EOS
is trained even when pad == eos.

Speed: the tokenizer call is the floor every pipeline pays; everything here is measured against it
(benchmarks/preprocess.py). Turning every token's offsets into Python tuples cost as much as all the
labelling, so a fast tokenizer's offsets stay in Rust: labels need only where each span's first and
last tokens are, a few lookups in the tokenizer's `Encoding` (see `labels_from_encoding`).
"""

from __future__ import annotations

import json
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
    # Where the kept tokens' character offsets come from: a list of (start, end), or the tokenizer's
    # Encoding, read only when `offsets` is asked for (most rows never are; see the module docstring).
    offsets_source: object = field(default=None, repr=False, compare=False)
    # The template's reply spans, so callers that map tokens back to text (inspect, per-turn eval
    # loss) need not tokenize or render again.
    spans: tuple = ()
    # Supervised tokens, when counted as the labels were made (counting -100s costs a compare a token).
    supervised_count: int | None = field(default=None, repr=False, compare=False)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """Character (start, end) of each kept token."""
        src = self.offsets_source
        if src is None:
            return []
        if not isinstance(src, list):
            src = self.offsets_source = src.offsets[: len(self.input_ids)]
        return src

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def n_supervised(self) -> int:
        if self.supervised_count is not None:
            return self.supervised_count
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


def labels_from_encoding(ids: list[int], encoding, spans, text_length: int) -> tuple[list[int], int]:
    """`labels_from_offsets(ids, encoding.offsets, spans)` without building the offsets list.

    Valid when token starts and ends never decrease, which a tokenizer made of the library's own
    parts guarantees (`offsets_in_order`). Each span boundary is one Rust lookup (`char_to_token`) and
    a short walk of `token_to_chars` calls, instead of a Python tuple for every token."""
    runs, straddle = label_runs(len(ids), encoding, spans, text_length)
    return _fill_labels(ids, runs, len(ids)), straddle


def _fill_labels(ids: list[int], runs, keep: int) -> list[int]:
    """The first `keep` labels: ids inside the runs of supervised tokens, IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * keep
    for first, stop in runs:
        stop = min(stop, keep)
        if first < stop:  # (a slice assignment past the end would append)
            labels[first:stop] = ids[first:stop]
    return labels


def _covered(runs, keep: int) -> int:
    """How many of the first `keep` tokens the runs cover (runs may overlap when spans do)."""
    total = reach = 0
    for first, stop in sorted(runs):
        stop, first = min(stop, keep), max(first, reach)
        if stop > first:
            total, reach = total + stop - first, stop
    return total


def label_runs(n: int, encoding, spans, text_length: int) -> tuple[list[tuple[int, int]], int]:
    """[first, stop) token runs that start inside each span, and the straddler count (see above)."""
    runs: list[tuple[int, int]] = []
    if n == 0:
        return runs, 0
    chars, locate = encoding.token_to_chars, encoding.char_to_token
    straddle = 0
    for s, e in spans:
        first, before = _starts_before(s, n, chars, locate, text_length)
        if e > s:
            stop = _starts_before(e, n, chars, locate, text_length)[0]
            if stop > first:
                runs.append((first, stop))
        j = first  # straddlers: the run just before `first` whose ends pass s (ends never decrease)
        while j and before[1] > s:
            j -= 1
            before = chars(j - 1) if j else None
        straddle += first - j
    return runs, straddle


def _starts_before(x: int, n: int, chars, locate, text_length: int) -> tuple[int, tuple | None]:
    """How many tokens start before character x (starts never decrease), and the last one's offsets.

    The walk makes it exact from any starting guess; `char_to_token` (the first token covering x)
    only makes the guess close. Positions no token covers (the end of the text, stripped characters)
    start the walk from a bisection instead. Usually two `token_to_chars` calls: the guess, and the
    token before it (which the caller reuses to count straddlers)."""
    if x >= text_length:
        i = n
    else:
        i = locate(x)
        if i is None:
            lo, i = 0, n
            while lo < i:
                mid = (lo + i) // 2
                if chars(mid)[0] < x:
                    lo = mid + 1
                else:
                    i = mid
    before = None
    while i < n:
        here = chars(i)
        if here[0] >= x:
            break
        before, i = here, i + 1
    if before is None:  # no step forward: step back over tokens that start at or after x
        while i:
            before = chars(i - 1)
            if before[0] < x:
                break
            i -= 1
        else:
            before = None
    return i, before


def offsets_in_order(tokenizer) -> bool:
    """True when the tokenizer's offsets are known to never decrease, so `labels_from_encoding` applies.

    The library's own parts keep text order: added tokens are split off in order, normalizers map
    each output character back to its source in order, pre-tokenizers cut in order, and models emit
    a word's tokens in order (byte-fallback pieces of one character share its offsets). Two
    exceptions take the general path: Python-defined components (they can do anything; they are the
    ones that cannot be serialized) and offset trimming (`trim_offsets` of the ByteLevel or RoBERTa
    post-processor, which runs even without special tokens): trimming a prefix space that belongs to
    the next character moves a token's start past that character's own tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        for part in (backend.normalizer, backend.pre_tokenizer):
            if part is not None:
                part.__getstate__()
        post = backend.post_processor
        return post is None or not _trims_offsets(json.loads(post.__getstate__()))
    except Exception:  # "Custom PreTokenizer cannot be serialized"
        return False


def _trims_offsets(config) -> bool:
    if isinstance(config, dict):
        return config.get("trim_offsets") is True or any(map(_trims_offsets, config.values()))
    return isinstance(config, list) and any(map(_trims_offsets, config))


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
    from_encodings = False  # offsets left in the tokenizer's Encodings (see the module docstring)
    if policy_of(tokenizer, special_policy) == "split":
        strings = special_strings(tokenizer)
        pairs = [content_hits(template, c.messages, special, strings, tools=c.tools) for c in conversations]
        rendered = [r for r, _ in pairs]
        all_ids, all_offsets = encode_split(tokenizer, [r.text for r in rendered], [h for _, h in pairs])
    else:
        rendered = [template.render(c.messages, special=special, tools=c.tools) for c in conversations]
        texts = [r.text for r in rendered]
        if offsets_in_order(tokenizer):
            # The floor's own call: ids only (no attention mask, no offsets lists).
            enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
            all_ids, all_offsets = enc["input_ids"], enc.encodings
            from_encodings = all_offsets is not None
        if not from_encodings:
            enc = tokenizer(
                texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False
            )
            all_ids, all_offsets = enc["input_ids"], enc["offset_mapping"]
    out = []
    bos = tokenizer.bos_token_id  # once: the attribute goes through a vocabulary lookup every time
    for r, ids, offsets in zip(rendered, all_ids, all_offsets, strict=True):
        if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
            check_bos(ids, tokenizer, r.text)
        spans = supervised_spans(r, strategy, train_on_reasoning)
        full = len(ids)
        keep = full if max_length is None else min(full, max_length)
        supervised = None
        if from_encodings:  # `Encoded.offsets` cuts the Encoding's to the kept tokens when asked
            runs, straddle = label_runs(full, offsets, spans, len(r.text))
            labels, supervised = _fill_labels(ids, runs, keep), _covered(runs, keep)
        else:
            labels, straddle = labels_from_offsets(ids, offsets, spans)
            labels, offsets = labels[:keep], list(offsets[:keep])
        ids = ids[:keep] if keep < full else ids if type(ids) is list else list(ids)
        out.append(Encoded(ids, labels, r.text, full, straddle, offsets, r.spans, supervised))
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
