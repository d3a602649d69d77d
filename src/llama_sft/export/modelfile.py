"""An Ollama `Modelfile` for an exported GGUF: FROM, the training template in Ollama's Go-template
syntax, a PARAMETER stop per stop string, and SYSTEM when the template has a default system.

Ollama ignores the GGUF's Jinja `chat_template` when a Modelfile gives a TEMPLATE, and adds BOS
itself when the GGUF says `add_bos_token`; so the Go template omits the leading BOS that our
rendering starts with, and writes every later one (Llama-2 opens each round with `<s>`) as text,
which Ollama tokenizes as the special token. Any `FormatTemplate` translates (built-in or a YAML
template); a Jinja template translates when it renders exactly like one of them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..data.messages import Message
from ..data.templates import BUILTIN, PLACEHOLDERS, FormatTemplate, SpecialText, Template, TemplateError


def _go(
    fmt: str, special: SpecialText, content: str = "{{ .Content }}", system: str = "{{ $.System }}"
) -> str:
    """A template field as Go-template text: literals as they are, placeholders as actions."""
    out, i = [], 0
    values = {"{content}": content, "{system}": system, "{bos}": special.bos, "{eos}": special.eos}
    while i < len(fmt):
        for ph in PLACEHOLDERS:
            if fmt.startswith(ph, i):
                out.append(values[ph])
                i += len(ph)
                break
        else:
            out.append('{{ "{{" }}' if fmt.startswith("{{", i) else fmt[i])
            i += 2 if fmt.startswith("{{", i) else 1
    return "".join(out)


def _strip_bos(fmt: str) -> str:
    return fmt.removeprefix("{bos}")


def go_template(template: FormatTemplate, special: SpecialText, add_bos: bool) -> str:
    """Ollama's TEMPLATE. No whitespace-trimming actions ({{- ... }}): the templates' own newlines
    are part of the prompt, so actions sit next to each other on one line."""
    t = template
    lead = _strip_bos if add_bos else (lambda fmt: fmt)
    embed = t.first_user_format is not None
    user = _go(t.user_format, special)
    if embed:  # Llama-2: the system goes inside the first user turn, whose BOS Ollama adds
        first = _go(lead(t.first_user_format), special)
        user = "{{ if $first }}{{ if $.System }}" + first + "{{ else }}" + _go(lead(t.user_format), special)
        user += "{{ end }}{{ else }}" + _go(t.user_format, special) + "{{ end }}{{ $first = false }}"
    parts = ["{{ $first := true }}" if embed else "", _go(lead(t.prefix), special)]
    if not embed:
        parts.append("{{ if .System }}" + _go(t.system_format, special) + "{{ end }}")
    cue = _go(t.generation_prompt, special)
    parts += [
        '{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}',
        user,
        "{{ if eq (len (slice $.Messages $i)) 1 }}" + cue + "{{ end }}" if cue else "",
        '{{ else if eq .Role "assistant" }}',
        cue + _go(t.assistant_format, special) + _go(t.assistant_suffix, special),
        "{{ end }}{{ end }}",
    ]
    return "".join(parts)


def _probes() -> list[list[Message]]:
    u, a = Message("user", "Hi there"), Message("assistant", "Hello!")
    s = Message("system", "Be brief.")
    return [[u], [s, u], [u, a, Message("user", "More?")], [s, u, a, Message("user", "More?")]]


def _same(a: Template, b: Template, special: SpecialText) -> bool:
    try:
        return all(
            a.render(p, add_generation_prompt=g, special=special).text
            == b.render(p, add_generation_prompt=g, special=special).text
            for p in _probes()
            for g in (True, False)
        )
    except TemplateError:
        return False


def as_format_template(template: Template, special: SpecialText) -> FormatTemplate | None:
    """`template` as a FormatTemplate that renders the same text, or None (a Jinja template unlike
    any built-in, e.g. one with a default system we cannot find)."""
    if isinstance(template, FormatTemplate):
        return template
    bare = template.render([Message("user", "Hi there")], special=special).text
    for builtin in BUILTIN.values():
        candidates = [builtin, dataclasses.replace(builtin, default_system=None)]
        before, _, after = (builtin.prefix + builtin.system_format).partition("{system}")
        head, tail = before.replace("{bos}", special.bos), after.replace("{eos}", special.eos)
        if after and bare.startswith(head) and tail in bare[len(head) :]:
            found = bare[len(head) : bare.index(tail, len(head))]
            candidates.append(dataclasses.replace(builtin, default_system=found))
        for candidate in candidates:
            if _same(candidate, template, special):
                return dataclasses.replace(
                    candidate,
                    stop_strings=tuple(dict.fromkeys([*candidate.stop_strings, *template.stop_strings])),
                )
    return None


def _quote(text: str) -> str:
    if '"""' in text:
        raise TemplateError(f'{text[:40]!r}...: a Modelfile cannot hold """ inside a triple-quoted value')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, template: Template, tokenizer, add_bos: bool | None = None) -> str:
    from .gguf_vocab import opens_with_bos

    special = SpecialText.from_tokenizer(tokenizer)
    add_bos = opens_with_bos(template, tokenizer) if add_bos is None else add_bos
    lines = [
        f"# Ollama: ollama create NAME -f Modelfile (template {template.name!r}, as trained)",
        f"FROM ./{gguf_name}",
    ]
    fmt = as_format_template(template, special)
    if fmt is None:
        lines.append(
            "# No TEMPLATE: this Jinja template has no Go-template translation; Ollama falls back to the "
            "GGUF's tokenizer.chat_template, which it may not render exactly as training did."
        )
    else:
        lines.append(f"TEMPLATE {_quote(go_template(fmt, special, add_bos))}")
        if fmt.default_system is not None:
            lines.append(f"SYSTEM {_quote(fmt.default_system)}")
    for stop in template.stop(special):
        lines.append(f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: str | Path, template: Template, tokenizer) -> Path:
    gguf_path = Path(gguf_path)
    path = gguf_path.parent / "Modelfile"
    path.write_text(modelfile_text(gguf_path.name, template, tokenizer), encoding="utf-8")
    return path
