"""Chat templates: the one place where a conversation becomes the text a model sees.

A template renders messages into text *and* the character spans the model must learn to
generate. Labels are derived from those spans (see `tokenize.py`), never from re-tokenizing
fragments, so the training ids always equal what a server tokenizes for the same prompt.

Built-in templates are `FormatTemplate`s (a few literal pieces around each turn); users may add
their own as a small YAML file with the same fields, or as a Jinja file. `to_jinja()` writes the
same rendering as a Hugging Face `chat_template`, saved with every checkpoint so chat, eval,
serve and any HF-based server build exactly the training prompt.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .messages import Message

PLACEHOLDERS = ("{content}", "{system}", "{bos}", "{eos}")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class Rendered:
    """Rendered text and the [start, end) character spans of each assistant completion."""

    text: str
    spans: tuple[tuple[int, int], ...]
    # Where the final turn's reasoning trace sits (data/reasoning.py), for `train_on_reasoning`.
    trace_spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class SpecialText:
    """The tokenizer's BOS/EOS strings, substituted for {bos} and {eos}."""

    bos: str = "<s>"
    eos: str = "</s>"

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialText:
        return cls(bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "")


@functools.lru_cache(maxsize=256)
def _pieces(fmt: str) -> tuple[str, ...]:
    """A format string split into literal runs and placeholders (parsed once per format)."""
    out, i, literal = [], 0, []
    while i < len(fmt):
        for ph in PLACEHOLDERS:
            if fmt.startswith(ph, i):
                if literal:
                    out.append("".join(literal))
                    literal = []
                out.append(ph)
                i += len(ph)
                break
        else:
            literal.append(fmt[i])
            i += 1
    if literal:
        out.append("".join(literal))
    return tuple(out)


def _fill(fmt: str, special: SpecialText, content: str = "", system: str = "") -> str:
    # Substitute placeholders in one pass, so braces or placeholders inside content stay literal.
    values = {"{content}": content, "{system}": system, "{bos}": special.bos, "{eos}": special.eos}
    return "".join([values.get(piece, piece) for piece in _pieces(fmt)])


@dataclass(frozen=True)
class FormatTemplate:
    """A template made of literal pieces. Fields may use {content}, {system}, {bos}, {eos}."""

    name: str
    description: str = ""
    prefix: str = ""  # start of every conversation, e.g. "{bos}"
    default_system: str | None = None  # used when the data has no system message
    system_format: str = "{system}"  # emitted after `prefix` when there is a system message
    first_user_format: str | None = None  # first user turn when a system is set (Llama-2 puts it inside)
    user_format: str = "{content}"
    generation_prompt: str = ""  # text that cues the assistant; ends every prompt at inference
    assistant_format: str = "{content}{eos}"  # the supervised part: what the model must generate
    assistant_suffix: str = ""  # unsupervised text after a reply (e.g. a newline)
    stop_strings: tuple[str, ...] = ()
    tool_style: str | None = None  # how tools, calls and results render: llama3 | hermes (tool_templates.py)

    def __post_init__(self) -> None:
        if self.tool_style is not None and self.tool_style not in ("llama3", "hermes"):
            raise TemplateError(f"template {self.name!r}: tool_style must be llama3 or hermes")
        if "{content}" not in self.user_format or "{content}" not in self.assistant_format:
            raise TemplateError(
                f"template {self.name!r}: user_format and assistant_format must contain {{content}}"
            )
        if self.first_user_format is not None and "{system}" not in self.first_user_format:
            raise TemplateError(f"template {self.name!r}: first_user_format must contain {{system}}")
        if "{content}" not in (self.first_user_format or "{content}"):
            raise TemplateError(f"template {self.name!r}: first_user_format must contain {{content}}")

    def render(
        self,
        messages: list[Message],
        add_generation_prompt: bool = False,
        special: SpecialText | None = None,
        tools: tuple[dict, ...] = (),
    ) -> Rendered:
        from . import reasoning
        from .tool_templates import STYLES

        special = special or SpecialText()
        style = STYLES.get(self.tool_style or "")
        if style is None and (tools or any(m.role == "tool" or m.tool_calls for m in messages)):
            raise TemplateError(
                f"template {self.name!r} has no tool format: use llama-3, chatml, a tool_style in your YAML, "
                "or the model's own Jinja template (--conv_template tokenizer)"
            )
        system = self.default_system
        turns = list(messages)
        if turns and turns[0].role == "system":
            # An empty system message is "no system prompt", as if absent (the Jinja below agrees).
            system, turns = (turns[0].content if turns[0].content.strip() else system), turns[1:]
        if style is not None:
            system = style.system(system, tools)
        traces = []
        parts = [_fill(self.prefix, special)]
        embed_system = system is not None and self.first_user_format is not None
        if system is not None and not embed_system:
            parts.append(_fill(self.system_format, special, system=system))
        spans = []
        text_len = len(parts[0]) + (len(parts[1]) if len(parts) > 1 else 0)
        cue, tail = _fill(self.generation_prompt, special), _fill(self.assistant_suffix, special)
        for n, msg in enumerate(turns):
            if msg.role == "user":
                fmt = self.first_user_format if (n == 0 and embed_system) else self.user_format
                content = (
                    style.first_user(msg.content, tools) if style is not None and n == 0 else msg.content
                )
                piece = _fill(fmt, special, content=content, system=system or "")
                parts.append(piece)
                text_len += len(piece)
            elif msg.role == "assistant":
                final = n == len(turns) - 1
                content = reasoning.assistant_text(msg, final)
                if style is not None:
                    content = style.calls(content, msg.tool_calls)
                reply = _fill(self.assistant_format, special, content=content)
                parts += [cue, reply, tail]
                start = text_len + len(cue)
                spans.append((start, start + len(reply)))
                if final:
                    found = reasoning.trace_span(reply, (0, len(reply)), reasoning.trace_text(msg))
                    if found is not None:
                        traces.append((start + found[0], start + found[1]))
                text_len += len(cue) + len(reply) + len(tail)
            elif msg.role == "tool" and style is not None:
                piece = style.result(msg.content)
                parts.append(piece)
                text_len += len(piece)
            else:
                raise TemplateError(f"unexpected role {msg.role!r} at turn {n}")
        if add_generation_prompt:
            parts.append(_fill(self.generation_prompt, special))
        return Rendered("".join(parts), tuple(spans), tuple(traces))

    def control_strings(self, special: SpecialText | None = None) -> tuple[str, ...]:
        special = special or SpecialText()
        pieces = set()
        for fmt in (
            self.prefix,
            self.system_format,
            self.first_user_format or "",
            self.user_format,
            self.generation_prompt,
            self.assistant_format,
            self.assistant_suffix,
        ):
            literal = _fill(fmt, SpecialText("\0", "\0"), content="\0", system="\0")
            pieces.update(p.strip() for p in literal.split("\0") if p.strip())
        pieces.update(s for s in (special.bos, special.eos, *self.stop_strings) if s)
        return tuple(sorted(pieces))

    def stop(self, special: SpecialText | None = None) -> tuple[str, ...]:
        special = special or SpecialText()
        return tuple(dict.fromkeys([*([special.eos] if special.eos else []), *self.stop_strings]))

    def to_jinja(self) -> str:
        """The same rendering as a Hugging Face chat_template (Jinja)."""

        def expr(fmt: str, content: str = "", system: str = "") -> str:
            out, i, lit = [], 0, []
            names = {"{content}": content, "{system}": system, "{bos}": "bos_token", "{eos}": "eos_token"}
            while i < len(fmt):
                for ph in PLACEHOLDERS:
                    if fmt.startswith(ph, i):
                        if lit:
                            out.append(json.dumps("".join(lit)))
                            lit = []
                        out.append(names[ph])
                        i += len(ph)
                        break
                else:
                    lit.append(fmt[i])
                    i += 1
            if lit:
                out.append(json.dumps("".join(lit)))
            return "{{ " + " + ".join(out) + " }}" if out else ""

        from .tool_templates import JINJA_ASSISTANT_TEXT, STYLES

        style = STYLES.get(self.tool_style or "")
        default = "none" if self.default_system is None else json.dumps(self.default_system)
        embed = self.first_user_format is not None
        user_content = style.jinja_user_content() if style is not None else "message['content']"
        j = [
            "{%- set ns = namespace(system=" + default + ", tools_text='', c='') -%}",
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- if messages[0]['content'] | trim -%}{%- set ns.system = messages[0]['content'] -%}{%- endif -%}"
            "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}",
            style.jinja_setup() if style is not None else "",
            expr(self.prefix),
        ]
        if not embed:
            j.append(
                "{%- if ns.system is not none -%}"
                + expr(self.system_format, system="ns.system")
                + "{%- endif -%}"
            )
        j.append("{%- for message in loop_messages -%}{%- if message['role'] == 'user' -%}")
        if embed:
            j.append(
                "{%- if loop.first and ns.system is not none -%}"
                + expr(self.first_user_format, content=user_content, system="ns.system")
                + "{%- else -%}"
                + expr(self.user_format, content=user_content)
                + "{%- endif -%}"
            )
        else:
            j.append(expr(self.user_format, content=user_content))
        j.append(
            "{%- elif message['role'] == 'assistant' -%}"
            + JINJA_ASSISTANT_TEXT
            + (style.jinja_calls() if style is not None else "")
            + expr(self.generation_prompt)
            + expr(self.assistant_format, content="ns.c")
            + expr(self.assistant_suffix)
            + (
                "{%- elif message['role'] in ('tool', 'ipython') -%}" + style.jinja_result()
                if style is not None
                else ""
            )
            + "{%- else -%}{{ raise_exception('Unexpected role: ' + message['role']) }}{%- endif -%}{%- endfor -%}"
        )
        j.append("{%- if add_generation_prompt -%}" + expr(self.generation_prompt) + "{%- endif -%}")
        return "".join(j)


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

BUILTIN: dict[str, FormatTemplate] = {
    t.name: t
    for t in [
        FormatTemplate(
            name="vicuna_v1.1",
            description="FastChat's Vicuna v1.1: 'SYSTEM USER: ... ASSISTANT: ...</s>' (the seed's default)",
            prefix="{bos}",
            default_system=VICUNA_SYSTEM,
            system_format="{system} ",
            user_format="USER: {content} ",
            generation_prompt="ASSISTANT:",
            assistant_format=" {content}{eos}",
            stop_strings=("USER:",),
        ),
        FormatTemplate(
            name="llama-2",
            description="Meta's Llama-2 chat: '<s>[INST] <<SYS>>...<</SYS>> user [/INST] reply </s>' (BOS opens every round)",
            first_user_format="{bos}[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]",
            user_format="{bos}[INST] {content} [/INST]",
            assistant_format=" {content} {eos}",
            stop_strings=("[INST]",),
        ),
        FormatTemplate(
            name="llama-3",
            description="Meta's Llama-3 instruct: header ids around each role, <|eot_id|> after each turn",
            prefix="{bos}",
            system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
            user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant_format="{content}<|eot_id|>",
            stop_strings=("<|eot_id|>",),
            tool_style="llama3",
        ),
        FormatTemplate(
            name="chatml",
            description="ChatML: '<|im_start|>role\\n...<|im_end|>' per turn",
            system_format="<|im_start|>system\n{system}<|im_end|>\n",
            user_format="<|im_start|>user\n{content}<|im_end|>\n",
            generation_prompt="<|im_start|>assistant\n",
            assistant_format="{content}<|im_end|>",
            assistant_suffix="\n",
            stop_strings=("<|im_end|>",),
            tool_style="hermes",
        ),
        FormatTemplate(
            name="alpaca",
            description="Stanford Alpaca: '### Instruction:' / '### Response:' blocks",
            prefix="{bos}",
            default_system=ALPACA_SYSTEM,
            system_format="{system}\n\n",
            user_format="### Instruction:\n{content}\n\n",
            generation_prompt="### Response:\n",
            assistant_format="{content}{eos}",
            assistant_suffix="\n\n",
            stop_strings=("### Instruction:",),
        ),
    ]
}


@dataclass(frozen=True)
class JinjaTemplate:
    """A Jinja chat template (a file, or the tokenizer's own), rendered by transformers' own
    `render_jinja_template` with the arguments `apply_chat_template` passes (tools included), so
    the text is the model's own rendering, quirks and all.

    Spans come from prefix differences (`_span`): a turn starts where the prompt cut before it
    (with the generation prompt) stops agreeing with the full text, and ends where the rendering cut
    after it ends. A template that changes earlier turns when later ones are added, or always ends
    with a generation cue, is handled by cutting at its last end-of-turn marker; if that fails we
    refuse rather than guess. `template_kwargs` are extra template variables (e.g. `date_string`).
    """

    name: str
    source: str
    description: str = "a Jinja chat template"
    stop_strings: tuple[str, ...] = ()
    template_kwargs: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if not self.stop_strings:
            found = tuple(m for m in END_OF_TURN_MARKERS if m in self.source)
            object.__setattr__(self, "stop_strings", found)

    def render_text(
        self,
        messages: list[Message],
        add_generation_prompt: bool,
        special: SpecialText,
        tools: tuple[dict, ...] = (),
    ) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        from .tools import message_to_openai

        # apply_chat_template drops None-valued keys before rendering; so do we.
        chat = [{k: v for k, v in message_to_openai(m).items() if v is not None} for m in messages]
        try:
            rendered, _ = render_jinja_template(
                conversations=[chat],
                tools=list(tools) or None,
                chat_template=self.source,
                add_generation_prompt=add_generation_prompt,
                bos_token=special.bos,
                eos_token=special.eos,
                **dict(self.template_kwargs),
            )
        except Exception as exc:  # jinja2's TemplateError and friends: name the template
            raise TemplateError(f"template {self.name!r} failed to render: {exc}") from None
        return rendered[0]

    def _span(self, messages, k, full, special, tools) -> tuple[int, int]:
        before = self.render_text(messages[:k], True, special, tools)
        upto = self.render_text(messages[: k + 1], False, special, tools)
        start = (
            len(before)
            if full.startswith(before)
            else self._reply_start(messages, k, full, before, special, tools)
        )
        if full.startswith(upto) and self.render_text(messages[: k + 1], True, special, tools) != upto:
            return start, len(upto)
        agree = len(os.path.commonprefix([upto, full]))
        ends = [
            full.rfind(m, start, agree) + len(m)
            for m in self.stop(special)
            if full.rfind(m, start, agree) >= 0
        ]
        if not ends and full.startswith(upto):
            return start, len(upto)
        if not ends:
            raise TemplateError(
                f"template {self.name!r} is not prefix-stable at turn {k}: the rendered prompt changes when later "
                "turns are added, so the supervised span cannot be located exactly. Use a built-in or YAML template."
            )
        return start, max(ends)

    def _reply_start(self, messages, k, full, before, special, tools) -> int:
        """Where turn k's reply starts when the prompt before it renders differently once later turns
        follow (Hermes closes a last tool result differently; DeepSeek-R1's generation prompt opens
        `<think>`): right after the generation prompt found where the context stops agreeing, or after
        the part of it the full text shares, cut back to a marker or line end."""
        context = self.render_text(messages[:k], False, special, tools)
        base = len(os.path.commonprefix([context, full]))
        cue = before[len(context) :] if before.startswith(context) else before[base:]
        at = full.find(cue, base, base + len(cue) + 64) if cue else -1
        if at >= 0:
            return at + len(cue)
        shared = len(os.path.commonprefix([cue, full[base:]]))
        while shared > 0 and cue[shared - 1] not in ">\n":
            shared -= 1
        return base + shared

    def render(
        self,
        messages: list[Message],
        add_generation_prompt: bool = False,
        special: SpecialText | None = None,
        tools: tuple[dict, ...] = (),
    ) -> Rendered:
        from . import reasoning

        special = special or SpecialText()
        full = self.render_text(messages, add_generation_prompt, special, tools)
        spans = [
            self._span(messages, k, full, special, tools)
            for k, m in enumerate(messages)
            if m.role == "assistant"
        ]
        replies = [m for m in messages if m.role == "assistant"]
        for m, (s, e) in zip(replies, spans, strict=True):
            lost = [c.name for c in m.tool_calls if c.name not in full[s:e]]
            if lost:
                raise TemplateError(
                    f"template {self.name!r} does not render the tool call(s) {lost} of an assistant turn "
                    "(it would train the model to answer without calling); use a template that renders tool_calls"
                )
        traces = []
        last = messages[-1] if messages else None
        trace = reasoning.trace_text(last) if last is not None and last.role == "assistant" else None
        if trace is not None and not add_generation_prompt:
            start, end = spans[-1]
            found = reasoning.trace_span(full, (start, end), trace)
            if found is None:
                # The template drops traces (as DeepSeek-R1's does for every turn it is given): write the
                # final turn the way the model generates it, the generation prompt then the trace.
                cue = self.render_text(messages[:-1], True, special, tools)
                cue = cue[start:] if cue.startswith(full[:start]) else ""
                opener = "" if cue.rstrip().endswith(reasoning.OPEN) else reasoning.OPEN + "\n"
                head = cue + opener
                # The answer keeps the separator a template leaves after `</think>`, or gets one.
                gap = "" if full.startswith("\n", start) else "\n\n"
                inserted = head + trace + "\n" + reasoning.CLOSE + gap
                full = full[:start] + inserted + full[start:]
                spans[-1] = (start + len(cue), end + len(inserted))
                found = (start + len(head), start + len(head) + len(trace))
            traces.append(found)
        return Rendered(full, tuple(spans), tuple(traces))

    def control_strings(self, special: SpecialText | None = None) -> tuple[str, ...]:
        special = special or SpecialText()
        return tuple(sorted({s for s in (special.bos, special.eos, *self.stop_strings) if s}))

    def stop(self, special: SpecialText | None = None) -> tuple[str, ...]:
        special = special or SpecialText()
        return tuple(dict.fromkeys([*([special.eos] if special.eos else []), *self.stop_strings]))

    def to_jinja(self) -> str:
        return self.source


# End-of-turn markers of well-known chat templates: a Jinja template's stop strings are those it writes.
END_OF_TURN_MARKERS = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<|end|>",
)


Template = FormatTemplate | JinjaTemplate
TEMPLATE_FIELDS = [f.name for f in dataclasses.fields(FormatTemplate)]


def template_from_yaml(path: Path) -> FormatTemplate:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: a template file must be a mapping of {TEMPLATE_FIELDS}")
    for key in data:
        if key not in TEMPLATE_FIELDS:
            close = difflib.get_close_matches(key, TEMPLATE_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TemplateError(f"{path}: unknown template key {key!r}{hint}; valid keys: {TEMPLATE_FIELDS}")
    data.setdefault("name", path.stem)
    if "stop_strings" in data:
        data["stop_strings"] = tuple(data["stop_strings"])
    for key, value in data.items():
        optional = key in ("default_system", "first_user_format", "tool_style") and value is None
        if key != "stop_strings" and not optional and not isinstance(value, str):
            raise TemplateError(f"{path}: template key {key!r} must be a string, got {type(value).__name__}")
    try:
        return FormatTemplate(**data)
    except TemplateError as exc:
        raise TemplateError(f"{path}: {exc}") from None


def get_template(name: str, tokenizer=None) -> Template:
    """A built-in name, 'tokenizer' (the tokenizer's own chat_template), or a .yaml/.jinja path."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name == "tokenizer":
        source = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if not source:
            raise TemplateError("--conv_template tokenizer needs a tokenizer that has a chat_template")
        return JinjaTemplate("tokenizer", source, "the tokenizer's own chat_template")
    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".jinja", ".j2"):
        if not path.exists():
            raise TemplateError(f"template file not found: {path}")
        if path.suffix in (".jinja", ".j2"):
            template = JinjaTemplate(
                path.stem, path.read_text(encoding="utf-8"), f"Jinja template from {path}"
            )
        else:
            template = template_from_yaml(path)
        # Validate on load: a two-turn sample must render with a span per reply.
        sample = [
            Message("system", "S"),
            Message("user", "U1"),
            Message("assistant", "A1"),
            Message("user", "U2"),
            Message("assistant", "A2"),
        ]
        rendered = template.render(sample)
        if len(rendered.spans) != 2 or any("A" not in rendered.text[s:e] for s, e in rendered.spans):
            raise TemplateError(f"{path}: the template does not render assistant replies as separate spans")
        return template
    close = difflib.get_close_matches(name, [*BUILTIN, "tokenizer"], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise TemplateError(
        f"unknown template {name!r}.{hint} Built-in: {', '.join(BUILTIN)}, tokenizer; or a .yaml/.jinja file"
    )


def all_control_strings() -> tuple[str, ...]:
    out: set[str] = set()
    for t in BUILTIN.values():
        out.update(t.control_strings())
    return tuple(sorted(out))


def template_names() -> list[str]:
    return [*BUILTIN, "tokenizer"]


__all__ = [
    "BUILTIN",
    "FormatTemplate",
    "JinjaTemplate",
    "Rendered",
    "SpecialText",
    "TemplateError",
    "get_template",
]
