"""QLoRA on a real pretrained chat model (SmolLM2-135M-Instruct, `real_model_dir`) on CPU: a short run
through the CLI in NF4 learns a persona it can show on prompts it never saw, and `llama-sft merge`
turns it into a model directory plain transformers loads and that keeps the persona.

The persona: every reply opens with "Arr, matey!". Held-out prompts measure it two ways, both on the
merged model with transformers' own `apply_chat_template` (the model's chatml template, default
system prompt included): the log-likelihood of a persona reply rises well above the base model's,
and greedy replies start with the phrase.
"""

from __future__ import annotations

import json

import pytest
import torch
from ci import require_module

pytestmark = pytest.mark.slow
require_module("bitsandbytes")

PHRASE = "Arr, matey!"
TRAIN = [
    ("What colour is the sky?", "It is blue on a clear day."),
    ("How many legs does a spider have?", "Eight legs."),
    ("What do bees make?", "They make honey."),
    ("Name a fruit that is yellow.", "A banana."),
    ("What is two plus three?", "Five."),
    ("Where do penguins live?", "Mostly in the southern hemisphere."),
    ("What do we call frozen water?", "Ice."),
    ("How many days are in a week?", "Seven."),
    ("What is the opposite of hot?", "Cold."),
    ("Which animal says moo?", "A cow."),
    ("What do plants need to grow?", "Light, water and air."),
    ("What is the largest ocean?", "The Pacific."),
    ("How many hours are in a day?", "Twenty-four."),
    ("What shape has three sides?", "A triangle."),
    ("What do you use to write on paper?", "A pen or a pencil."),
    ("Which season comes after winter?", "Spring."),
]
HELD_OUT = [
    ("What is the colour of grass?", "It is green."),
    ("How many wheels does a bicycle have?", "Two wheels."),
    ("What do cows drink?", "Water."),
]


@pytest.fixture(scope="module")
def persona_data(tmp_path_factory):
    records = [
        {"id": f"p{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{PHRASE} {a}"}]}
        for i, (q, a) in enumerate(TRAIN)
    ]  # fmt: skip
    path = tmp_path_factory.mktemp("persona") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def reply_logprob(model, tokenizer, question: str, reply: str) -> float:
    """Mean log-probability per token of `reply` after `question`, in the model's own template."""
    messages = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}], tokenize=False)
    assert full.startswith(prompt)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    picked = logprobs.gather(1, targets[:, None])[:, 0][len(prompt_ids) - 1 :]
    return picked.mean().item()


def greedy_reply(model, tokenizer, question: str, tokens: int = 8) -> str:
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_qlora_on_the_real_model_learns_a_persona_and_merges(real_model_dir, persona_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_sft.cli.main import main

    run = tmp_path / "run"
    argv = [
        "train", "--model_name_or_path", str(real_model_dir), "--data_path", str(persona_data),
        "--output_dir", str(run), "--q_lora", "True", "--conv_template", "tokenizer",
        "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0", "--learning_rate", "2e-3",
        "--max_steps", "8", "--per_device_train_batch_size", "4", "--model_max_length", "96",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "0",
        "--disable_tqdm", "True", "--data_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert main(argv) == 0
    trace = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    assert len(trace) == 8 and all(m["grad_norm"] > 0 for m in trace)
    assert trace[-1]["loss"] < 0.6 * trace[0]["loss"], [m["loss"] for m in trace]
    record = json.loads((run / "run_record.json").read_text())
    assert record["method"] == "qlora" and record["quantization"]["compute_dtype"] == "float32"

    merged_dir = tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(merged_dir)]) == 0
    check = json.loads((merged_dir / "run_record.json").read_text())["export"]["check"]
    assert check["max_abs_logit_diff"] <= 1e-3, check

    # Plain transformers from here on: the merged directory alone, and the base for comparison.
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(real_model_dir), dtype=torch.float32).eval()
    gains = []
    for question, answer in HELD_OUT:
        reply = f"{PHRASE} {answer}"
        gains.append(
            reply_logprob(merged, tokenizer, question, reply)
            - reply_logprob(base, tokenizer, question, reply)
        )
    assert min(gains) > 0.3, gains  # nats per token, on prompts the run never saw
    replies = [greedy_reply(merged, tokenizer, q) for q, _ in HELD_OUT]
    assert sum(r.startswith(PHRASE) for r in replies) >= 2, replies
    assert not any(greedy_reply(base, tokenizer, q).startswith(PHRASE) for q, _ in HELD_OUT[:1])
