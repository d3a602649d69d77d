"""`data convert --to sharegpt|openai|alpaca`: change the record shape, losing nothing the target can hold.

ShareGPT and OpenAI hold the same things (roles, contents, per-turn fields, id and top-level
metadata), so conversion between them is lossless. Alpaca holds one round with an optional
system prompt: a longer conversation or per-turn fields are an error naming every such record,
unless `--flatten` writes one record per round (ids `orig_1`, ...; earlier rounds kept in a
`history` list of [user, reply] pairs, as LLaMA-Factory reads it, and dropping per-turn fields).
"""

from __future__ import annotations

from .records import ConversionError, write_format
from .stream import Run, where

TARGETS = ("sharegpt", "openai", "alpaca")


def run_convert(run: Run, target: str, flatten: bool = False) -> int:
    if target not in TARGETS:
        raise ValueError(f"--to must be one of {TARGETS}, got {target!r}")
    summary = run.summary
    for raw in run.raw_records():
        chat, notes = run.parse(raw)
        if chat is None:
            continue
        try:
            records = write_format(chat, target, flatten)
        except ConversionError as exc:
            run.reject(where(raw, chat.id), exc.reason, exc.detail, chat.id)
            continue
        changes = list(notes)
        if target == "alpaca" and flatten:
            if len(records) > 1:
                changes.append("flattened")
            if any(t.extra for t in chat.turns):
                changes.append("turn_fields_dropped")
        for reason in changes:
            summary.note("changed", reason, chat.id)
        summary.changed += bool(changes)
        for record in records:
            run.write(record)
    summary.extra["convert"] = {"to": target, "flatten": flatten}
    return run.finish()
