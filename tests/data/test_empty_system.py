"""An empty system message (`{"role": "system", "content": ""}`, common in OpenAI exports) is "no
system prompt": accepted in every input format, and rendered as if absent by every template, in
training, in the saved HF chat_template and on the server."""

from __future__ import annotations

import pytest

from llama_sft.data.messages import Message
from llama_sft.data.templates import BUILTIN, SpecialText
from llama_sft.data.validate import load_conversations

TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


@pytest.mark.parametrize("blank", ["", "  \n", [{"type": "text", "text": ""}]])
def test_openai_record_with_empty_system_loads_as_no_system(write_json, blank):
    path = write_json("d.jsonl", [{"messages": [{"role": "system", "content": blank}, *TURNS]}])
    conversations, report = load_conversations(path)
    assert not report.errors, report.format()
    assert conversations[0].system is None
    assert [m.role for m in conversations[0].messages] == ["user", "assistant"]


def test_sharegpt_record_with_empty_system_loads_as_no_system(write_json):
    record = {"conversations": [{"from": "system", "value": ""}, {"from": "human", "value": "Hi"},
                                {"from": "gpt", "value": "Hello!"}]}  # fmt: skip
    conversations, report = load_conversations(write_json("d.json", [record]))
    assert not report.errors and conversations[0].system is None


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_template_renders_empty_system_as_absent(name, tiny_tokenizer):
    template = BUILTIN[name]
    special = SpecialText.from_tokenizer(tiny_tokenizer)
    absent = [Message("user", "Hi"), Message("assistant", "Hello!")]
    empty = [Message("system", ""), *absent]
    assert template.render(empty, special=special) == template.render(absent, special=special)
    # The saved chat_template (what HF-based servers run) agrees, rendered by transformers.
    dicts = [{"role": m.role, "content": m.content} for m in empty]
    served = tiny_tokenizer.apply_chat_template(dicts, chat_template=template.to_jinja(), tokenize=False)
    assert served == template.render(absent, special=special).text


def test_server_treats_empty_system_as_absent():
    from llama_sft.serve.schema import ChatMessage, conversation_messages

    messages = [ChatMessage(role="system", content=""), ChatMessage(role="user", content="Hi")]
    assert conversation_messages(messages) == [Message("user", "Hi")]
