"""Prompting and greedy/sampled generation with a run's template: one place for chat, eval, serve, demo."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .data.messages import Message
from .data.templates import SpecialText, Template


def build_prompt(template: Template, tokenizer, messages: list[Message]) -> str:
    """The exact training rendering of `messages`, ending with the generation prompt."""
    return template.render(messages, add_generation_prompt=True, special=SpecialText.from_tokenizer(tokenizer)).text


def stop_strings(template: Template, tokenizer) -> tuple[str, ...]:
    return template.stop(SpecialText.from_tokenizer(tokenizer))


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.no_grad()
def stream_reply(model, tokenizer, template: Template, messages: list[Message], max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> Iterator[str]:
    """Yield the reply piece by piece; stops at EOS or any of the template's stop strings."""
    prompt = build_prompt(template, tokenizer, messages)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
    stops = stop_strings(template, tokenizer)
    eos_ids = {tokenizer.eos_token_id} | {tokenizer.convert_tokens_to_ids(s) for s in stops if s in tokenizer.get_vocab()}
    generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
    past, new_ids, emitted = None, [], ""
    step_input = ids
    for _ in range(max_new_tokens):
        out = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].float()
        if temperature and temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                probs /= probs.sum()
            token = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        else:
            token = int(logits.argmax())
        if token in eos_ids:
            break
        new_ids.append(token)
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        text, stopped = _cut_at_stop(text, stops)
        if len(text) > len(emitted):
            yield text[len(emitted):]
            emitted = text
        if stopped:
            break
        step_input = torch.tensor([[token]], device=model.device)


def generate_reply(model, tokenizer, template: Template, messages: list[Message], **kwargs) -> str:
    return "".join(stream_reply(model, tokenizer, template, messages, **kwargs)).strip()
