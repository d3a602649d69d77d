"""Tool-calling records shared by the tests: OpenAI and ShareGPT shapes, and one bad record per reason."""

from __future__ import annotations

import json

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
TOOLS = [WEATHER, TIME]


def call(name: str, arguments, call_id: str | None = None) -> dict:
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"id": call_id, **out} if call_id else out


def openai_record(**extra) -> dict:
    """One call with string arguments, a string result, then the answer."""
    return {
        "id": "weather-1",
        "tools": TOOLS,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [call("get_weather", json.dumps({"city": "Paris"}), "call_1")],
            },
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "21 C, sunny"},
            {"role": "assistant", "content": "It is 21 C and sunny in Paris."},
        ],
        **extra,
    }


def sharegpt_record() -> dict:
    """LLaMA-Factory's shape: function_call / observation turns, tools as a JSON string."""
    return {
        "id": "weather-sg",
        "system": "You are a helpful assistant.",
        "tools": json.dumps([WEATHER["function"], TIME["function"]]),
        "conversations": [
            {"from": "human", "value": "What is the weather in Paris?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}),
            },
            {"from": "observation", "value": "21 C, sunny"},
            {"from": "gpt", "value": "It is 21 C and sunny in Paris."},
        ],
    }


def _bad(edit) -> dict:
    record = openai_record()
    edit(record)
    return record


TOOL_RECORD_CASES = {
    "bad_tools": (_bad(lambda r: r.update(tools=[{"description": "no name"}])), "error"),
    "bad_tool_call": (
        _bad(lambda r: r["messages"][2].update(tool_calls=[{"function": {"arguments": "{}"}}])),
        "error",
    ),
    "bad_tool_arguments": (
        _bad(lambda r: r["messages"][2]["tool_calls"][0]["function"].update(arguments='{"city": Paris}')),
        "error",
    ),
    "unknown_tool": (
        _bad(lambda r: r["messages"][2]["tool_calls"][0]["function"].update(name="get_stock_price")),
        "error",
    ),
    "orphan_tool_result": (
        _bad(lambda r: r["messages"].insert(2, {"role": "tool", "content": "21 C"})),
        "error",
    ),
}


def unavailable(reason: str):
    """Skip offline, fail under CI=true (tests/ci.py)."""
    from ci import unavailable as ci_unavailable

    ci_unavailable(reason)
