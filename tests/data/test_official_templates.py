"""Tool calling and reasoning with the models' own chat templates (llama.cpp's copies of the official
ones), LLaMA-3's real vocabulary, and `apply_chat_template` as the reference.

For each template: our text == `tokenizer.apply_chat_template(messages, tools=...)`, the ids ==
`tokenizer(text)`, and the supervised tokens decode to exactly the assistant turns, written out by
hand below (quirks included: Llama-3.1 JSON-encodes a string result and string arguments, Hermes-3
writes an object result as a Python dict, firefunction always ends with an assistant header).
"""

from __future__ import annotations

import copy
import json

import pytest
from tool_cases import TOOLS, call, openai_record
from vocab import TEMPLATE_FILES, VocabUnavailable, fetch_official_templates, load_llama_tokenizer

from llama_sft.data.encode import IGNORE_INDEX, encode_conversation
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import JinjaTemplate, TemplateError
from llama_sft.data.tools import read_checked

LLAMA = [f for f in TEMPLATE_FILES if f.startswith("meta-llama")]
DEEPSEEK = "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"
HERMES = "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"
FIREFUNCTION = "fireworks-ai-llama-3-firefunction-v2.jinja"
# Template variables: a fixed date (3.2 reads the clock), firefunction's `functions` and `datetime`.
KWARGS = {
    "meta-llama-Llama-3.2-3B-Instruct.jinja": {"date_string": "26 Jul 2024"},
    FIREFUNCTION: {"functions": json.dumps([t["function"] for t in TOOLS]), "datetime": "2024-07-26"},
}


@pytest.fixture(scope="module")
def tok():
    from tool_cases import unavailable

    try:
        return load_llama_tokenizer("bpe")
    except VocabUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def r1_tok(tok):
    """DeepSeek-R1-Distill-Llama's tokenizer: LLaMA-3's vocabulary with its markers as special tokens
    (as plain text, `><` between two markers would merge into one token across a turn boundary)."""
    r1 = copy.deepcopy(tok)
    markers = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
    r1.add_special_tokens({"additional_special_tokens": markers})
    return r1


@pytest.fixture(scope="module")
def sources():
    from tool_cases import unavailable

    try:
        folder = fetch_official_templates()
    except VocabUnavailable as exc:
        unavailable(str(exc))
    return {name: (folder / name).read_text(encoding="utf-8") for name in TEMPLATE_FILES}


def two_calls_record() -> dict:
    """Two calls in one turn (object arguments), results as an object and as a string."""
    record = openai_record()
    record["messages"][1]["content"] = "Weather and time in Rome?"
    record["messages"][2:] = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                call("get_weather", {"city": "Rome"}, "c1"),
                call("get_time", {"city": "Rome"}, "c2"),
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": {"temp_c": 24, "sky": "clear"}},
        {"role": "tool", "tool_call_id": "c2", "content": "14:05"},
        {"role": "assistant", "content": "24 C and clear; it is 14:05."},
    ]
    return record


def object_result_record() -> dict:
    """One call with object arguments and an object result, no system prompt."""
    record = openai_record()
    del record["messages"][0]
    record["messages"][1]["tool_calls"] = [call("get_weather", {"city": "Paris"}, "call_1")]
    record["messages"][2]["content"] = {"temp_c": 21}
    return record


def check(tok, source, record, name, expected_replies, **extra):
    """Render with our template; compare to apply_chat_template, tokenizer ids and the golden replies."""
    messages, tools, _ = read_checked(copy.deepcopy(record))
    kwargs = {**KWARGS.get(name, {}), **extra}
    template = JinjaTemplate(name, source, template_kwargs=tuple(kwargs.items()))
    enc = encode_conversation(Conversation(messages, tools=tools), template, tok)
    reference = tok.apply_chat_template(
        record["messages"], tools=record.get("tools"), tokenize=False, chat_template=source, **kwargs
    )
    assert enc.text == reference
    assert enc.input_ids == tok(enc.text, add_special_tokens=False)["input_ids"]
    assert supervised_runs(tok, enc) == expected_replies
    return enc


def supervised_runs(tok, enc) -> list[str]:
    runs, current = [], []
    for label in [*enc.labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs


ANSWER = "It is 21 C and sunny in Paris."


@pytest.mark.parametrize("name", LLAMA)
def test_llama3_single_call_string_arguments_and_result(tok, sources, name):
    # Quirks of Meta's template: string arguments and a string result are JSON-encoded again.
    enc = check(
        tok,
        sources[name],
        openai_record(),
        name,
        [
            '{"name": "get_weather", "parameters": "{\\"city\\": \\"Paris\\"}"}<|eot_id|>',
            ANSWER + "<|eot_id|>",
        ],
    )
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"21 C, sunny"<|eot_id|>' in enc.text
    assert "Environment: ipython\n" in enc.text and "You are a helpful assistant.<|eot_id|>" in enc.text


@pytest.mark.parametrize("name", LLAMA)
def test_llama3_object_arguments_and_result(tok, sources, name):
    enc = check(
        tok,
        sources[name],
        object_result_record(),
        name,
        ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', ANSWER + "<|eot_id|>"],
    )
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n{"temp_c": 21}<|eot_id|>' in enc.text
    # The schemas are context: in the first user turn, never supervised.
    assert '"name": "get_time"' in enc.text


@pytest.mark.parametrize("name", LLAMA)
def test_llama3_refuses_two_calls_in_one_turn(tok, sources, name):
    messages, tools, _ = read_checked(two_calls_record())
    template = JinjaTemplate(name, sources[name], template_kwargs=tuple(KWARGS.get(name, {}).items()))
    with pytest.raises(TemplateError, match="single tool-calls"):
        encode_conversation(Conversation(messages, tools=tools), template, tok)


def test_hermes_single_and_multiple_calls(tok, sources):
    check(
        tok,
        sources[HERMES],
        openai_record(),
        HERMES,
        [
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n',
            ANSWER + "<|im_end|>\n",
        ],
    )
    enc = check(
        tok,
        sources[HERMES],
        two_calls_record(),
        HERMES,
        [
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n',
            "24 C and clear; it is 14:05.<|im_end|>\n",
        ],
    )
    # Hermes-3 groups consecutive results in one tool turn and writes an object result as a Python dict.
    assert "<|im_start|>tool\n<tool_response>\n{'temp_c': 24, 'sky': 'clear'}\n</tool_response>\n" in enc.text
    assert "<tool_response>\n14:05\n</tool_response>\n<|im_end|>" in enc.text


def test_firefunction_calls_and_trailing_header(tok, sources):
    check(
        tok,
        sources[FIREFUNCTION],
        openai_record(),
        FIREFUNCTION,
        [
            ' functools[{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]<|eot_id|>',
            ANSWER + "<|eot_id|>",
        ],
    )
    enc = check(
        tok,
        sources[FIREFUNCTION],
        two_calls_record(),
        FIREFUNCTION,
        [
            ' functools[{"name": "get_weather", "arguments": {"city": "Rome"}}, '
            '{"name": "get_time", "arguments": {"city": "Rome"}}]<|eot_id|>',
            "24 C and clear; it is 14:05.<|eot_id|>",
        ],
    )
    # The header the template always appends is context, not part of the last reply.
    assert enc.text.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def reasoning_record() -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Think first."},
            {"role": "user", "content": "What is 7 * 6?"},
            {"role": "assistant", "content": "<think>\n7 * 6 = 42.\n</think>\n\n42"},
            {"role": "user", "content": "And 7 * 7?"},
            {"role": "assistant", "content": "<think>\n7 * 7 = 49.\n</think>\n\n49"},
        ]
    }


def test_deepseek_r1_drops_earlier_traces_and_trains_the_final_one(r1_tok, sources):
    tok = r1_tok
    source = sources[DEEPSEEK]
    record = reasoning_record()
    conv = Conversation([Message(m["role"], m["content"]) for m in record["messages"]])
    template = JinjaTemplate(DEEPSEEK, source)
    enc = encode_conversation(conv, template, tok)
    # Earlier turns exactly as the template renders them (trace dropped); the final turn as the model
    # generates it: the template's generation prompt (which opens <think>), then trace, answer, EOS.
    prompt = tok.apply_chat_template(
        record["messages"][:-1], tokenize=False, add_generation_prompt=True, chat_template=source
    )
    assert prompt.endswith("<｜Assistant｜><think>\n") and "7 * 6 = 42." not in prompt
    assert enc.text == prompt + "7 * 7 = 49.\n</think>\n\n49<｜end▁of▁sentence｜>"
    assert enc.input_ids == tok(enc.text, add_special_tokens=False)["input_ids"]
    assert supervised_runs(tok, enc) == [
        "\n\n42<｜end▁of▁sentence｜>",  # the template keeps the blank line after </think>
        "7 * 7 = 49.\n</think>\n\n49<｜end▁of▁sentence｜>",
    ]
    masked = encode_conversation(conv, template, tok, train_on_reasoning=False)
    assert masked.input_ids == enc.input_ids
    assert supervised_runs(tok, masked) == [
        "\n\n42<｜end▁of▁sentence｜>",  # the template keeps the blank line after </think>
        "</think>\n\n49<｜end▁of▁sentence｜>",  # ".\n" is one token and starts inside the trace
    ]


def test_deepseek_r1_plain_chat_matches_apply_chat_template(r1_tok, sources):
    tok = r1_tok
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
    }
    check(tok, sources[DEEPSEEK], record, DEEPSEEK, ["Hello!<｜end▁of▁sentence｜>"])


def test_deepseek_r1_tool_calls_are_refused_not_dropped(tok, sources):
    # Its template renders calls only for content None, which apply_chat_template cannot pass: the
    # call would vanish from the text and the model would learn to answer without calling.
    messages, tools, _ = read_checked(openai_record())
    with pytest.raises(TemplateError, match="does not render the tool call"):
        encode_conversation(
            Conversation(messages, tools=tools), JinjaTemplate(DEEPSEEK, sources[DEEPSEEK]), tok
        )


def test_reasoning_content_field_in_an_official_template(tok, sources):
    # Llama-3.1's template ignores reasoning_content: the final trace is written before the answer.
    record = {
        "messages": [
            {"role": "user", "content": "What is 7 * 6?"},
            {"role": "assistant", "content": "42", "reasoning_content": "7 * 6 = 42."},
        ]
    }
    name = LLAMA[0]
    messages, tools, _ = read_checked(record)
    enc = encode_conversation(Conversation(messages), JinjaTemplate(name, sources[name]), tok)
    prompt = tok.apply_chat_template(
        record["messages"][:1], tokenize=False, add_generation_prompt=True, chat_template=sources[name]
    )
    assert enc.text == prompt + "<think>\n7 * 6 = 42.\n</think>\n\n42<|eot_id|>"
    assert supervised_runs(tok, enc) == ["<think>\n7 * 6 = 42.\n</think>\n\n42<|eot_id|>"]
