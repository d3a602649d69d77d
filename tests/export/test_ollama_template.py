"""The Modelfile TEMPLATE rendered by Go's text/template (the engine Ollama runs templates with)
equals our training rendering minus the leading BOS Ollama adds itself, for every built-in
template, with and without a system message, one and several turns.

Values are passed as Ollama does for a chat: the Modelfile's SYSTEM becomes a leading system
message when the request has none, `.System` is the system text and `.Messages` holds every
message. Needs the `go` toolchain (skips without it; Debian: golang-go).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from ci import unavailable

from llama_sft.data.messages import Message
from llama_sft.data.templates import BUILTIN, SpecialText
from llama_sft.export.gguf_vocab import opens_with_bos
from llama_sft.export.modelfile import go_template

pytestmark = pytest.mark.slow
SPECIALS = {
    "llama-3": SpecialText("<|begin_of_text|>", "<|end_of_text|>"),
    "chatml": SpecialText("<|im_start|>", "<|im_end|>"),
}


@dataclass
class Specials:
    bos_token: str
    eos_token: str


CONVERSATIONS = [
    [Message("user", "Hi there")],
    [Message("system", "Be brief."), Message("user", "Hi there")],
    [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "12 km?\n\tok")],
    [Message("system", "S"), Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "More?")],
]


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    go = shutil.which("go")
    if go is None:
        unavailable("the go toolchain is not installed (`make test` installs Debian's golang-go)")
    out = tmp_path_factory.mktemp("gotmpl") / "render"
    source = Path(__file__).parent / "ollama_template" / "main.go"
    env = {
        "GOCACHE": str(out.parent / "cache"),
        "HOME": str(out.parent),
        "PATH": "/usr/bin:/bin",
        "GO111MODULE": "off",
    }
    subprocess.run([go, "build", "-o", str(out), str(source)], check=True, env=env, timeout=600)

    def render(template: str, system: str, messages: list[Message]) -> str:
        payload = {"template": template, "system": system, "messages": [m.__dict__ for m in messages]}
        return subprocess.run(
            [str(out)], input=json.dumps(payload), capture_output=True, text=True, check=True
        ).stdout

    return render


@pytest.mark.parametrize("name", list(BUILTIN))
def test_go_rendering_equals_training_rendering(go_render, name):
    template = BUILTIN[name]
    special = SPECIALS.get(name, SpecialText())
    add_bos = opens_with_bos(template, Specials(special.bos, special.eos))
    go = go_template(template, special, add_bos)
    for conversation in CONVERSATIONS:
        expected = template.render(conversation, add_generation_prompt=True, special=special).text
        if add_bos:
            expected = expected.removeprefix(special.bos)
        messages = list(conversation)
        if messages[0].role != "system" and template.default_system is not None:
            messages.insert(0, Message("system", template.default_system))  # Modelfile SYSTEM
        system = messages[0].content if messages[0].role == "system" else ""
        assert go_render(go, system, messages) == expected, (name, conversation)
