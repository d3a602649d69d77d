"""Built-in templates with tools: the Python rendering equals the saved chat_template's, the masks
cover exactly the assistant turns (call text and end of turn), and records in every tool shape read
to the same messages."""

from __future__ import annotations

import copy

import pytest
from tool_cases import openai_record, sharegpt_record
from vocab import VocabUnavailable, load_llama_tokenizer

from llama_sft.data.encode import IGNORE_INDEX, encode_conversation
from llama_sft.data.messages import Conversation
from llama_sft.data.tool_templates import parse_calls
from llama_sft.data.tools import read_checked, to_openai_record, to_sharegpt_record

RECORD = openai_record()
RECORD["messages"][4]["content"] = "<think>\nThe tool said 21 C.\n</think>\n\nIt is 21 C and sunny in Paris."


@pytest.fixture(scope="module")
def tok():
    from tool_cases import unavailable

    try:
        return load_llama_tokenizer("bpe")
    except VocabUnavailable as exc:
        unavailable(str(exc))


def runs(tok, labels) -> list[str]:
    out, cur = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            cur.append(label)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out


CALL = {
    "llama-3": '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
    "chatml": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
}
END = {"llama-3": "<|eot_id|>", "chatml": "<|im_end|>"}


@pytest.mark.parametrize("name", ["llama-3", "chatml"])
def test_builtin_tool_rendering_matches_its_chat_template_and_masks_the_turns(tok, name):
    from llama_sft.data.templates import BUILTIN

    template = BUILTIN[name]
    if name == "chatml":  # a ChatML model has its markers as special tokens (LLaMA-3's vocab has not)
        tok = copy.deepcopy(tok)
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    messages, tools, _ = read_checked(copy.deepcopy(RECORD))
    enc = encode_conversation(Conversation(messages, tools=tools), template, tok)
    for n_msgs, gen in ((len(RECORD["messages"]), False), (2, True), (4, True)):
        ours = template.render(messages[:n_msgs], gen, tools=tools, special=_special(tok)).text
        theirs = tok.apply_chat_template(
            RECORD["messages"][:n_msgs],
            tools=RECORD["tools"],
            tokenize=False,
            add_generation_prompt=gen,
            chat_template=template.to_jinja(),
        )
        assert ours == theirs
    assert enc.input_ids == tok(enc.text, add_special_tokens=False)["input_ids"]
    # String arguments are written as given; the final turn keeps its trace.
    call = CALL[name]
    answer = "<think>\nThe tool said 21 C.\n</think>\n\nIt is 21 C and sunny in Paris." + END[name]
    assert runs(tok, enc.labels) == [call, answer]
    masked = encode_conversation(Conversation(messages, tools=tools), template, tok, train_on_reasoning=False)
    assert runs(tok, masked.labels)[0] == call and "The tool said" not in "".join(runs(tok, masked.labels))
    # What a server reads back from the generated call is the call.
    text, calls = parse_calls(CALL[name].removesuffix(END[name]), "llama3" if name == "llama-3" else "hermes")
    assert text == "" and [(c.name, c.parsed()) for c in calls] == [("get_weather", {"city": "Paris"})]


def _special(tok):
    from llama_sft.data.templates import SpecialText

    return SpecialText.from_tokenizer(tok)


def test_sharegpt_and_openai_tool_records_read_the_same_and_convert_both_ways():
    sg, _, _ = read_checked(sharegpt_record())
    oa, tools, _ = read_checked(openai_record())
    strip = lambda ms: [(m.role, m.content, [(c.name, c.parsed()) for c in m.tool_calls]) for m in ms]  # noqa: E731
    assert strip(sg) == strip(oa)
    back, tools2, _ = read_checked(to_sharegpt_record(oa, tools, "x"))
    assert strip(back) == strip(oa) and [t["function"]["name"] for t in tools2] == ["get_weather", "get_time"]
    again, _, _ = read_checked(to_openai_record(sg, tools, "x"))
    assert strip(again) == strip(oa)


def test_ipython_role_is_a_tool_result():
    record = openai_record()
    record["messages"][3]["role"] = "ipython"
    messages, _, _ = read_checked(record)
    assert messages[3].role == "tool" and messages[3].tool_call_id == "call_1"
