"""The one in-memory shape every input format is normalized to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    # Tool use and reasoning (data/tools.py, data/reasoning.py); plain chat leaves them unset.
    tool_calls: tuple = ()  # ToolCall objects of an assistant turn (its content may then be empty)
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None  # a tool result: the tool's name
    reasoning: str | None = None  # an assistant turn's `reasoning_content`
    payload: Any = None  # a tool result given as a JSON object/list, as templates render it

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")


@dataclass
class Conversation:
    """A system message (optional) followed by user/assistant turns.

    `id` is the record's id from the file when it has one, else its index; `source` names the
    file and record so every later error can point back at the input.
    """

    messages: list[Message]
    id: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)
    tools: tuple = ()  # the record's JSON-schema functions (OpenAI's {"type": "function", ...} form)

    @property
    def system(self) -> str | None:
        if self.messages and self.messages[0].role == "system":
            return self.messages[0].content
        return None

    @property
    def turns(self) -> list[Message]:
        """Messages without the leading system message."""
        return self.messages[1:] if self.system is not None else list(self.messages)

    def to_dict(self) -> dict:
        if self.tools or any(
            m.role == "tool" or m.tool_calls or m.reasoning is not None for m in self.messages
        ):
            from .tools import to_openai_record

            return to_openai_record(self.messages, self.tools, self.id)
        return {"id": self.id, "messages": [{"role": m.role, "content": m.content} for m in self.messages]}
