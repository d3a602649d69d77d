"""The Ollama Modelfile of every built-in template, pinned (golden), and a Jinja template that
renders like chatml with a default system (SmolLM2's own) translated to it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llama_sft.data.templates import BUILTIN, JinjaTemplate, SpecialText
from llama_sft.export.modelfile import as_format_template, modelfile_text


@dataclass
class Specials:  # the tokenizer's BOS/EOS text is all a Modelfile needs from it
    bos_token: str = "<s>"
    eos_token: str = "</s>"


LLAMA3 = Specials("<|begin_of_text|>", "<|end_of_text|>")
CHATML = Specials("<|im_start|>", "<|im_end|>")  # SmolLM2's: bos <|im_start|>, never rendered by chatml

GOLDEN = {
    "vicuna_v1.1": (
        Specials(),
        '''# Ollama: ollama create NAME -f Modelfile (template 'vicuna_v1.1', as trained)
FROM ./m.gguf
TEMPLATE """{{ if .System }}{{ $.System }} {{ end }}{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}USER: {{ .Content }} {{ if eq (len (slice $.Messages $i)) 1 }}ASSISTANT:{{ end }}{{ else if eq .Role "assistant" }}ASSISTANT: {{ .Content }}</s>{{ end }}{{ end }}"""
SYSTEM """A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."""
PARAMETER stop "</s>"
PARAMETER stop "USER:"
''',
    ),
    "llama-2": (
        Specials(),
        '''# Ollama: ollama create NAME -f Modelfile (template 'llama-2', as trained)
FROM ./m.gguf
TEMPLATE """{{ $first := true }}{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}{{ if $first }}{{ if $.System }}[INST] <<SYS>>
{{ $.System }}
<</SYS>>

{{ .Content }} [/INST]{{ else }}[INST] {{ .Content }} [/INST]{{ end }}{{ else }}<s>[INST] {{ .Content }} [/INST]{{ end }}{{ $first = false }}{{ else if eq .Role "assistant" }} {{ .Content }} </s>{{ end }}{{ end }}"""
PARAMETER stop "</s>"
PARAMETER stop "[INST]"
''',
    ),
    "llama-3": (
        LLAMA3,
        '''# Ollama: ollama create NAME -f Modelfile (template 'llama-3', as trained)
FROM ./m.gguf
TEMPLATE """{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ $.System }}<|eot_id|>{{ end }}{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if eq (len (slice $.Messages $i)) 1 }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}{{ else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}{{ end }}"""
PARAMETER stop "<|end_of_text|>"
PARAMETER stop "<|eot_id|>"
''',
    ),
    "chatml": (
        CHATML,
        '''# Ollama: ollama create NAME -f Modelfile (template 'chatml', as trained)
FROM ./m.gguf
TEMPLATE """{{ if .System }}<|im_start|>system
{{ $.System }}<|im_end|>
{{ end }}{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ if eq (len (slice $.Messages $i)) 1 }}<|im_start|>assistant
{{ end }}{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}<|im_end|>
{{ end }}{{ end }}"""
PARAMETER stop "<|im_end|>"
''',
    ),
    "alpaca": (
        Specials(),
        '''# Ollama: ollama create NAME -f Modelfile (template 'alpaca', as trained)
FROM ./m.gguf
TEMPLATE """{{ if .System }}{{ $.System }}

{{ end }}{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}### Instruction:
{{ .Content }}

{{ if eq (len (slice $.Messages $i)) 1 }}### Response:
{{ end }}{{ else if eq .Role "assistant" }}### Response:
{{ .Content }}</s>

{{ end }}{{ end }}"""
SYSTEM """Below is an instruction that describes a task. Write a response that appropriately completes the request."""
PARAMETER stop "</s>"
PARAMETER stop "### Instruction:"
''',
    ),
}


def test_every_builtin_has_a_golden():
    assert sorted(GOLDEN) == sorted(BUILTIN)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_modelfile_golden(name):
    specials, expected = GOLDEN[name]
    assert modelfile_text("m.gguf", BUILTIN[name], specials) == expected


def test_leading_bos_left_to_ollama_and_later_ones_written():
    """BOS opens the training text of vicuna/llama-2/llama-3/alpaca; Ollama adds it (add_bos_token),
    so the TEMPLATE has none at its start. Llama-2's later rounds open with <s> as text."""
    for name, (specials, text) in GOLDEN.items():
        template_line = text.split('TEMPLATE """', 1)[1]
        assert not template_line.startswith(specials.bos_token), name
    assert "{{ else }}<s>[INST] {{ .Content }}" in GOLDEN["llama-2"][1]


def test_smollm2_jinja_translates_to_chatml_with_its_default_system():
    source = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    template = JinjaTemplate("tokenizer", source)
    fmt = as_format_template(template, SpecialText(CHATML.bos_token, CHATML.eos_token))
    assert fmt is not None and fmt.name == "chatml"
    assert fmt.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    text = modelfile_text("m.gguf", template, CHATML)
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert text.split("\n")[2] == GOLDEN["chatml"][1].split("\n")[2]  # the chatml TEMPLATE line


def test_unlike_any_builtin_says_so():
    template = JinjaTemplate("odd", "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}")
    text = modelfile_text("m.gguf", template, Specials())
    assert "TEMPLATE" not in text.replace("# No TEMPLATE", "") and "# No TEMPLATE" in text
