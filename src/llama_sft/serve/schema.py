"""OpenAI chat-completions request shapes (pydantic) and OpenAI-style errors.

Requests are checked in two steps: pydantic for shape and ranges (-> 400, like OpenAI), then
`conversation_messages` for what the template can render (-> 422). Every error body is
`{"error": {"message", "type", "param", "code"}}`, which the `openai` client raises as the
matching `APIStatusError` subclass.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..data.messages import Message


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool", "ipython"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # accepted; the templates have no place for it (a tool result's tool name)
    tool_calls: list[dict] | None = None  # an earlier assistant turn's calls, as OpenAI returns them
    tool_call_id: str | None = None  # a tool result: the call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's parameters a single local model can honour; others are rejected by name."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    tools: list[dict] | None = None  # JSON-schema functions, rendered by the run's template
    tool_choice: str | dict | None = None  # "auto" and "none" are honoured; forcing a tool is not

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    def unsupported(self) -> APIError | None:
        """Valid OpenAI parameters this server cannot honour (422, named)."""
        if self.n not in (None, 1):
            return APIError(
                422,
                "n > 1 is not supported: this server returns one choice",
                param="n",
                code="unsupported_parameter",
            )
        if self.tool_choice not in (None, "auto", "none"):
            return APIError(
                422,
                "tool_choice may be 'auto' or 'none': this server cannot force a call",
                param="tool_choice",
                code="unsupported_parameter",
            )
        if self.logprobs:
            return APIError(422, "logprobs are not supported", param="logprobs", code="unsupported_parameter")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                return APIError(
                    422, f"{name} is not supported (only 0)", param=name, code="unsupported_parameter"
                )
        return None


def tool_conversation(messages: list[ChatMessage], tools: list[dict] | None) -> tuple[list[Message], tuple]:
    """(messages, tools) of a request with tools or tool turns, read by the training reader
    (data/tools.py); the conversation must end with a user turn or tool results."""
    from ..data.formats import RecordError
    from ..data.tools import check_tool_flow, read_tool_record

    record = {"messages": [m.model_dump(exclude_none=True) for m in messages], "tools": tools or []}
    for m in record["messages"]:
        m.setdefault("content", None)
    try:
        out, parsed = read_tool_record(record, "openai")
        check_tool_flow(out, parsed)
    except RecordError as exc:
        raise APIError(422, f"messages: {exc.detail}", param="messages", code=exc.reason) from None
    if not out or out[-1].role not in ("user", "tool"):
        raise APIError(
            422,
            "the last message must be a user message or tool results",
            param="messages",
            code="unsupported_conversation",
        )
    return out, parsed


def conversation_messages(messages: list[ChatMessage]) -> list[Message]:
    """Messages in the shape the training templates render: an optional system message first, then
    user/assistant turns alternating from a user turn, ending with a user turn."""
    out: list[Message] = []
    for n, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        if role == "system" and n != 0:
            raise APIError(
                422,
                f"messages[{n}]: a system message may only come first",
                param=f"messages[{n}].role",
                code="unsupported_conversation",
            )
        if role == "system" and not m.text().strip():
            continue  # an empty system message is "no system prompt", as in training data
        out.append(Message(role, m.text()))
    turns = out[1:] if out and out[0].role == "system" else out
    for n, m in enumerate(turns):
        expected = "user" if n % 2 == 0 else "assistant"
        if m.role != expected:
            at = n + len(out) - len(turns)
            raise APIError(
                422,
                f"messages[{at}] is {m.role}, expected {expected}: turns must alternate user/assistant, "
                "starting with user",
                param=f"messages[{at}].role",
                code="unsupported_conversation",
            )
    if not turns or turns[-1].role != "user":
        raise APIError(
            422, "the last message must be a user message", param="messages", code="unsupported_conversation"
        )
    return out


def validation_error(errors: list[dict]) -> APIError:
    """FastAPI's RequestValidationError -> an OpenAI-style 400 naming the first bad parameter."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        return APIError(
            400,
            "We could not parse the JSON body of your request: it is not valid JSON.",
            code="invalid_json",
        )
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ""
    for part in loc:
        param += f"[{part}]" if part.isdigit() else (f".{part}" if param else part)
    if first.get("type") == "extra_forbidden":
        return APIError(
            400,
            f"Unrecognized request argument supplied: {param}",
            param=param or None,
            code="unknown_parameter",
        )
    if first.get("type") == "missing":
        return APIError(
            400,
            f"Missing required parameter: '{param}'.",
            param=param or None,
            code="missing_required_parameter",
        )
    return APIError(
        400,
        f"Invalid value for '{param}': {first.get('msg')}" if param else str(first.get("msg")),
        param=param or None,
        code="invalid_value",
    )
