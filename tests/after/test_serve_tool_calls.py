"""`llama-sft serve` with tools, end to end: a tiny model fine-tuned (through `llama-sft train`) until it
calls a tool, served by the real CLI on loopback, called with the official `openai` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from ci import require_module
from test_serve_cmd import KEY, free_port, http
from threads import single_thread

from llama_sft.tool_demo import TOOLS

PROMPT = [{"role": "user", "content": "What is the weather in Velmora?"}]
CALL = {"city": "Velmora"}


def record(i: int) -> dict:
    return {
        "id": f"r{i}",
        "tools": TOOLS,
        "messages": [
            *PROMPT,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c0", "type": "function", "function": {"name": "get_weather", "arguments": CALL}}
                ],
            },
            {"role": "tool", "tool_call_id": "c0", "content": '{"temp_c": 21}'},
            {"role": "assistant", "content": "It is 21 C in Velmora."},
        ],
    }


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    """A tiny random LLaMA trained on one tool conversation until it writes the call (memorized)."""
    from llama_sft.cli.main import main
    from llama_sft.data.templates import BUILTIN
    from llama_sft.data.tools import read_tool_record
    from llama_sft.tiny import build_tokenizer, save_tiny_model

    root = tmp_path_factory.mktemp("tool-run")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(record(i)) + "\n" for i in range(8)), encoding="utf-8")
    messages, tools = read_tool_record(record(0), "openai")
    text = BUILTIN["chatml"].render(messages, tools=tools).text
    # Newlines as spaces: merges across them would straddle the start of a reply (see tool_demo.corpus).
    tokenizer = build_tokenizer([text.replace("\n", " ")], vocab_size=300)
    save_tiny_model(root / "base", tokenizer, hidden_size=64, layers=2)
    flags = [
        *("train", "--model_name_or_path", str(root / "base"), "--data_path", str(data)),
        *("--output_dir", str(root / "model"), "--method", "full", "--conv_template", "chatml"),
        *("--max_steps", "80", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2"),
        *("--logging_steps", "10", "--save_strategy", "no", "--report_to", "none", "--seed", "0"),
        *("--data_cache_dir", str(root / "cache"), "--model_max_length", "512"),
    ]
    with single_thread():
        assert main(flags) == 0
    return root / "model"


@pytest.fixture(scope="module")
def client(tool_run):
    openai = require_module("openai")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LLAMA_SFT_API_KEY": KEY}
    cmd = [sys.executable, "-m", "llama_sft.cli.main", "serve", str(tool_run), "--port", str(port)]
    cmd += ["--model_name", "agent", "--log_level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a loaded 2-core CI runner imports slowly
    try:
        while True:  # poll for readiness, bounded
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if http(f"{base}/health", key=None)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server not ready after 300 s")
            time.sleep(0.2)
        yield openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
def test_the_fine_tuned_model_calls_the_tool(client):
    response = client.chat.completions.create(
        model="agent", messages=PROMPT, tools=TOOLS, max_tokens=60, temperature=0
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == CALL and call.id.startswith("call_")


@pytest.mark.slow
def test_streamed_tool_call_and_the_answer_after_the_result(client):
    chunks = list(
        client.chat.completions.create(
            model="agent", messages=PROMPT, tools=TOOLS, max_tokens=60, temperature=0, stream=True
        )
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["get_weather"] and deltas[0].index == 0
    assert json.loads(deltas[0].function.arguments) == CALL
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Send the result back as OpenAI clients do: the call turn, then a tool message answering it.
    history = [
        *PROMPT,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [d.model_dump(exclude={"index"}) for d in deltas],
        },
        {"role": "tool", "tool_call_id": deltas[0].id, "content": '{"temp_c": 21}'},
    ]
    answer = client.chat.completions.create(
        model="agent", messages=history, tools=TOOLS, max_tokens=30, temperature=0
    )
    assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls
    assert answer.choices[0].message.content == "It is 21 C in Velmora."
