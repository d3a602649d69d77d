"""`llama-sft serve` end to end: the real CLI in a subprocess on a loopback port, called with the
official `openai` client (non-streaming, streaming) and raw HTTP for malformed requests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from ci import require_module

from llama_sft.serve.schema import APIError, ChatMessage, conversation_messages, validation_error

KEY = "test-key"
USER = [{"role": "user", "content": "Convert 47 km to metres."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        url, data=body, headers=headers, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def server(full_run):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LLAMA_SFT_API_KEY": KEY}
    cmd = [
        sys.executable,
        "-m",
        "llama_sft.cli.main",
        "serve",
        str(full_run),
        "--port",
        str(port),
        "--model_name",
        "demo",
        "--log_level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
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
                pytest.fail("server not ready after 120 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    openai = require_module("openai")
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.mark.slow
def test_models_and_completion(client, full_run):
    from llama_sft.data.messages import Message
    from llama_sft.generation import generate_reply, load_for_inference

    assert [m.id for m in client.models.list().data] == ["demo"]
    response = client.chat.completions.create(model="demo", messages=USER, max_tokens=6, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 6
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    model, tokenizer, template = load_for_inference(full_run)
    expected = generate_reply(
        model, tokenizer, template, [Message("user", USER[0]["content"])], max_new_tokens=6
    )
    assert choice.message.content == expected  # the server's prompt and decoding are chat's


@pytest.mark.slow
def test_streaming_matches_non_streaming(client):
    kwargs = dict(model="demo", messages=USER, max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


@pytest.mark.slow
def test_sse_wire_format(server):
    body = json.dumps(
        {"model": "demo", "messages": USER, "max_tokens": 3, "temperature": 0, "stream": True}
    ).encode()
    status, text = http(f"{server}/v1/chat/completions", body)
    assert status == 200
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


@pytest.mark.slow
def test_bad_requests_get_openai_errors(client, server):
    import openai

    cases = [
        (dict(model="demo", messages=[]), openai.BadRequestError, "messages"),
        (  # a tool result is a valid role now, but not without the call it answers
            dict(model="demo", messages=[{"role": "tool", "content": "x"}]),
            openai.UnprocessableEntityError,
            "messages",
        ),
        (dict(model="demo", messages=USER, temperature=3), openai.BadRequestError, "temperature"),
        (dict(model="other", messages=USER), openai.NotFoundError, "model"),
        (
            dict(model="demo", messages=[{"role": "assistant", "content": "x"}]),
            openai.UnprocessableEntityError,
            "messages[0].role",
        ),
        (dict(model="demo", messages=USER, n=2), openai.UnprocessableEntityError, "n"),
        (
            dict(model="demo", messages=[{"role": "user", "content": "word " * 400}]),
            openai.BadRequestError,
            "messages",
        ),
    ]
    for kwargs, error, param in cases:
        with pytest.raises(error) as caught:
            client.chat.completions.create(**kwargs)
        assert caught.value.body["param"] == param, kwargs
        assert set(caught.value.body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    for body, code in [
        (b"{not json", "invalid_json"),
        (b'{"model": "demo", "messages": [], "foo": 1}', None),
    ]:
        status, text = http(f"{server}/v1/chat/completions", body)
        error = json.loads(text)["error"]
        assert status == 400 and error["type"] == "invalid_request_error"
        assert code is None or error["code"] == code
    assert http(f"{server}/v1/chat/completions", b"{}", key=None)[0] == 401
    status, text = http(f"{server}/v2/nothing")
    assert status == 404 and json.loads(text)["error"]["type"] == "not_found_error"


def test_conversation_rules():
    def msgs(*roles):
        return [ChatMessage(role=r, content="x") for r in roles]

    assert [m.role for m in conversation_messages(msgs("developer", "user", "assistant", "user"))] == [
        "system",
        "user",
        "assistant",
        "user",
    ]
    for roles in [("user", "user"), ("user", "system"), ("user", "assistant"), ("system",)]:
        with pytest.raises(APIError) as caught:
            conversation_messages(msgs(*roles))
        assert caught.value.status == 422 and caught.value.param.startswith("messages")
    parts = ChatMessage(role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    assert parts.text() == "ab"


def test_validation_errors_name_the_parameter():
    error = validation_error(
        [{"loc": ("body", "messages", 2, "content"), "msg": "bad", "type": "string_type"}]
    )
    assert error.status == 400 and error.param == "messages[2].content"
    assert (
        validation_error([{"loc": ("body", "top_k"), "msg": "x", "type": "extra_forbidden"}]).code
        == "unknown_parameter"
    )
