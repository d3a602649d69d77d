"""The server's tool path without a model: requests with tools read like training records, and a
reply in the template's call format becomes OpenAI `tool_calls` (finish_reason "tool_calls")."""

from __future__ import annotations

import json

import pytest
from tool_cases import TOOLS

from llama_sft.data.templates import BUILTIN
from llama_sft.serve.app import reply_message
from llama_sft.serve.schema import APIError, ChatCompletionRequest, tool_conversation


def request(messages, **extra) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=messages, tools=TOOLS, **extra)


def test_tool_request_renders_with_the_runs_template():
    body = request(
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
        ]
    )
    messages, tools = tool_conversation(body.messages, body.tools)
    text = BUILTIN["chatml"].render(messages, add_generation_prompt=True, tools=tools).text
    assert (
        "<tools>" in text and '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in text
    )
    assert text.endswith("<tool_response>\n21 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_tool_request_errors_name_the_reason():
    with pytest.raises(APIError) as exc:
        tool_conversation(request([{"role": "tool", "content": "21 C"}]).messages, TOOLS)
    assert exc.value.code == "orphan_tool_result" and exc.value.status == 422


@pytest.mark.parametrize(
    ("style", "reply"),
    [
        ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'),
        ("llama3", '{"name": "get_weather", "parameters": {"city": "Oslo"}}'),
        ("functools", 'functools[{"name": "get_weather", "arguments": {"city": "Oslo"}}]'),
    ],
)
def test_a_call_in_the_templates_format_becomes_tool_calls(style, reply):
    message, finish = reply_message(reply, style, "stop")
    assert finish == "tool_calls" and message["content"] is None
    [call] = message["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {
        "city": "Oslo"
    }


def test_plain_text_and_broken_calls_stay_text():
    assert reply_message("It is sunny.", "hermes", "stop") == (
        {"role": "assistant", "content": "It is sunny."},
        "stop",
    )
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": '
    assert reply_message(broken, "hermes", "length")[1] == "length"
