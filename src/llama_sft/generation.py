"""Prompting and greedy/sampled generation with a run's template: one place for chat, eval, serve, demo.

Every surface builds its prompt with `build_prompt` (the training rendering plus the generation
prompt) and decodes with `ReplyStream`, so a reply streamed by `serve` equals the one `chat`
prints and `eval` scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.messages import Message
from .data.templates import SpecialText, Template, TemplateError
from .rundir import stop_token_ids


class PromptTooLong(ValueError):
    """The prompt leaves no room for a reply within the model's context."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # extra stop strings, on top of EOS and the template's


def build_prompt(template: Template, tokenizer, messages: list[Message], tools: tuple = ()) -> str:
    """The exact training rendering of `messages` (and `tools`), ending with the generation prompt."""
    return template.render(
        messages,
        add_generation_prompt=True,
        special=SpecialText.from_tokenizer(tokenizer),
        tools=tuple(tools),
    ).text


def prompt_ids(
    template: Template, tokenizer, messages: list[Message], tools: tuple = ()
) -> tuple[str, list[int]]:
    """The prompt text and its ids, tokenized under the tokenizer's special-token policy (as training)."""
    from .data.special_content import content_hits, encode_split, policy_of, special_strings

    special = SpecialText.from_tokenizer(tokenizer)
    if policy_of(tokenizer) != "split":
        text = build_prompt(template, tokenizer, messages, tools)
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]
    rendered, hits = content_hits(
        template, messages, special, special_strings(tokenizer), add_generation_prompt=True, tools=tools
    )
    ids, _ = encode_split(tokenizer, [rendered.text], [hits])
    return rendered.text, ids[0]


def stop_strings(template: Template, tokenizer) -> tuple[str, ...]:
    return template.stop(SpecialText.from_tokenizer(tokenizer))


def context_length(model) -> int | None:
    from .model.rope import scaled_context

    return scaled_context(model.config)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """What can be shown now: hold back an unfinished UTF-8 character, a tail that may be the start
    of a stop string, and trailing whitespace (the final reply is stripped)."""
    end = len(text)
    bad = text.find("\ufffd", max(0, end - 4))
    if bad >= 0:
        end = bad
    head = text[:end]
    hold = max((k for s in stops for k in range(1, len(s)) if head.endswith(s[:k])), default=0)
    return head[: end - hold].rstrip()


def _pick(logits: torch.Tensor, params: SamplingParams, generator) -> int:
    if not params.temperature or params.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < params.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        probs /= probs.sum()
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class ReplyStream:
    """Iterate for the reply's text pieces (stripped, cut before any stop string). Afterwards
    `finish_reason` is "stop" or "length" and the token counts are set (OpenAI's usage)."""

    def __init__(
        self,
        model,
        tokenizer,
        template: Template,
        messages: list[Message],
        params: SamplingParams | None = None,
        tools: tuple = (),
    ):
        self.model, self.tokenizer, self.params = model, tokenizer, params or SamplingParams()
        self.prompt, self.prompt_ids = prompt_ids(template, tokenizer, messages, tools)
        self.stops = tuple(dict.fromkeys([*stop_strings(template, tokenizer), *self.params.stop]))
        self.stop_ids = set(stop_token_ids(template, tokenizer, extra=self.params.stop))
        self.max_new_tokens = self.params.max_new_tokens
        limit = context_length(model)
        if limit is not None:
            if len(self.prompt_ids) >= limit:
                raise PromptTooLong(
                    f"the prompt is {len(self.prompt_ids)} tokens; the model's context is {limit}"
                )
            self.max_new_tokens = min(self.max_new_tokens, limit - len(self.prompt_ids))
        self.prompt_tokens = len(self.prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.text = ""

    @torch.no_grad()
    def __iter__(self) -> Iterator[str]:
        model, tokenizer = self.model, self.tokenizer
        generator = (
            torch.Generator(device="cpu").manual_seed(self.params.seed)
            if self.params.seed is not None
            else None
        )
        step_input = torch.tensor([self.prompt_ids], device=model.device)
        cache, new_ids, emitted = None, [], ""
        self.finish_reason = "length"
        for _ in range(self.max_new_tokens):
            out = model(input_ids=step_input, cache=cache, use_cache=True)
            cache = out.cache
            token = _pick(out.logits[0, -1].float(), self.params, generator)
            self.completion_tokens += 1
            if token in self.stop_ids:
                self.finish_reason = "stop"
                break
            new_ids.append(token)
            text, stopped = _cut_at_stop(tokenizer.decode(new_ids, skip_special_tokens=True), self.stops)
            text = text.lstrip()
            if stopped:
                self.finish_reason = "stop"
                break
            ready = _safe_prefix(text, self.stops)
            if len(ready) > len(emitted) and ready.startswith(emitted):
                yield ready[len(emitted) :]
                emitted = ready
            step_input = torch.tensor([[token]], device=model.device)
        else:
            text = _cut_at_stop(tokenizer.decode(new_ids, skip_special_tokens=True), self.stops)[0].lstrip()
        self.text = text.rstrip() if new_ids else ""
        if len(self.text) > len(emitted) and self.text.startswith(emitted):
            yield self.text[len(emitted) :]


@contextmanager
def one_thread():
    """Decode on one thread: one token at a time is many small ops, and a second thread mostly
    waits at each op's barrier (measured for the demo: 5x the CPU time for the same tokens, and
    slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def stream_reply(
    model,
    tokenizer,
    template: Template,
    messages: list[Message],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the reply piece by piece; stops at EOS or any of the template's stop strings."""
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    yield from ReplyStream(model, tokenizer, template, messages, params)


def generate_reply(model, tokenizer, template: Template, messages: list[Message], **kwargs) -> str:
    return "".join(stream_reply(model, tokenizer, template, messages, **kwargs)).strip()


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_for_inference(
    path: str | Path,
    conv_template: str | None = None,
    merge: bool = False,
    dtype: str | None = None,
    device: str | None = None,
):
    """(model, tokenizer, template) for a run directory (adapter or full) or a plain HF model dir.

    The template is the one saved with the run; `conv_template` overrides it (needed for a model
    that has neither a llama-sft template nor a tokenizer chat_template). Fails before loading any
    weights when there is no template to use.
    """
    from .data.special_content import attach_policy
    from .data.templates import get_template
    from .data.tokenizer import load_tokenizer
    from .model.trained import is_adapter_dir, load_trained
    from .train.outputs import load_run_template

    path = Path(path)
    if not (path / "config.json").exists() and not is_adapter_dir(path):
        raise FileNotFoundError(
            f"{path}: no config.json or adapter_config.json; expected a `llama-sft train` output "
            "or a local model directory"
        )
    dtypes = {
        None: None,
        "auto": None,
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
    }
    if dtype not in dtypes:
        raise ValueError(f"dtype {dtype!r}: choose auto, float32, bfloat16 or float16")
    device = resolve_device(device)
    tokenizer = attach_policy(load_tokenizer(str(path)), path)  # the run's special-token policy
    try:
        saved = load_run_template(path, tokenizer)
    except TemplateError:
        if not conv_template:
            raise TemplateError(
                f"{path} has no llama-sft template and its tokenizer has no chat_template: "
                "pass --conv_template NAME (see `llama-sft templates`)"
            ) from None
        saved = None
    template = get_template(conv_template, tokenizer) if conv_template else saved
    if saved is not None or is_adapter_dir(path):
        model, tokenizer, _ = load_trained(path, dtype=dtypes[dtype], device=device, merge=merge)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtypes[dtype] or torch.float32, use_safetensors=True
        )
        model.to(device).eval()
    return model, tokenizer, template
