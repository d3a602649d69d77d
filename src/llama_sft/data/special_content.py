"""Special-token strings inside message content (`</s>` from HTML strikethrough, `<|eot_id|>`,
`<|im_end|>`, any special or added token of the tokenizer), and what to do about them.

A tokenizer matches its added tokens anywhere in the text, so a `</s>` typed by a user becomes the
EOS id inside a supervised reply and the model learns to stop mid-answer. Detection is against the
real tokenizer's special and added tokens, not only the built-in templates' literals. Policies:

- `warn` (default): count and report the records; encode as the tokenizer does (control tokens).
- `error`: such records are errors (skipped and counted with --skip_bad); `--strict` implies it.
- `split`: encode content so those strings stay plain text, while the template's own control
  tokens stay control tokens. The text is cut at the template's special tokens only, and each piece
  between them is tokenized with special-token matching off: for text without such strings in
  content this is exactly the tokenizer's own result (added tokens are split off first, and each
  piece in between is normalized and tokenized on its own), so ids differ only where the policy
  says they should. Chat, serve and eval use the same policy, read from the run record, so a
  server builds the ids training saw.

The policy travels with the tokenizer it governs (`tokenizer.special_tokens_in_content`, set when a
run is loaded), so every prompt builder finds it without another argument.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path

POLICIES = ("warn", "error", "split")
ATTRIBUTE = "special_tokens_in_content"
RUN_RECORD = "run_record.json"  # the key below is written there by training


def policy_of(tokenizer, policy: str | None = None) -> str:
    """An explicit policy, else the one attached to the tokenizer, else `warn`."""
    policy = policy or getattr(tokenizer, ATTRIBUTE, None) or "warn"
    if policy not in POLICIES:
        raise ValueError(f"special_tokens_in_content {policy!r}: choose one of {', '.join(POLICIES)}")
    return policy


def read_policy(run_dir: str | Path) -> str:
    """The policy a run was trained with (`warn` for runs that predate it, or plain model dirs)."""
    path = Path(run_dir) / RUN_RECORD
    if not path.exists():
        return "warn"
    return json.loads(path.read_text(encoding="utf-8")).get(ATTRIBUTE) or "warn"


def attach_policy(tokenizer, run_dir: str | Path):
    setattr(tokenizer, ATTRIBUTE, read_policy(run_dir))
    return tokenizer


def special_strings(tokenizer) -> tuple[str, ...]:
    """Every string the tokenizer turns into one control id wherever it appears, longest first."""
    found = {str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found |= {t.content for t in decoder.values()}
    return tuple(sorted((s for s in found if s), key=lambda s: (-len(s), s)))


@functools.lru_cache(maxsize=16)
def _pattern(strings: tuple[str, ...]) -> re.Pattern | None:
    # Alternatives longest first: at each position the longest token wins, as in the tokenizer.
    return re.compile("|".join(map(re.escape, strings))) if strings else None


def find_special(text: str, strings: tuple[str, ...]) -> list[str]:
    pattern = _pattern(strings)
    return [] if pattern is None else sorted(set(pattern.findall(text)))


def content_hits(
    template, messages, special, strings: tuple[str, ...], add_generation_prompt=False, tools: tuple = ()
):
    """(start, end) of special-token strings that come from message content in the rendered text.

    The conversation is rendered twice, once with every such string in content replaced by a
    same-length run of a private-use character: the runs' places are the content occurrences.
    Returns (rendered, hits); hits is empty when content holds none.
    """
    rendered = template.render(
        messages, add_generation_prompt=add_generation_prompt, special=special, tools=tuple(tools)
    )
    pattern = _pattern(strings)
    if pattern is None or not any(pattern.search(m.content) for m in messages):
        return rendered, []
    marker = "\ue000"
    masked_messages = [
        dataclasses.replace(m, content=pattern.sub(lambda x: marker * len(x.group()), m.content))
        for m in messages
    ]
    masked = template.render(
        masked_messages, add_generation_prompt=add_generation_prompt, special=special, tools=tuple(tools)
    ).text
    if len(masked) != len(rendered.text):
        raise ValueError(
            f"template {template.name!r} changes message content while rendering, so special-token strings "
            "in content cannot be located; use --special_tokens_in_content warn or error"
        )
    hits, k = [], 0
    while k < len(masked):
        if masked[k] == marker and rendered.text[k] != marker:
            j = k
            while j < len(masked) and masked[j] == marker and rendered.text[j] != marker:
                j += 1
            hits.append((k, j))
            k = j
        else:
            k += 1
    return rendered, hits


def encode_split(tokenizer, texts: Sequence[str], hits: Sequence[list[tuple[int, int]]]):
    """Tokenize like `tokenizer(texts, add_special_tokens=False)`, except that special-token strings
    at `hits` stay plain text. Returns (ids, offsets) per text. Texts without hits take one batched
    call; the others are cut at the remaining special tokens and their pieces tokenized in one more."""
    strings = special_strings(tokenizer)
    pattern = _pattern(strings)
    plain = [i for i, h in enumerate(hits) if not h]
    out_ids: list = [None] * len(texts)
    out_offsets: list = [None] * len(texts)
    if plain:
        enc = tokenizer([texts[i] for i in plain], add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False)  # fmt: skip
        for n, i in enumerate(plain):
            out_ids[i], out_offsets[i] = enc["input_ids"][n], enc["offset_mapping"][n]
    pieces: list[tuple[int, str, int | None, int]] = []  # (text index, piece, control id or None, start)
    for i, h in enumerate(hits):
        if not h:
            continue
        text, start = texts[i], 0
        inside = set()
        for s, e in h:
            inside.update(range(s, e))
        for m in pattern.finditer(text) if pattern is not None else ():
            if m.start() in inside:
                continue  # content: stays inside its plain-text piece
            if m.start() > start:
                pieces.append((i, text[start : m.start()], None, start))
            pieces.append((i, m.group(), tokenizer.convert_tokens_to_ids(m.group()), m.start()))
            start = m.end()
        if start < len(text):
            pieces.append((i, text[start:], None, start))
    if pieces:
        plain_pieces = [p for p in pieces if p[2] is None]
        enc = tokenizer([p[1] for p in plain_pieces], add_special_tokens=False, split_special_tokens=True,
                        return_offsets_mapping=True, return_attention_mask=False)  # fmt: skip
        encoded = {id(p): (enc["input_ids"][n], enc["offset_mapping"][n]) for n, p in enumerate(plain_pieces)}
        for i in {p[0] for p in pieces}:
            out_ids[i], out_offsets[i] = [], []
        for p in pieces:
            i, piece, control, start = p
            if control is not None:
                out_ids[i].append(control)
                out_offsets[i].append((start, start + len(piece)))
            else:
                ids, offsets = encoded[id(p)]
                out_ids[i] += ids
                out_offsets[i] += [(a + start, b + start) for a, b in offsets]
    return out_ids, out_offsets
