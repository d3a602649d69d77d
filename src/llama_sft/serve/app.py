"""An OpenAI-compatible server for one model: `/v1/models` and `/v1/chat/completions`.

Prompts are built by `generation.build_prompt` with the run's template, so the server sees the
training rendering. One model, one generation at a time: generation runs on a single worker
thread (the event loop stays free for other requests and disconnects), and a streamed reply stops
at the next token when its client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..data.messages import Message
from ..data.templates import Template
from ..data.tool_templates import parse_calls, template_style
from ..generation import PromptTooLong, ReplyStream, SamplingParams, build_prompt
from .schema import (
    APIError,
    ChatCompletionRequest,
    conversation_messages,
    tool_conversation,
    validation_error,
)

log = logging.getLogger("llama_sft")
DEFAULT_MAX_TOKENS = 512


def prompt_for(template: Template, tokenizer, messages: list[dict]) -> str:
    """The prompt text the server builds for OpenAI-style `messages` (what the parity test checks)."""
    from .schema import ChatMessage

    return build_prompt(template, tokenizer, conversation_messages([ChatMessage(**m) for m in messages]))


class Worker:
    """Runs generations one at a time on a dedicated thread."""

    def __init__(self, model, tokenizer, template: Template):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-sft-generate")

    def reply_stream(self, messages: list[Message], params: SamplingParams, tools: tuple = ()) -> ReplyStream:
        try:
            return ReplyStream(self.model, self.tokenizer, self.template, messages, params, tools)
        except PromptTooLong as exc:
            raise APIError(
                400,
                f"This model's maximum context length is exceeded: {exc}. Shorten the messages.",
                param="messages",
                code="context_length_exceeded",
            ) from None

    async def complete(self, stream: ReplyStream) -> str:
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: "".join(stream))

    async def pieces(self, stream: ReplyStream) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def work() -> None:
            try:
                for piece in stream:
                    if cancelled.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as exc:  # surfaces in the stream as an error event
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        loop.run_in_executor(self.executor, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            cancelled.set()  # client gone or stream done: the worker stops at its next token


def _error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def create_app(model, tokenizer, template: Template, model_name: str, api_key: str | None = None):
    worker = Worker(model, tokenizer, template)
    created = int(time.time())
    app = FastAPI(title="llama-sft", description=f"OpenAI-compatible chat completions for {model_name}")
    app.state.worker = worker

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error_response(validation_error(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(
            exc.status_code, "invalid_request_error"
        )
        return _error_response(
            APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", kind)
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("request failed")
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(
                401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"
            )

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "llama-sft"}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorize)])
    async def get_model(name: str) -> dict:
        if name != model_name:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest):
        if body.model != model_name:
            raise APIError(
                404,
                f"The model '{body.model}' does not exist; this server serves '{model_name}'",
                param="model",
                code="model_not_found",
            )
        problem = body.unsupported()
        if problem:
            raise problem
        params = SamplingParams(
            max_new_tokens=body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's default
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=tuple(body.stop or ()),
        )
        with_tools = bool(body.tools) or any(
            m.role in ("tool", "ipython") or m.tool_calls for m in body.messages
        )
        if with_tools:
            messages, tools = tool_conversation(body.messages, body.tools)
        else:
            messages, tools = conversation_messages(body.messages), ()
        stream = worker.reply_stream(messages, params, tools)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if with_tools and body.tool_choice != "none":
            style = template_style(template)
            if body.stream:
                return StreamingResponse(
                    _sse_tools(worker, stream, style, completion_id, now, model_name),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            message, finish = reply_message(await worker.complete(stream), style, stream.finish_reason)
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": now,
                    "model": model_name,
                    "system_fingerprint": None,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": _usage(stream),
                }
            )
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(worker, stream, completion_id, now, model_name, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        text = await worker.complete(stream)
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": now,
                "model": model_name,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": stream.finish_reason,
                    }
                ],
                "usage": _usage(stream),
            }
        )

    return app


def reply_message(text: str, style: str | None, finish_reason: str | None) -> tuple[dict, str | None]:
    """OpenAI's assistant message for a reply: `tool_calls` (finish_reason "tool_calls") when the
    model wrote calls in its template's format, else plain content."""
    content, calls = parse_calls(text, style) if style else (text, [])
    if not calls:
        return {"role": "assistant", "content": text}, finish_reason
    tool_calls = [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.parsed(), ensure_ascii=False)},
        }
        for c in calls
    ]
    return {"role": "assistant", "content": content or None, "tool_calls": tool_calls}, "tool_calls"


async def _sse_tools(
    worker: Worker, stream: ReplyStream, style: str | None, completion_id: str, created: int, model_name: str
) -> AsyncIterator[str]:
    """Streaming with tools: a call is only known to be one when it is complete, so the reply is
    generated first and sent as OpenAI's deltas (content, or tool_calls with index), then [DONE]."""

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        text = await worker.complete(stream)
    except Exception as exc:
        log.exception("generation failed mid-stream")
        yield f"data: {json.dumps(APIError(500, f'generation failed: {exc}', 'server_error').body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    message, finish = reply_message(text, style, stream.finish_reason)
    if message.get("content"):
        yield chunk({"content": message["content"]})
    for index, call in enumerate(message.get("tool_calls", [])):
        yield chunk({"tool_calls": [{"index": index, **call}]})
    yield chunk({}, finish)
    yield "data: [DONE]\n\n"


def _usage(stream: ReplyStream) -> dict:
    return {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": stream.completion_tokens,
        "total_tokens": stream.prompt_tokens + stream.completion_tokens,
    }


async def _sse(
    worker: Worker,
    stream: ReplyStream,
    completion_id: str,
    created: int,
    model_name: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI's `chat.completion.chunk` events, then `data: [DONE]`."""

    def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for piece in worker.pieces(stream):
            yield chunk({"content": piece})
    except Exception as exc:  # the status line is sent already: report in the stream, as OpenAI does
        log.exception("generation failed mid-stream")
        yield f"data: {json.dumps(APIError(500, f'generation failed: {exc}', 'server_error').body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    yield chunk({}, stream.finish_reason)
    if include_usage:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": None,
            "choices": [],
            "usage": _usage(stream),
        }
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
