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
    return "".join(values.get(piece, piece) for piece in _pieces(fmt))


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

    def __post_init__(self) -> None:
        if "{content}" not in self.user_format or "{content}" not in self.assistant_format:
            raise TemplateError(
                f"template {self.name!r}: user_format and assistant_format must contain {{content}}"
            )
        if self.first_user_format is not None and "{system}" not in self.first_user_format:
            raise TemplateError(f"template {self.name!r}: first_user_format must contain {{system}}")
        if "{content}" not in (self.first_user_format or "{content}"):
            raise TemplateError(f"template {self.name!r}: first_user_format must contain {{content}}")

    def render(
        self, messages: list[Message], add_generation_prompt: bool = False, special: SpecialText | None = None
    ) -> Rendered:
        special = special or SpecialText()
        system = self.default_system
        turns = list(messages)
        if turns and turns[0].role == "system":
            # An empty system message is "no system prompt", as if absent (the Jinja below agrees).
            system, turns = (turns[0].content if turns[0].content.strip() else system), turns[1:]
        parts = [_fill(self.prefix, special)]
        embed_system = system is not None and self.first_user_format is not None
        if system is not None and not embed_system:
            parts.append(_fill(self.system_format, special, system=system))
        spans = []
        text_len = len(parts[0]) + (len(parts[1]) if len(parts) > 1 else 0)
        for n, msg in enumerate(turns):
            if msg.role == "user":
                fmt = self.first_user_format if (n == 0 and embed_system) else self.user_format
                piece = _fill(fmt, special, content=msg.content, system=system or "")
                parts.append(piece)
                text_len += len(piece)
            elif msg.role == "assistant":
                cue = _fill(self.generation_prompt, special)
                reply = _fill(self.assistant_format, special, content=msg.content)
                tail = _fill(self.assistant_suffix, special)
                parts += [cue, reply, tail]
                start = text_len + len(cue)
                spans.append((start, start + len(reply)))
                text_len += len(cue) + len(reply) + len(tail)
            else:
                raise TemplateError(f"unexpected role {msg.role!r} at turn {n}")
        if add_generation_prompt:
            parts.append(_fill(self.generation_prompt, special))
        return Rendered("".join(parts), tuple(spans))

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

        default = "none" if self.default_system is None else json.dumps(self.default_system)
        embed = self.first_user_format is not None
        j = [
            "{%- set ns = namespace(system=" + default + ") -%}",
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- if messages[0]['content'] | trim -%}{%- set ns.system = messages[0]['content'] -%}{%- endif -%}"
            "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}",
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
                + expr(self.first_user_format, content="message['content']", system="ns.system")
                + "{%- else -%}"
                + expr(self.user_format, content="message['content']")
                + "{%- endif -%}"
            )
        else:
            j.append(expr(self.user_format, content="message['content']"))
        j.append(
            "{%- elif message['role'] == 'assistant' -%}"
            + expr(self.generation_prompt)
            + expr(self.assistant_format, content="message['content']")
            + expr(self.assistant_suffix)
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
    """A Jinja chat template (a file, or the tokenizer's own). Spans come from prefix differences:
    the prompt up to an assistant turn (with generation prompt) must be a prefix of the prompt
    including that turn, or the template cannot be trained on safely and we say so."""

    name: str
    source: str
    description: str = "a Jinja chat template"
    stop_strings: tuple[str, ...] = ()

    def _render_text(self, messages: list[Message], add_generation_prompt: bool, special: SpecialText) -> str:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.source).render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=special.bos,
            eos_token=special.eos,
        )

    def render(
        self, messages: list[Message], add_generation_prompt: bool = False, special: SpecialText | None = None
    ) -> Rendered:
        special = special or SpecialText()
        full = self._render_text(messages, add_generation_prompt, special)
        spans = []
        for k, msg in enumerate(messages):
            if msg.role != "assistant":
                continue
            before = self._render_text(messages[:k], True, special)
            upto = self._render_text(messages[: k + 1], False, special)
            if not upto.startswith(before) or not full.startswith(upto):
                raise TemplateError(
                    f"template {self.name!r} is not prefix-stable at turn {k}: the rendered prompt changes when later "
                    "turns are added, so the supervised span cannot be located exactly. Use a built-in or YAML template."
                )
            spans.append((len(before), len(upto)))
        return Rendered(full, tuple(spans))

    def control_strings(self, special: SpecialText | None = None) -> tuple[str, ...]:
        special = special or SpecialText()
        return tuple(sorted({s for s in (special.bos, special.eos, *self.stop_strings) if s}))

    def stop(self, special: SpecialText | None = None) -> tuple[str, ...]:
        special = special or SpecialText()
        return tuple(dict.fromkeys([*([special.eos] if special.eos else []), *self.stop_strings]))

    def to_jinja(self) -> str:
        return self.source


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
        if key not in ("stop_strings", "default_system", "first_user_format") and not isinstance(value, str):
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
