"""Read JSON, JSONL, parquet and local HF dataset dirs, and turn each record into messages.

Three record shapes are understood and detected per record (or forced with `data_format`):
ShareGPT (`conversations` or openchat's `items`: [{from, value}]), OpenAI (`messages`:
[{role, content}]) and Alpaca (instruction / input / output). Reading never raises on a bad
record: it yields the problem so the caller can count and report it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("auto", "sharegpt", "openai", "alpaca")

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class RecordError(Exception):
    """A record cannot be used as it is; `reason` is a key of issues.ERROR_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class RawRecord:
    """One record as read, or the reason it could not be read (`error` set, `data` None)."""

    file: str
    index: int
    line: int | None
    data: Any = None
    error: RecordError | None = None


def _has_bad_utf8(value: Any) -> bool:
    # Bytes that are not UTF-8 survive decoding with surrogateescape as lone surrogates.
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_bad_utf8(k) or _has_bad_utf8(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_utf8(v) for v in value)
    return False


def _checked(record: RawRecord) -> RawRecord:
    if record.error is None and _has_bad_utf8(record.data):
        record.data, record.error = (
            None,
            RecordError("invalid_utf8", "a string holds bytes that are not UTF-8"),
        )
    return record


def iter_jsonl(path: Path) -> Iterator[RawRecord]:
    index = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")  # strict: one C-level check instead of a scan per character
            except UnicodeDecodeError as exc:
                yield RawRecord(
                    str(path),
                    index,
                    line_no,
                    error=RecordError("invalid_utf8", f"byte {exc.start} of the line is not UTF-8"),
                )
                index += 1
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRecord(
                    str(path),
                    index,
                    line_no,
                    error=RecordError("malformed_json", f"{exc.msg} at column {exc.colno}"),
                )
            else:
                yield RawRecord(str(path), index, line_no, data)
            index += 1


def iter_json(path: Path) -> Iterator[RawRecord]:
    raw = path.read_bytes()
    try:
        text, clean = raw.decode("utf-8"), True
    except UnicodeDecodeError:  # find the records that hold the bad bytes, keep the others
        text, clean = raw.decode("utf-8", errors="surrogateescape"), False
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        yield RawRecord(
            str(path),
            -1,
            exc.lineno,
            error=RecordError("malformed_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}"),
        )
        return
    if isinstance(data, dict):
        # A single record, or a wrapper such as {"data": [...]}.
        lists = [
            v for v in data.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        ]
        if detect_format(data) is None and len(lists) == 1:
            data = lists[0]
        else:
            data = [data]
    if not isinstance(data, list):
        yield RawRecord(
            str(path),
            -1,
            None,
            error=RecordError("unknown_shape", "top level is neither a list nor an object"),
        )
        return
    for index, item in enumerate(data):
        record = RawRecord(str(path), index, None, item)
        yield record if clean else _checked(record)


def iter_table(path: Path) -> Iterator[RawRecord]:
    """Parquet files and directories saved with `datasets.Dataset.save_to_disk`."""
    import datasets

    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
    else:
        dataset = datasets.Dataset.from_parquet(str(path))
    for index, row in enumerate(dataset):
        yield RawRecord(str(path), index, None, row)


def iter_records(path: str | Path) -> Iterator[RawRecord]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir() or path.suffix == ".parquet":
        return iter_table(path)
    if path.suffix in (".jsonl", ".ndjson"):
        return iter_jsonl(path)
    if path.suffix == ".json":
        # Many ".json" files are really JSON Lines; peek at the first non-blank byte.
        with open(path, "rb") as handle:
            head = handle.read(4096).lstrip()
        if head.startswith(b"{") and b"\n{" in head.rstrip():
            return iter_jsonl(path)
        return iter_json(path)
    raise ValueError(
        f"{path}: unsupported file type {path.suffix!r}; use .json, .jsonl, .parquet or a dataset dir"
    )


def detect_format(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("conversations"), list) or isinstance(data.get("items"), list):
        return "sharegpt"
    if isinstance(data.get("messages"), list):
        return "openai"
    if "instruction" in data and "output" in data:
        return "alpaca"
    return None


def _content(value: Any, where: str) -> str:
    if isinstance(value, list):
        # OpenAI content parts: accept text-only parts, joined.
        if all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
        ):
            value = "".join(p["text"] for p in value)
    if not isinstance(value, str):
        raise RecordError(
            "non_string_content", f"{where} content is {type(value).__name__}, expected a string"
        )
    if not value.strip():
        raise RecordError("empty_content", f"{where} is empty")
    return value


def _blank_system(role: str | None, value: Any) -> bool:
    """An empty system message (OpenAI exports write `{"role": "system", "content": ""}`) means "no
    system prompt": it is dropped, so every template treats it as if it were absent."""
    if role != "system":
        return False
    if isinstance(value, list) and all(
        isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in value
    ):
        value = "".join(p.get("text", "") for p in value)
    return value is None or (isinstance(value, str) and not value.strip())


def record_to_messages(data: Any, data_format: str = "auto") -> list[tuple[str, str]]:
    """(role, content) pairs with roles normalized to system/user/assistant; raises RecordError."""
    fmt = detect_format(data) if data_format == "auto" else data_format
    if fmt is None or not isinstance(data, dict):
        keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise RecordError(
            "unknown_shape",
            f"expected 'conversations', 'items', 'messages' or 'instruction'+'output'; got {keys}",
        )
    if fmt == "sharegpt":
        turns = data.get("conversations", data.get("items"))
        if not isinstance(turns, list):
            raise RecordError("unknown_shape", "ShareGPT record needs a 'conversations' (or 'items') list")
        out = []
        for n, turn in enumerate(turns):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise RecordError("unknown_shape", f"turn {n} is not a {{from, value}} object")
            role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
            if role is None:
                raise RecordError(
                    "unknown_role", f"turn {n} has role {turn['from']!r}; known: {sorted(SHAREGPT_ROLES)}"
                )
            if _blank_system(role, turn["value"]):
                continue
            out.append((role, _content(turn["value"], f"turn {n}")))
        return out
    if fmt == "openai":
        turns = data.get("messages")
        if not isinstance(turns, list):
            raise RecordError("unknown_shape", "OpenAI record needs a 'messages' list")
        out = []
        for n, turn in enumerate(turns):
            if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
                raise RecordError("unknown_shape", f"message {n} is not a {{role, content}} object")
            role = OPENAI_ROLES.get(str(turn["role"]).lower())
            if role is None:
                raise RecordError(
                    "unknown_role", f"message {n} has role {turn['role']!r}; known: {sorted(OPENAI_ROLES)}"
                )
            if _blank_system(role, turn["content"]):
                continue
            out.append((role, _content(turn["content"], f"message {n}")))
        return out
    if fmt == "alpaca":
        if "instruction" not in data or "output" not in data:
            raise RecordError("unknown_shape", "Alpaca record needs 'instruction' and 'output'")
        instruction = _content(data["instruction"], "instruction")
        extra = data.get("input") or ""
        if not isinstance(extra, str):
            raise RecordError("non_string_content", "input is not a string")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        out = []
        if isinstance(data.get("system"), str) and data["system"].strip():
            out.append(("system", data["system"]))
        return out + [("user", prompt), ("assistant", _content(data["output"], "output"))]
    raise ValueError(f"unknown data_format {data_format!r}; choose from {FORMATS}")


def record_id(data: Any, index: int) -> str:
    if isinstance(data, dict) and isinstance(data.get("id"), (str, int)):
        return str(data["id"])
    return str(index)
