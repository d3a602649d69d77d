"""Training rendering == serving rendering, text and ids, for every template and tokenizer.

Serving means Hugging Face's `apply_chat_template` with the Jinja our template exports (saved with
every checkpoint), so any HF-based server builds exactly the prompt the model was trained on.
"""

from __future__ import annotations

import pytest
from vocab import word_tokenizer

from llama_sft.data.encode import IGNORE_INDEX, encode_conversation
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import (
    BUILTIN,
    FormatTemplate,
    JinjaTemplate,
    SpecialText,
    TemplateError,
    get_template,
)

X = IGNORE_INDEX
CONVERSATIONS = {
    "single": [("user", "What is 2 + 3?"), ("assistant", "5")],
    "multi": [("user", "Hi!"), ("assistant", "Hello."), ("user", "2+2?"), ("assistant", "4")],
    "system": [
        ("system", "Be brief."),
        ("user", "Hi!"),
        ("assistant", "Hello."),
        ("user", "Bye"),
        ("assistant", "Bye."),
    ],
    "unicode": [("user", "Héllo wörld, 你好 🙂\ttab\nnewline"), ("assistant", "Ça va 👍")],
    "spaces": [("user", "  leading and trailing  "), ("assistant", " 12 inches is 1 foot. ")],
    "braces": [("user", "{x} {{ y }} {% if z %}{content}"), ("assistant", "{eos} and {bos} stay text")],
}
# 0 <unk> 1 <s> 2 </s> 3 USER: 4 ASSISTANT: 5 SYS 6 Q1 7 A1 8 Q2 9 A2 10 [SYS] 11 Q: 12 A:
# 13 <|im_start|> 14 <|im_end|> 15 system 16 user 17 assistant
WORDS = ["USER:", "ASSISTANT:", "SYS", "Q1", "A1", "Q2", "A2", "[SYS]", "Q:", "A:", "<|im_start|>", "<|im_end|>",
         "system", "user", "assistant"]  # fmt: skip

YAML_TEMPLATE = """\
name: qa
description: question / answer lines
prefix: "{bos}"
default_system: You answer questions.
system_format: "[SYS] {system}\\n"
user_format: "Q: {content}\\n"
generation_prompt: "A:"
assistant_format: " {content}{eos}"
assistant_suffix: "\\n"
stop_strings: ["Q:"]
"""
JINJA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def msgs(name: str) -> list[Message]:
    return [Message(role, content) for role, content in CONVERSATIONS[name]]


def as_dicts(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


@pytest.fixture(scope="module")
def words():
    return word_tokenizer(WORDS)


@pytest.fixture(params=["bpe", "words"])
def tokenizer(request, tiny_tokenizer, words):
    return tiny_tokenizer if request.param == "bpe" else words


@pytest.fixture(scope="module")
def custom_templates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("templates")
    (folder / "qa.yaml").write_text(YAML_TEMPLATE, encoding="utf-8")
    (folder / "chatml_bos.jinja").write_text(JINJA_TEMPLATE, encoding="utf-8")
    return {
        "yaml": get_template(str(folder / "qa.yaml")),
        "jinja": get_template(str(folder / "chatml_bos.jinja")),
    }


def all_templates(custom_templates):
    return {**BUILTIN, **custom_templates}


def check_parity(template, tokenizer, messages: list[Message]) -> None:
    special = SpecialText.from_tokenizer(tokenizer)
    jinja = template.to_jinja()
    enc = encode_conversation(Conversation(messages), template, tokenizer)
    # ids are exactly the tokenizer's ids for the rendered text
    assert enc.input_ids == tokenizer(enc.text, add_special_tokens=False).input_ids
    # training text == HF chat template text, and the same ids when HF tokenizes it
    served = tokenizer.apply_chat_template(as_dicts(messages), chat_template=jinja, tokenize=False)
    assert served == enc.text
    served_ids = tokenizer.apply_chat_template(as_dicts(messages), chat_template=jinja, tokenize=True)[
        "input_ids"
    ]
    assert served_ids == enc.input_ids
    # the prompt a server builds for the last reply is the training text up to that reply's span
    prompt = tokenizer.apply_chat_template(
        as_dicts(messages[:-1]), chat_template=jinja, add_generation_prompt=True, tokenize=False
    )
    rendered = template.render(messages[:-1], add_generation_prompt=True, special=special)
    assert prompt == rendered.text
    assert enc.text[: template.render(messages, special=special).spans[-1][0]] == prompt


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_parity(name, conversation, tokenizer):
    check_parity(BUILTIN[name], tokenizer, msgs(conversation))


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("kind", ["yaml", "jinja"])
def test_custom_template_parity(kind, conversation, tokenizer, custom_templates):
    check_parity(custom_templates[kind], tokenizer, msgs(conversation))


def test_yaml_template_renders_and_masks(custom_templates, words):
    template = custom_templates["yaml"]
    assert (
        isinstance(template, FormatTemplate) and template.name == "qa" and template.stop() == ("</s>", "Q:")
    )
    conv = [
        Message("user", "Q1"),
        Message("assistant", "A1"),
        Message("user", "Q2"),
        Message("assistant", "A2"),
    ]
    rendered = template.render(conv)
    assert rendered.text == "<s>[SYS] You answer questions.\nQ: Q1\nA: A1</s>\nQ: Q2\nA: A2</s>\n"
    assert [rendered.text[s:e] for s, e in rendered.spans] == [" A1</s>", " A2</s>"]
    enc = encode_conversation(Conversation(conv), template, words)
    # <s> [SYS] You answer questions. Q: Q1 A: A1 </s> Q: Q2 A: A2 </s>
    assert enc.input_ids == [1, 10, 0, 0, 0, 11, 6, 12, 7, 2, 11, 8, 12, 9, 2]
    assert enc.labels == [X, X, X, X, X, X, X, X, 7, 2, X, X, X, 9, 2]
    last = encode_conversation(Conversation(conv), template, words, strategy="train_on_last")
    assert last.labels == [X, X, X, X, X, X, X, X, X, X, X, X, X, 9, 2]


def test_jinja_template_renders_and_masks(custom_templates, words):
    template = custom_templates["jinja"]
    assert isinstance(template, JinjaTemplate) and template.name == "chatml_bos"
    conv = [
        Message("system", "SYS"),
        Message("user", "Q1"),
        Message("assistant", "A1"),
        Message("user", "Q2"),
        Message("assistant", "A2"),
    ]
    rendered = template.render(conv)
    assert rendered.text == (
        "<s><|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"
        "A1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n"
    )
    # From prefix differences the span is everything the turn adds after the generation prompt.
    assert [rendered.text[s:e] for s, e in rendered.spans] == ["A1<|im_end|>\n", "A2<|im_end|>\n"]
    enc = encode_conversation(Conversation(conv), template, words)
    # <s> (<|im_start|> role content <|im_end|>) x 5; ids: 13 <|im_start|> 14 <|im_end|> 15 system 16 user 17 assistant
    assert enc.input_ids == [1, 13, 15, 5, 14, 13, 16, 6, 14, 13, 17, 7, 14, 13, 16, 8, 14, 13, 17, 9, 14]
    assert enc.labels == [X, X, X, X, X, X, X, X, X, X, X, 7, 14, X, X, X, X, X, X, 9, 14]


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_tokenizer_chat_template_gives_the_same_masks(name, words):
    """`--conv_template tokenizer` on a checkpoint saved by us: same text, same spans, except that
    text a template puts after each reply (ChatML's, Alpaca's newlines) becomes part of the span."""
    template = BUILTIN[name]
    jinja = get_template("tokenizer", type("Tok", (), {"chat_template": template.to_jinja()})())
    assert isinstance(jinja, JinjaTemplate)
    special = SpecialText.from_tokenizer(words)
    for conversation in CONVERSATIONS:
        ours, theirs = (
            template.render(msgs(conversation), special=special),
            jinja.render(msgs(conversation), special=special),
        )
        assert theirs.text == ours.text
        suffix = template.assistant_suffix
        assert [theirs.text[s:e] for s, e in theirs.spans] == [ours.text[s:e] + suffix for s, e in ours.spans]


def test_tokenizer_template_needs_a_chat_template(words):
    with pytest.raises(TemplateError, match="chat_template"):
        get_template("tokenizer", words)


def test_non_prefix_stable_jinja_is_rejected(tmp_path):
    path = tmp_path / "counting.jinja"
    path.write_text("{{ 'Turns: ' ~ (messages | length) ~ '\\n' }}" + JINJA_TEMPLATE, encoding="utf-8")
    with pytest.raises(TemplateError, match="not prefix-stable"):
        get_template(str(path))


def test_jinja_without_separate_replies_is_rejected(tmp_path):
    path = tmp_path / "users_only.jinja"
    path.write_text(
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(TemplateError, match="separate spans"):
        get_template(str(path))


def test_yaml_unknown_key_names_the_closest(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(YAML_TEMPLATE.replace("assistant_format", "asistant_format"), encoding="utf-8")
    with pytest.raises(
        TemplateError, match=r"unknown template key 'asistant_format' \(did you mean 'assistant_format'\?\)"
    ):
        get_template(str(path))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (('user_format: "Q: {content}\\n"', 'user_format: "Q:\\n"'), "must contain {content}"),
        (('prefix: "{bos}"', "prefix: 3"), "'prefix' must be a string"),
    ],
)
def test_yaml_bad_values(tmp_path, change, match):
    path = tmp_path / "bad.yaml"
    path.write_text(YAML_TEMPLATE.replace(*change), encoding="utf-8")
    with pytest.raises(TemplateError, match=match) as info:
        get_template(str(path))
    assert str(path) in str(info.value)


def test_yaml_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="must be a mapping"):
        get_template(str(path))


def test_unknown_template_name_and_missing_file(tmp_path):
    with pytest.raises(TemplateError, match="Did you mean 'vicuna_v1.1'"):
        get_template("vicuna")
    with pytest.raises(TemplateError, match="not found"):
        get_template(str(tmp_path / "missing.yaml"))
