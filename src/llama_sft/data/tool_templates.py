"""How the built-in templates render tools, tool calls and tool results, and read calls back.

Two conventions, each in Python (training) and in Jinja (the `chat_template` saved with a run,
which `apply_chat_template` and any HF server render); a parity test holds them equal.

* `llama3`: Meta's LLaMA-3.1 custom-tool format. The tool schemas go into the first user message
  with Meta's instructions (`tojson(indent=4)` each); a call is the assistant turn
  `{"name": ..., "parameters": {...}}` (several calls one per line); a result is an `ipython` turn.
* `hermes`: NousResearch's Hermes convention on ChatML. The schemas go into the system message
  inside `<tools></tools>`; each call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
  a result is a `tool` turn wrapping it in `<tool_response>`.

Arguments given as a JSON string are written as given, objects as `json.dumps` (HF's `tojson`);
a JSON-object tool result is written as `tojson` too. `parse_calls` reads a generated reply back
into text and calls, for `serve` and `chat` (official Jinja templates included, by their markers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .tools import ToolCall

LLAMA3_PREAMBLE = (
    "Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)
HERMES_PREAMBLE = (
    "You are a function calling AI model. You may call one or more functions to assist with the user "
    "query. Here are the available tools: <tools>\n"
)
HERMES_AFTER = (
    "\n</tools>\nFor each function call return a JSON object with the function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def _dumps(value, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)  # what HF's `tojson` writes


def _args(call: ToolCall) -> str:
    return call.arguments if isinstance(call.arguments, str) else _dumps(call.arguments)


@dataclass(frozen=True)
class ToolStyle:
    name: str

    # --- Python rendering ---------------------------------------------------------------------
    def system(self, system: str | None, tools: Sequence[dict]) -> str | None:
        if self.name != "hermes" or not tools:
            return system
        block = HERMES_PREAMBLE + "\n".join(_dumps(t) for t in tools) + HERMES_AFTER
        return block if system is None else system + "\n\n" + block

    def first_user(self, content: str, tools: Sequence[dict]) -> str:
        if self.name != "llama3" or not tools:
            return content
        return LLAMA3_PREAMBLE + "".join(_dumps(t, indent=4) + "\n\n" for t in tools) + content

    def calls(self, content: str, calls: Sequence[ToolCall]) -> str:
        if not calls:
            return content
        if self.name == "llama3":
            text = "\n".join('{"name": "' + c.name + '", "parameters": ' + _args(c) + "}" for c in calls)
        else:
            text = "\n".join(
                '<tool_call>\n{"name": "' + c.name + '", "arguments": ' + _args(c) + "}\n</tool_call>"
                for c in calls
            )
        return content + "\n" + text if content else text

    def result(self, content: str) -> str:
        if self.name == "llama3":
            return "<|start_header_id|>ipython<|end_header_id|>\n\n" + content + "<|eot_id|>"
        return "<|im_start|>tool\n<tool_response>\n" + content + "\n</tool_response><|im_end|>\n"

    # --- the same in Jinja (inside the message loop of FormatTemplate.to_jinja) ---------------
    def jinja_setup(self) -> str:
        """Sets ns.tools_text: the schema block, empty without tools."""
        if self.name == "llama3":
            body = "{%- for t in tools -%}{%- set ns.tools_text = ns.tools_text + (t|tojson(indent=4)) + '\\n\\n' -%}{%- endfor -%}"
            pre = json.dumps(LLAMA3_PREAMBLE)
            return (
                "{%- set ns.tools_text = '' -%}{%- if tools -%}{%- set ns.tools_text = "
                + pre
                + " -%}"
                + body
                + "{%- endif -%}"
            )
        body = (
            "{%- for t in tools -%}{%- if not loop.first -%}{%- set ns.tools_text = ns.tools_text + '\\n' -%}{%- endif -%}"
            "{%- set ns.tools_text = ns.tools_text + (t|tojson) -%}{%- endfor -%}"
        )
        return (
            "{%- set ns.tools_text = '' -%}{%- if tools -%}{%- set ns.tools_text = "
            + json.dumps(HERMES_PREAMBLE)
            + " -%}"
            + body
            + "{%- set ns.tools_text = ns.tools_text + "
            + json.dumps(HERMES_AFTER)
            + " -%}{%- if ns.system is not none -%}{%- set ns.system = ns.system + '\\n\\n' + ns.tools_text -%}"
            "{%- else -%}{%- set ns.system = ns.tools_text -%}{%- endif -%}{%- endif -%}"
        )

    def jinja_user_content(self) -> str:
        """Expression for a user message's content (llama3 puts the schemas in the first one)."""
        if self.name == "llama3":
            return "((ns.tools_text + message['content']) if loop.first else message['content'])"
        return "message['content']"

    def jinja_calls(self) -> str:
        """Statements appending the calls of `message` to `ns.c`."""
        if self.name == "llama3":
            one = "'{\"name\": \"' + tc.function.name + '\", \"parameters\": ' + args + '}'"
            sep = "'\\n'"
        else:
            one = "'<tool_call>\\n{\"name\": \"' + tc.function.name + '\", \"arguments\": ' + args + '}\\n</tool_call>'"
            sep = "'\\n'"
        args_expr = (
            "(tc.function.arguments if tc.function.arguments is string else (tc.function.arguments|tojson))"
        )
        one = one.replace("args", args_expr)
        return (
            "{%- if message.tool_calls is defined and message.tool_calls -%}"
            "{%- for tc in message.tool_calls -%}"
            "{%- if ns.c -%}{%- set ns.c = ns.c + " + sep + " -%}{%- endif -%}"
            "{%- set ns.c = ns.c + " + one + " -%}"
            "{%- endfor -%}{%- endif -%}"
        )

    def jinja_result(self) -> str:
        content = "(message['content'] if message['content'] is string else (message['content']|tojson))"
        if self.name == "llama3":
            return (
                "{{ '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + " + content + " + '<|eot_id|>' }}"
            )
        return (
            "{{ '<|im_start|>tool\\n<tool_response>\\n' + "
            + content
            + " + '\\n</tool_response><|im_end|>\\n' }}"
        )


STYLES = {"llama3": ToolStyle("llama3"), "hermes": ToolStyle("hermes")}

# Jinja for the reasoning rule of reasoning.assistant_text: sets `ns.c` for the message in the loop.
JINJA_ASSISTANT_TEXT = (
    "{%- set ns.c = message['content'] if message['content'] is string else '' -%}"
    "{%- if not loop.last and '</think>' in ns.c -%}{%- set ns.c = ns.c.split('</think>')[-1].lstrip() -%}{%- endif -%}"
    "{%- if loop.last and message.reasoning_content is defined and message.reasoning_content is not none -%}"
    "{%- set ns.c = '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' + ns.c -%}{%- endif -%}"
)


# --- reading a generated reply back ------------------------------------------------------------

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FUNCTOOLS = re.compile(r"functools\s*(\[.*\])", re.DOTALL)


def style_of(source: str) -> str:
    """The call convention of a Jinja template, from the markers it writes."""
    if "<tool_call>" in source:
        return "hermes"
    if "functools[" in source:
        return "functools"
    return "llama3"


def template_style(template) -> str | None:
    """The call convention a run's template writes: its built-in style, or read from its Jinja."""
    style = getattr(template, "tool_style", None)
    if style is not None or not hasattr(template, "source"):
        return style
    return style_of(template.source)


def _call(obj) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return ToolCall(obj["name"], args) if isinstance(args, dict) else None


def _json_objects(text: str) -> list:
    """Every JSON value in `text`, read one after another (whitespace or ';' between)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            break
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return []
        out.append(value)
    return out


def parse_calls(text: str, style: str) -> tuple[str, list[ToolCall]]:
    """(remaining text, calls) of a generated reply; no calls when the reply is not a call."""
    if style == "hermes":
        found = _HERMES.findall(text)
        calls = [_call(v) for body in found for v in (_json_objects(body) or [None])]
        if not found or any(c is None for c in calls):
            return text, []
        return text[: text.index("<tool_call>")].strip(), calls
    if style == "functools":
        m = _FUNCTOOLS.search(text)
        values = _json_objects(m.group(1)) if m else []
        calls = [_call(v) for v in (values[0] if values and isinstance(values[0], list) else [])]
        if not calls or any(c is None for c in calls):
            return text, []
        return text[: m.start()].strip(), calls
    body = text.replace("<|python_tag|>", "").strip()
    if not body.startswith("{"):
        return text, []
    calls = [_call(v) for v in _json_objects(body)]
    if not calls or any(c is None for c in calls):
        return text, []
    return "", calls
