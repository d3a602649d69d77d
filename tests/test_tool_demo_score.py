"""`tool_demo.score` counts what `serve` would return: a scripted model replies with hand-written
text (right call, wrong argument, two calls, a call where none is needed) and the rates must be
the ones counted by hand."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import LlamaConfig

from llama_sft.data.templates import get_template
from llama_sft.tool_demo import calls_in, score, shipped


def hermes(name: str, city: str) -> str:
    return '<tool_call>\n{"name": "' + name + '", "arguments": {"city": "' + city + '"}}\n</tool_call>'


class Scripted(torch.nn.Module):
    """Greedy decoding of this 'model' yields the reply `script(prompt_text)` (then EOS)."""

    def __init__(self, tokenizer, script):
        super().__init__()
        self.tokenizer, self.script = tokenizer, script
        self.config = LlamaConfig(max_position_embeddings=4096)
        self.device = torch.device("cpu")

    def forward(self, input_ids, cache=None, use_cache=True):
        if cache is None:
            prompt = self.tokenizer.decode(input_ids[0].tolist())
            reply = self.tokenizer(self.script(prompt), add_special_tokens=False)["input_ids"]
            cache = {"plan": [*reply, self.tokenizer.eos_token_id], "at": 0}
        logits = torch.zeros(1, 1, len(self.tokenizer))
        logits[0, -1, cache["plan"][cache["at"]]] = 1.0
        cache["at"] += 1
        return SimpleNamespace(logits=logits, cache=cache)


def test_calls_in_reads_hermes_calls_as_serve_does():
    assert calls_in(hermes("get_time", "Oslo"), "hermes") == [("get_time", {"city": "Oslo"})]
    assert calls_in("Sure. " + hermes("get_time", "Oslo"), "hermes") == [("get_time", {"city": "Oslo"})]
    assert calls_in("It is 12:00 in Oslo.", "hermes") == []
    assert calls_in('<tool_call>\n{"name": "get_time", "arguments": {"city": \n</tool_call>', "hermes") == []


def test_score_counts_exact_calls_answers_and_no_calls(tiny_tokenizer):
    held = shipped("heldout")
    tool = [r for r in held if r["messages"][1].get("tool_calls")][:4]
    plain = [r for r in held if not r["messages"][1].get("tool_calls")][:2]
    want = [r["messages"][1]["tool_calls"][0]["function"] for r in tool]
    first_call = {r["messages"][0]["content"]: i for i, r in enumerate(tool)}

    def script(prompt: str) -> str:
        if "<tool_response>" in prompt:  # the answer turn, after the call and its result
            i = next(i for i, r in enumerate(tool) if r["messages"][0]["content"] in prompt)
            return tool[i]["messages"][3]["content"] if i == 0 else "It is nice there."
        for question, i in first_call.items():
            if question in prompt:
                name, city = want[i]["name"], want[i]["arguments"]["city"]
                return [
                    hermes(name, city),  # exact
                    hermes(name, city + "x"),  # wrong argument
                    "Sure.\n" + hermes(name, city),  # a word, then the exact call
                    hermes(name, city) + "\n" + hermes(name, city),  # one call too many
                ][i]
        if plain[0]["messages"][0]["content"] in prompt:
            return "Hello there."
        return hermes("get_time", "Paris")  # a call where none is needed

    result = score(Scripted(tiny_tokenizer, script), tiny_tokenizer, get_template("chatml"), tool + plain)
    assert (result["call"], result["answer"], result["no_call"]) == (0.5, 0.25, 0.5)
    assert [r.get("call") for r in result["rows"][:4]] == [True, False, True, False]
    assert result["rows"][0]["reply"] == hermes(want[0]["name"], want[0]["arguments"]["city"])
    assert [r["no_call"] for r in result["rows"][4:]] == [True, False]
