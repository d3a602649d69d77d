"""`data convert --to sharegpt|openai|alpaca`: change the record shape, losing nothing the target can hold.

ShareGPT and OpenAI hold the same things (roles, contents, per-turn fields, id and top-level
metadata), so conversion between them is lossless. Alpaca holds one round with an optional
system prompt: a longer conversation or per-turn fields are an error naming every such record,
unless `--flatten` writes one record per round (ids `orig_1`, ...; earlier rounds kept in a
`history` list of [user, reply] pairs, as LLaMA-Factory reads it, and dropping per-turn fields).
"""

from __future__ import annotations

from llama_sft.data.formats import RecordError, detect_format, record_id
from llama_sft.data.tools import (
    FORMAT_KEYS,
    is_tool_record,
    read_tool_record,
    to_openai_record,
    to_sharegpt_record,
)

from .records import ConversionError, write_format
from .stream import Run, where

TARGETS = ("sharegpt", "openai", "alpaca")


def run_convert(run: Run, target: str, flatten: bool = False) -> int:
    if target not in TARGETS:
        raise ValueError(f"--to must be one of {TARGETS}, got {target!r}")
    summary = run.summary
    for raw in run.raw_records():
        if raw.error is None and is_tool_record(raw.data):
            convert_tool_record(run, raw, target)
            continue
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


def convert_tool_record(run: Run, raw, target: str) -> None:
    """Tool-calling records: OpenAI (`tool_calls`, `tool` turns) <-> ShareGPT (`function_call`,
    `observation` turns, `tools` as JSON text), top-level metadata kept; Alpaca cannot hold them."""
    rid = record_id(raw.data, raw.index)
    fmt = detect_format(raw.data) if run.data_format == "auto" else run.data_format
    try:
        if target == "alpaca":
            raise RecordError("tool_calls", "tool calls and results have no place in Alpaca")
        messages, tools = read_tool_record(raw.data, fmt)
    except RecordError as exc:
        run.reject(where(raw, rid), exc.reason, exc.detail, rid)
        return
    meta = {k: v for k, v in raw.data.items() if k not in FORMAT_KEYS}
    write = to_openai_record if target == "openai" else to_sharegpt_record
    if fmt != target:
        run.summary.note("changed", "tool_format_converted", rid)
        run.summary.changed += 1
    run.write(write(messages, tools, rid, meta))
