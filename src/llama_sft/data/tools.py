"""Tool calls in records: read them from the shapes agent datasets use, check them, write them back.

One in-memory shape (OpenAI's) for every source: record-level `tools` as JSON-schema functions
(`{"type": "function", "function": {name, description, parameters}}`), assistant `tool_calls`
and `tool` messages. Readers accept OpenAI records (also LLaMA-3.1's `ipython` role, read as
`tool`) and the ShareGPT variant of LLaMA-Factory and glaive-derived sets (`function_call` and
`observation` turns, `tools` as a list or a JSON string, `system` at the top). Arguments keep the
form they were given in (object or JSON string) because official templates render the two
differently; `ToolCall.parsed()` is the object either way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .formats import RecordError

# Errors of tool-calling records (merged into issues.ERROR_REASONS).
TOOL_ERROR_REASONS = {
    "bad_tools": "the record's `tools` is not a list of JSON-schema function definitions",
    "bad_tool_call": "a tool call is not {name, arguments} (or OpenAI's {type, function: {...}})",
    "bad_tool_arguments": "a tool call's arguments are not a JSON object (or a string holding one)",
    "unknown_tool": "a tool call names a tool that is not in the record's `tools`",
    "orphan_tool_result": "a tool result has no preceding tool call that it answers",
}

# Record keys that belong to a tool-calling conversation; any other top-level key is metadata.
FORMAT_KEYS = {"id", "messages", "conversations", "items", "tools", "system"}
SHAREGPT_TOOL_ROLES = {"function_call": "tool_call", "observation": "tool", "tool": "tool", "ipython": "tool"}
OPENAI_TOOL_ROLES = {"tool": "tool", "ipython": "tool", "function": "tool"}


@dataclass(frozen=True)
class ToolCall:
    """One function call. `arguments` is what the data held (a dict, or a JSON string)."""

    name: str
    arguments: Any
    id: str | None = None

    def parsed(self) -> dict:
        return json.loads(self.arguments) if isinstance(self.arguments, str) else self.arguments

    def to_openai(self) -> dict:
        call = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return {"id": self.id, **call} if self.id is not None else call


def _json(value: Any, reason: str, where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise RecordError(reason, f"{where} is not valid JSON: {exc.msg} at column {exc.colno}") from None


def parse_tools(value: Any) -> tuple[dict, ...]:
    """Record-level tools -> OpenAI's wrapped form; bare {name, parameters} objects are wrapped."""
    if value is None or value == "" or value == []:
        return ()
    value = _json(value, "bad_tools", "tools")
    if not isinstance(value, list):
        raise RecordError("bad_tools", f"tools is {type(value).__name__}, expected a list")
    out = []
    for n, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RecordError("bad_tools", f"tools[{n}] has no function name")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise RecordError(
                "bad_tools", f"tools[{n}] ({fn['name']}) parameters is not a JSON schema object"
            )
        out.append(tool if fn is not tool else {"type": "function", "function": fn})
    return tuple(out)


def tool_names(tools: Sequence[dict]) -> set[str]:
    return {t["function"]["name"] for t in tools}


def parse_call(value: Any, where: str) -> ToolCall:
    """One call from OpenAI's {id, type, function: {name, arguments}} or a bare {name, arguments}."""
    if not isinstance(value, dict):
        raise RecordError("bad_tool_call", f"{where} is {type(value).__name__}, expected an object")
    fn = value.get("function") if isinstance(value.get("function"), dict) else value
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise RecordError("bad_tool_call", f"{where} has no function name")
    # LLaMA's and some datasets' own spelling is "parameters".
    arguments = fn.get("arguments", fn.get("parameters", {}))
    parsed = _json(arguments, "bad_tool_arguments", f"{where} arguments")
    if not isinstance(parsed, dict):
        raise RecordError(
            "bad_tool_arguments", f"{where} arguments are {type(parsed).__name__}, expected an object"
        )
    call_id = value.get("id")
    return ToolCall(name, arguments, str(call_id) if call_id is not None else None)


def parse_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    """A list of calls, one call, or a JSON string of either (ShareGPT `function_call` turns)."""
    value = _json(value, "bad_tool_call", where)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise RecordError("bad_tool_call", f"{where} holds no call")
    return tuple(parse_call(item, f"{where} call {k}") for k, item in enumerate(items))


def is_tool_record(data: Any) -> bool:
    """True when the record uses anything only the tool-aware reader understands."""
    if not isinstance(data, dict):
        return False
    if data.get("tools"):
        return True
    turns = data.get("messages") if isinstance(data.get("messages"), list) else None
    if turns is None:
        turns = data.get("conversations", data.get("items"))
    if not isinstance(turns, list):
        return False
    for t in turns:
        if not isinstance(t, dict):
            continue
        role = str(t.get("role", t.get("from", ""))).lower()
        if role in SHAREGPT_TOOL_ROLES or role in OPENAI_TOOL_ROLES:
            return True
        if t.get("tool_calls") or t.get("reasoning_content") is not None or t.get("function_call"):
            return True
    return False


def check_tool_flow(messages: Sequence, tools: Sequence[dict]) -> None:
    """Calls name known tools; each tool result answers a call of the assistant turn before it.

    Raises RecordError. Without record-level tools any name is accepted (many sets omit schemas).
    """
    known = tool_names(tools)
    open_ids: set[str] | None = None  # ids of the last call turn; None when no call is open
    open_count = 0
    for n, m in enumerate(messages):
        if m.role == "assistant":
            for call in m.tool_calls:
                if known and call.name not in known:
                    raise RecordError(
                        "unknown_tool",
                        f"turn {n} calls {call.name!r}; the record's tools are {sorted(known)}",
                    )
            open_ids = {c.id for c in m.tool_calls if c.id is not None} if m.tool_calls else None
            open_count = len(m.tool_calls)
        elif m.role == "tool":
            if open_ids is None:
                raise RecordError(
                    "orphan_tool_result", f"turn {n} is a tool result with no tool call before it"
                )
            if m.tool_call_id is not None and open_ids and m.tool_call_id not in open_ids:
                raise RecordError(
                    "orphan_tool_result",
                    f"turn {n} answers tool_call_id {m.tool_call_id!r}; the calls before it are {sorted(open_ids)}",
                )
            open_count -= 1
        else:
            open_ids = None


def check_tool_turns(messages: list, strict: bool = False) -> tuple[list, list[tuple[str, str]]]:
    """The conversation rules of `validate.check_turns`, with tool steps inside an assistant reply:
    user -> assistant [call -> tool results -> assistant ...] -> user ... Returns (messages, repairs)."""
    repairs: list[tuple[str, str]] = []
    head = messages[:1] if messages and messages[0].role == "system" else []
    turns = messages[len(head) :]
    for n, m in enumerate(turns):
        if m.role == "system":
            raise RecordError(
                "misplaced_system", f"turn {n + len(head)} is a system message; only the first may be"
            )
    dropped = 0
    while turns and turns[0].role != "user":
        turns, dropped = turns[1:], dropped + 1
    if dropped:
        repairs.append(("leading_assistant_dropped", f"{dropped} leading assistant or tool turn(s)"))
    previous = None
    for n, m in enumerate(turns):
        at = n + len(head) + dropped
        allowed = {
            None: ("user",),
            "user": ("assistant",),
            "call": ("tool",),
            "tool": ("tool", "assistant"),
            "assistant": ("user",),
        }[previous]
        if m.role not in allowed:
            raise RecordError("not_alternating", f"turn {at} is {m.role}, expected {' or '.join(allowed)}")
        previous = "call" if m.role == "assistant" and m.tool_calls else m.role
    if turns and turns[-1].role == "user":
        turns = turns[:-1]
        repairs.append(("trailing_user_dropped", "last turn was a user turn"))
    if turns and turns[-1].role == "tool":
        raise RecordError("not_alternating", "the conversation ends with a tool result that nothing answers")
    if not any(m.role == "assistant" for m in turns):
        raise RecordError("no_assistant_turn", "no assistant turn left to learn from")
    if strict and repairs:
        reason, detail = repairs[0]
        raise RecordError(reason, detail + " (an error under --strict)")
    return head + turns, repairs


def _text(value: Any, where: str, allow_empty: bool) -> str:
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        value = "".join(p["text"] for p in value)
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise RecordError(
            "non_string_content", f"{where} content is {type(value).__name__}, expected a string"
        )
    if not allow_empty and not value.strip():
        raise RecordError("empty_content", f"{where} is empty")
    return value


def _tool_result(value: Any, where: str) -> tuple[str, Any]:
    """(text, payload): a JSON object or list result stays an object for the templates that render it."""
    if isinstance(value, (dict, list)) and not (
        isinstance(value, list)
        and value
        and all(isinstance(p, dict) and p.get("type") == "text" for p in value)
    ):
        return json.dumps(value, ensure_ascii=False), value
    return _text(value, where, allow_empty=True), None


def read_tool_record(data: dict, fmt: str) -> tuple[list, tuple[dict, ...]]:
    """(messages, tools) of an OpenAI or ShareGPT tool-calling record; raises RecordError."""
    from .messages import Message

    tools = parse_tools(data.get("tools"))
    out: list[Message] = []
    if fmt == "openai":
        turns = data.get("messages")
        if not isinstance(turns, list):
            raise RecordError("unknown_shape", "OpenAI record needs a 'messages' list")
        for n, t in enumerate(turns):
            if not isinstance(t, dict) or "role" not in t:
                raise RecordError("unknown_shape", f"message {n} is not a {{role, content}} object")
            role = str(t["role"]).lower()
            where = f"message {n}"
            if role in OPENAI_TOOL_ROLES:
                text, payload = _tool_result(t.get("content"), where)
                call_id = t.get("tool_call_id")
                out.append(
                    Message(
                        "tool",
                        text,
                        tool_call_id=str(call_id) if call_id is not None else None,
                        name=t.get("name"),
                        payload=payload,
                    )
                )
                continue
            role = {"developer": "system"}.get(role, role)
            if role not in ("system", "user", "assistant"):
                raise RecordError("unknown_role", f"{where} has role {t['role']!r}")
            calls = ()
            if role == "assistant" and (t.get("tool_calls") or t.get("function_call")):
                calls = parse_calls(t.get("tool_calls") or [t["function_call"]], f"{where} tool_calls")
            reasoning = t.get("reasoning_content") if role == "assistant" else None
            if reasoning is not None and not isinstance(reasoning, str):
                raise RecordError("non_string_content", f"{where} reasoning_content is not a string")
            text = _text(t.get("content"), where, allow_empty=bool(calls))
            out.append(Message(role, text, tool_calls=calls, reasoning=reasoning))
        return out, tools
    turns = data.get("conversations", data.get("items"))
    if not isinstance(turns, list):
        raise RecordError("unknown_shape", "ShareGPT record needs a 'conversations' (or 'items') list")
    from .formats import SHAREGPT_ROLES

    if isinstance(data.get("system"), str) and data["system"].strip():
        out.append(Message("system", data["system"]))
    for n, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise RecordError("unknown_shape", f"turn {n} is not a {{from, value}} object")
        name, where = str(t["from"]).lower(), f"turn {n}"
        kind = SHAREGPT_TOOL_ROLES.get(name)
        if kind == "tool_call":
            calls = parse_calls(t["value"], where)
            if out and out[-1].role == "assistant" and not out[-1].tool_calls:
                # LLaMA-Factory writes a reply's text and its call as two turns: one assistant message.
                prev = out.pop()
                out.append(Message("assistant", prev.content, tool_calls=calls, reasoning=prev.reasoning))
            else:
                out.append(Message("assistant", "", tool_calls=calls))
        elif kind == "tool":
            text, payload = _tool_result(t["value"], where)
            out.append(Message("tool", text, name=t.get("name"), payload=payload))
        else:
            role = SHAREGPT_ROLES.get(name)
            if role is None:
                raise RecordError(
                    "unknown_role",
                    f"{where} has role {t['from']!r}; known: {sorted([*SHAREGPT_ROLES, *SHAREGPT_TOOL_ROLES])}",
                )
            out.append(Message(role, _text(t["value"], where, allow_empty=False)))
    return out, tools


def message_to_openai(m) -> dict:
    """A message as an OpenAI / HF chat-template dict (what `apply_chat_template` is given)."""
    if m.role == "tool":
        d = {"role": "tool", "content": m.payload if m.payload is not None else m.content}
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        return d
    d = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [c.to_openai() for c in m.tool_calls]
    if m.reasoning is not None:
        d["reasoning_content"] = m.reasoning
    return d


def to_openai_record(messages: Sequence, tools: Sequence[dict], rid: str, meta: dict | None = None) -> dict:
    record = {"id": rid, "messages": [message_to_openai(m) for m in messages]}
    if tools:
        record["tools"] = list(tools)
    return {**record, **(meta or {})}


def to_sharegpt_record(messages: Sequence, tools: Sequence[dict], rid: str, meta: dict | None = None) -> dict:
    """LLaMA-Factory's ShareGPT tool shape: `function_call` / `observation` turns, `tools` as JSON text."""
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    turns: list[dict] = []
    system = None
    for k, m in enumerate(messages):
        if m.role == "system" and k == 0:
            system = m.content
        elif m.role == "tool":
            turns.append({"from": "observation", "value": m.content})
        elif m.role == "assistant" and m.tool_calls:
            if m.content.strip():
                turns.append({"from": "gpt", "value": m.content})
            calls = [{"name": c.name, "arguments": c.parsed()} for c in m.tool_calls]
            turns.append(
                {
                    "from": "function_call",
                    "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False),
                }
            )
        else:
            turns.append({"from": names[m.role], "value": m.content})
    record: dict = {"id": rid, "conversations": turns}
    if system is not None:
        record["system"] = system
    if tools:
        record["tools"] = json.dumps([t["function"] for t in tools], ensure_ascii=False)
    return {**record, **(meta or {})}


def read_checked(data: dict, data_format: str = "auto", strict: bool = False):
    """(messages, tools, repairs) of a tool-calling record after every tool and turn rule."""
    from .formats import detect_format

    fmt = detect_format(data) if data_format == "auto" else data_format
    if fmt not in ("openai", "sharegpt"):
        raise RecordError("unknown_shape", "tool calls need an OpenAI (`messages`) or ShareGPT record")
    messages, tools = read_tool_record(data, fmt)
    check_tool_flow(messages, tools)  # first: an orphan result is a clearer reason than bad alternation
    messages, repairs = check_tool_turns(messages, strict=strict)
    return messages, tools, repairs
