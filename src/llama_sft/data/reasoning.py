"""Reasoning traces: `<think>...</think>` at the start of a reply, or a `reasoning_content` field.

Reasoning models are served with the traces of earlier turns dropped (DeepSeek-R1's template cuts
everything up to `</think>`) and generate a trace only in the turn being answered, so training
renders a trace in the final assistant turn only. Whether the final trace is *trained on* is a
masking choice (`train_on_reasoning`); `trace_span` finds it in the rendered text for that.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def drop_trace(content: str) -> str:
    """The reply without an inline trace (the Jinja twin in `tool_templates` must stay equal)."""
    return content.split(CLOSE)[-1].lstrip() if CLOSE in content else content


def with_trace(content: str, reasoning: str | None) -> str:
    """The final turn: a `reasoning_content` trace goes before the reply in think tags."""
    return f"{OPEN}\n{reasoning}\n{CLOSE}\n\n{content}" if reasoning is not None else content


def assistant_text(message, final: bool) -> str:
    return with_trace(message.content, message.reasoning) if final else drop_trace(message.content)


def trace_text(message) -> str | None:
    """The trace of an assistant message, from its field or from think tags in its content."""
    if message.reasoning is not None:
        return message.reasoning
    content = message.content
    if CLOSE in content and content.lstrip().startswith(OPEN):
        start = content.index(OPEN) + len(OPEN)
        return content[start : content.index(CLOSE)].strip("\n")
    return None


def trace_span(text: str, span: tuple[int, int], trace: str | None) -> tuple[int, int] | None:
    """Where the trace sits inside a rendered reply span, or None when the template dropped it."""
    if not trace or not trace.strip():
        return None
    at = text.find(trace, span[0], span[1])
    return (at, at + len(trace)) if at >= 0 else None


def subtract(spans, holes) -> tuple[tuple[int, int], ...]:
    """Supervised spans with the trace spans cut out."""
    out = []
    for s, e in spans:
        cuts = sorted((a, b) for a, b in holes if a < e and b > s)
        for a, b in cuts:
            if a > s:
                out.append((s, a))
            s = max(s, b)
        if s < e:
            out.append((s, e))
    return tuple(out)
