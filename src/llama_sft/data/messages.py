"""The one in-memory shape every input format is normalized to."""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

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
        return {"id": self.id, "messages": [{"role": m.role, "content": m.content} for m in self.messages]}
