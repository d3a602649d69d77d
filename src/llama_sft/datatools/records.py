"""A record as the data tools see it: roles normalized, everything else kept for writing back.

`data.formats.record_to_messages` is the reader for training and rejects empty turns; the tools
need to see such records to repair them, and must write back ids, per-turn fields (OpenAI
`name`, a `weight`) and top-level metadata unchanged, so they parse into a `Chat` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from llama_sft.data.formats import (
    OPENAI_ROLES,
    SHAREGPT_ROLES,
    RawRecord,
    RecordError,
    detect_format,
    record_id,
)

SHAREGPT_NAMES = {"system": "system", "user": "human", "assistant": "gpt"}
# Keys that belong to each format's conversation; every other top-level key is metadata.
FORMAT_KEYS = {
    "sharegpt": {"id", "conversations", "items"},
    "openai": {"id", "messages"},
    "alpaca": {"id", "instruction", "input", "output", "system"},
}


@dataclass
class Turn:
    role: str  # system | user | assistant
    content: str
    extra: dict | None = None  # per-turn keys besides from/value or role/content


@dataclass
class Chat:
    """One conversation plus what is needed to write it back and to point at it in a report."""

    id: str
    turns: list[Turn]
    meta: dict = field(default_factory=dict)
    source_format: str = "sharegpt"
    # (instruction, input) of an Alpaca record, so Alpaca -> Alpaca keeps the two fields apart.
    alpaca_fields: tuple[str, str] | None = None
    file: str = ""
    index: int = -1

    @property
    def system(self) -> Turn | None:
        return self.turns[0] if self.turns and self.turns[0].role == "system" else None

    @property
    def dialogue(self) -> list[Turn]:
        """Turns without the leading system message."""
        return self.turns[1:] if self.system is not None else list(self.turns)

    def pairs(self) -> list[tuple[str, str]]:
        return [(t.role, t.content) for t in self.turns]

    def derive(self, turns: list[Turn], id: str | None = None, **meta) -> Chat:
        """A copy with other turns (and id), e.g. one piece of a split conversation."""
        return replace(self, turns=turns, id=self.id if id is None else id, meta={**self.meta, **meta})


def _role(raw: Any, table: dict[str, str], rename: dict[str, str], n: int) -> tuple[str, bool]:
    name = str(raw).lower()
    renamed = name in rename
    if renamed:
        name = rename[name]
    role = table.get(name) or SHAREGPT_ROLES.get(name) or OPENAI_ROLES.get(name)
    if role is None:
        raise RecordError(
            "unknown_role",
            f"turn {n} has role {raw!r}; map it with --rename-role {name}=user|assistant|system",
        )
    return role, renamed


def _text(value: Any, where: str, notes: list[str] | None = None) -> str:
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        if notes is not None and "content_parts_joined" not in notes:
            notes.append("content_parts_joined")
        return "".join(p["text"] for p in value)  # OpenAI text-only content parts
    if not isinstance(value, str):
        raise RecordError(
            "non_string_content", f"{where} content is {type(value).__name__}, expected a string"
        )
    return value


def parse_record(
    raw: RawRecord, data_format: str = "auto", rename: dict[str, str] | None = None
) -> tuple[Chat, list[str]]:
    """RawRecord -> (Chat, changes made while reading). Raises RecordError; empty turns are allowed.

    The changes are `role_renamed` (by `rename`) and `content_parts_joined` (OpenAI content parts
    became one string), so a tool can count them like its own.
    """
    if raw.error is not None:
        raise raw.error
    data, rename = raw.data, rename or {}
    fmt = detect_format(data) if data_format == "auto" else data_format
    if fmt is None or not isinstance(data, dict):
        keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise RecordError(
            "unknown_shape",
            f"expected 'conversations', 'items', 'messages' or 'instruction'+'output'; got {keys}",
        )
    meta = {k: v for k, v in data.items() if k not in FORMAT_KEYS[fmt]}
    turns, notes, alpaca_fields = [], [], None
    if fmt in ("sharegpt", "openai"):
        items = data.get("messages") if fmt == "openai" else data.get("conversations", data.get("items"))
        role_key, text_key = ("role", "content") if fmt == "openai" else ("from", "value")
        table = OPENAI_ROLES if fmt == "openai" else SHAREGPT_ROLES
        if not isinstance(items, list):
            raise RecordError("unknown_shape", f"{fmt} record needs a list of turns")
        for n, item in enumerate(items):
            if not isinstance(item, dict) or role_key not in item or text_key not in item:
                raise RecordError("unknown_shape", f"turn {n} is not a {{{role_key}, {text_key}}} object")
            role, renamed = _role(item[role_key], table, rename, n)
            if renamed and "role_renamed" not in notes:
                notes.append("role_renamed")
            extra = {k: v for k, v in item.items() if k not in (role_key, text_key)} or None
            turns.append(Turn(role, _text(item[text_key], f"turn {n}", notes), extra))
    else:
        if "instruction" not in data or "output" not in data:
            raise RecordError("unknown_shape", "Alpaca record needs 'instruction' and 'output'")
        instruction = _text(data["instruction"], "instruction")
        extra_input = _text(data.get("input") or "", "input")
        prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
        if isinstance(data.get("system"), str) and data["system"].strip():
            turns.append(Turn("system", data["system"]))
        elif "system" in data:
            meta["system"] = data["system"]  # empty or not a string: kept as it was, not a turn
        turns += [Turn("user", prompt), Turn("assistant", _text(data["output"], "output"))]
        alpaca_fields = (instruction, extra_input)
    chat = Chat(record_id(data, raw.index), turns, meta, fmt, alpaca_fields, raw.file, raw.index)
    return chat, notes


class ConversionError(Exception):
    """The target format cannot hold this record (`reason` is a key of summary.REASONS)."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


def to_sharegpt(chat: Chat) -> dict:
    turns = [{"from": SHAREGPT_NAMES[t.role], "value": t.content, **(t.extra or {})} for t in chat.turns]
    return {"id": chat.id, "conversations": turns, **chat.meta}


def to_openai(chat: Chat) -> dict:
    turns = [{"role": t.role, "content": t.content, **(t.extra or {})} for t in chat.turns]
    return {"id": chat.id, "messages": turns, **chat.meta}


def rounds(chat: Chat) -> list[tuple[Turn, Turn]]:
    """(user, assistant) pairs; raises ConversionError unless the dialogue strictly alternates."""
    turns = chat.dialogue
    if len(turns) % 2 or any(t.role != ("user" if n % 2 == 0 else "assistant") for n, t in enumerate(turns)):
        roles = " ".join(t.role for t in turns)
        raise ConversionError(
            "not_user_assistant_pairs", f"turns are [{roles}]; run `llama-sft data clean` first"
        )
    return list(zip(turns[0::2], turns[1::2], strict=True))


def to_alpaca(chat: Chat, flatten: bool = False) -> list[dict]:
    """One Alpaca record, or with `flatten` one per round (earlier rounds kept in `history`)."""
    pairs = rounds(chat)
    if not pairs:
        raise ConversionError("not_user_assistant_pairs", "no user/assistant round to write")
    if any(t.extra for t in chat.turns) and not flatten:
        keys = sorted({k for t in chat.turns for k in (t.extra or {})})
        raise ConversionError(
            "turn_fields", f"per-turn fields {keys} have no place in Alpaca; pass --flatten to drop them"
        )
    if len(pairs) > 1 and not flatten:
        raise ConversionError(
            "multi_turn", f"{len(pairs)} rounds, Alpaca holds one; pass --flatten for one record per round"
        )
    system = {"system": chat.system.content} if chat.system is not None else {}
    out = []
    for n, (user, assistant) in enumerate(pairs):
        instruction, extra_input = user.content, ""
        if chat.alpaca_fields is not None and len(pairs) == 1:
            joined = (
                f"{chat.alpaca_fields[0]}\n\n{chat.alpaca_fields[1]}"
                if chat.alpaca_fields[1].strip()
                else chat.alpaca_fields[0]
            )
            if joined == user.content:
                instruction, extra_input = chat.alpaca_fields
        record = {
            "id": chat.id if len(pairs) == 1 else f"{chat.id}_{n + 1}",
            "instruction": instruction,
            "input": extra_input,
            "output": assistant.content,
            **system,
        }
        if flatten and len(pairs) > 1:
            record["history"] = [[u.content, a.content] for u, a in pairs[:n]]
        out.append({**record, **chat.meta})
    return out


def write_format(chat: Chat, target: str, flatten: bool = False) -> list[dict]:
    if target == "sharegpt":
        return [to_sharegpt(chat)]
    if target == "openai":
        return [to_openai(chat)]
    if target == "alpaca":
        return to_alpaca(chat, flatten)
    raise ValueError(f"unknown target format {target!r}; choose sharegpt, openai or alpaca")
