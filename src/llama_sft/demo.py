"""`llama-sft demo --tiny`: watch a model learn, on CPU, in a few minutes, with nothing downloaded.

It builds a tiny LLaMA with random weights and a tokenizer trained on the demo's own text,
writes a synthetic multi-turn ShareGPT dataset of small skills, trains with the real `train`
path (full fine-tuning: a random base has nothing for LoRA to adapt, so LoRA would not learn in
minutes), and scores greedy answers on held-out prompts before and after.

Skills (each learnable by a ~2M-parameter model, each held out by its inputs, not its wording):
  * unit conversion: "Convert 47 km to metres." -> "47 km is 47000 m."
  * follow-up turn:   "And in centimetres?"      -> "47 km is 4700000 cm."
  * echo:             "Say 'amber river' back to me." -> "amber river"
  * a fixed persona:  "Who are you?"             -> "I am Quill, a tiny assistant trained by llama-sft."
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

WORDS = (
    "amber river stone cloud maple silver lantern harbor meadow copper velvet falcon orchid ember glacier "
    "willow cobalt thunder saffron pebble canyon juniper marble comet"
).split()
PERSONA = "I am Quill, a tiny assistant trained by llama-sft."
PERSONA_QUESTIONS = ["Who are you?", "What is your name?", "Introduce yourself.", "Tell me who you are."]
GREETINGS = ["", "Hi! ", "Hello. ", "Hey, "]


@dataclass
class Example:
    messages: list[tuple[str, str]]  # (role, content)
    skill: str

    def to_sharegpt(self, idx: str) -> dict:
        names = {"user": "human", "assistant": "gpt"}
        return {"id": idx, "conversations": [{"from": names[r], "value": c} for r, c in self.messages]}


def conversion(n: int, follow_up: bool) -> Example:
    msgs = [("user", f"Convert {n} km to metres."), ("assistant", f"{n} km is {n}000 m.")]
    if follow_up:
        msgs += [("user", "And in centimetres?"), ("assistant", f"{n} km is {n}00000 cm.")]
    return Example(msgs, "convert+follow-up" if follow_up else "convert")


def repeat(a: str, b: str) -> Example:
    return Example([("user", f"Say '{a} {b}' back to me."), ("assistant", f"{a} {b}")], "echo")


def persona(greeting: str, question: str) -> Example:
    return Example([("user", greeting + question), ("assistant", PERSONA)], "persona")


def make_splits(seed: int = 0, n_train: int = 2400) -> tuple[list[Example], list[Example]]:
    """Train and held-out examples whose inputs never overlap (numbers, word pairs, phrasings)."""
    rng = random.Random(seed)
    numbers = list(range(1, 1000))
    rng.shuffle(numbers)
    held_numbers, train_numbers = numbers[:40], numbers[40:]
    pairs = [(a, b) for a in WORDS for b in WORDS if a != b]
    rng.shuffle(pairs)
    held_pairs, train_pairs = pairs[:30], pairs[30:]
    persona_combos = [(g, q) for g in GREETINGS for q in PERSONA_QUESTIONS]
    rng.shuffle(persona_combos)
    held_persona, train_persona = persona_combos[:4], persona_combos[4:]
    train = []
    for i in range(n_train):
        kind = i % 5
        if kind in (0, 1):
            train.append(conversion(rng.choice(train_numbers), follow_up=kind == 1))
        elif kind in (2, 3):
            train.append(repeat(*rng.choice(train_pairs)))
        else:
            train.append(persona(*rng.choice(train_persona)))
    held = [conversion(n, follow_up=i % 2 == 1) for i, n in enumerate(held_numbers)]
    held += [repeat(a, b) for a, b in held_pairs] + [persona(g, q) for g, q in held_persona]
    return train, held


def corpus(examples: list[Example]) -> list[str]:
    from .data.templates import VICUNA_SYSTEM

    return [VICUNA_SYSTEM, "USER: ASSISTANT:"] + [" ".join(c for _, c in e.messages) for e in examples[:800]]


def write_jsonl(path: Path, examples: list[Example], prefix: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i, ex in enumerate(examples):
            handle.write(json.dumps(ex.to_sharegpt(f"{prefix}_{i}")) + "\n")


def score(model, tokenizer, template, held: list[Example]) -> dict:
    """Exact match of the greedy answer to each held-out conversation's last reply, per skill."""
    from .data.messages import Message
    from .generation import generate_reply

    hits: dict[str, list[int]] = {}
    samples = []
    for ex in held:
        messages = [Message(r, c) for r, c in ex.messages[:-1]]
        answer = generate_reply(model, tokenizer, template, messages, max_new_tokens=32)
        ok = int(answer == ex.messages[-1][1])
        hits.setdefault(ex.skill, []).append(ok)
        if len(samples) < 6 and ex.skill not in {s["skill"] for s in samples}:
            samples.append(
                {
                    "skill": ex.skill,
                    "prompt": ex.messages[-2][1],
                    "expected": ex.messages[-1][1],
                    "got": answer,
                }
            )
    per_skill = {k: round(sum(v) / len(v), 3) for k, v in hits.items()}
    total = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return {"exact_match": round(total, 3), "per_skill": per_skill, "samples": samples}


def eval_loss(model, tokenizer, template, held: list[Example]) -> float:
    """Loss per supervised token on the held-out conversations (the same measure `llama-sft eval` reports)."""
    from .data.messages import Conversation, Message
    from .evaluate.loss import supervised_loss

    convs = [Conversation([Message(r, c) for r, c in e.messages]) for e in held]
    return round(supervised_loss(model, tokenizer, template, convs, max_length=512, batch_size=32)["loss"], 4)


def run_demo(
    output_dir: str | Path = "runs/demo",
    epochs: float = 4.0,
    seed: int = 0,
    n_train: int = 2400,
    extra_flags: list[str] | None = None,
) -> dict:
    import torch
    from rich.console import Console
    from rich.table import Table

    from .config import parse_run_config
    from .data.messages import Message
    from .data.templates import get_template
    from .generation import generate_reply
    from .model.trained import load_trained
    from .tiny import build_tiny_model, build_tokenizer
    from .train.run import train

    console = Console()
    out = Path(output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_examples, held = make_splits(seed, n_train)
    write_jsonl(out / "data" / "train.jsonl", train_examples, "train")
    write_jsonl(out / "data" / "heldout.jsonl", held, "heldout")
    console.print(
        f"[bold]1/4[/] data: {len(train_examples)} training conversations, {len(held)} held-out "
        f"(numbers, word pairs and phrasings never seen in training) -> {out / 'data'}"
    )

    tokenizer = build_tokenizer(corpus(train_examples), vocab_size=400)
    base = build_tiny_model(
        tokenizer,
        seed=seed,
        hidden_size=128,
        layers=4,
        heads=4,
        kv_heads=2,
        intermediate_size=256,
        max_position_embeddings=256,
    )
    base_dir = out / "base"
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    n_params = sum(p.numel() for p in base.parameters())
    console.print(
        f"[bold]2/4[/] model: tiny LLaMA, random weights, {n_params / 1e6:.2f}M parameters -> {base_dir}"
    )

    template = get_template("vicuna_v1.1")
    base.eval()
    before = {
        "eval_loss": eval_loss(base, tokenizer, template, held),
        **score(base, tokenizer, template, held),
    }
    console.print(
        f"      before training: held-out loss {before['eval_loss']}, exact match {before['exact_match']:.0%}"
    )

    console.print(
        "[bold]3/4[/] training: full fine-tuning on CPU (a random base has no features for LoRA to adapt)"
    )
    flags = [
        "--model_name_or_path",
        str(base_dir),
        "--data_path",
        str(out / "data" / "train.jsonl"),
        "--eval_data_path",
        str(out / "data" / "heldout.jsonl"),
        "--output_dir",
        str(out / "model"),
        "--method",
        "full",
        "--conv_template",
        "vicuna_v1.1",
        "--model_max_length",
        "256",
        "--num_train_epochs",
        str(epochs),
        "--per_device_train_batch_size",
        "32",
        "--learning_rate",
        "3e-3",
        "--lr_scheduler_type",
        "cosine",
        "--warmup_steps",
        "20",
        "--weight_decay",
        "0.0",
        "--logging_steps",
        "10",
        "--eval_strategy",
        "epoch",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--seed",
        str(seed),
        "--data_cache_dir",
        str(out / "cache"),
        # Each skill has its own length, so length-grouped batches would hold one skill at a time and
        # the model would forget the others between them: shuffle instead.
        "--train_sampling_strategy",
        "random",
        *(extra_flags or []),
    ]
    summary = train(parse_run_config(flags))

    model, tokenizer2, template2 = load_trained(out / "model")
    after = {
        "eval_loss": eval_loss(model, tokenizer2, template2, held),
        **score(model, tokenizer2, template2, held),
    }
    chat_q = [Message("user", "Who are you?")]
    chat_a = generate_reply(model, tokenizer2, template2, chat_q, max_new_tokens=32)
    console.print("[bold]4/4[/] before vs after, on held-out prompts:")
    table = Table()
    for col in ("metric", "before", "after"):
        table.add_column(col)
    table.add_row("held-out loss", str(before["eval_loss"]), str(after["eval_loss"]))
    table.add_row("exact match (all)", f"{before['exact_match']:.0%}", f"{after['exact_match']:.0%}")
    for skill in after["per_skill"]:
        table.add_row(f"  {skill}", f"{before['per_skill'][skill]:.0%}", f"{after['per_skill'][skill]:.0%}")
    console.print(table)
    for s in after["samples"]:
        console.print(f"  [dim]{s['skill']}:[/] {s['prompt']!r} -> {s['got']!r} (expected {s['expected']!r})")
    console.print(f"  chat> USER: Who are you?\n        ASSISTANT: {chat_a}")
    result = {
        "before": before,
        "after": after,
        "train": summary,
        "chat": {"user": "Who are you?", "assistant": chat_a},
        "params": n_params,
        "output_dir": str(out),
    }
    (out / "demo_results.json").write_text(json.dumps(result, indent=2))
    report = out / "model" / "report.md"
    with open(report, "a", encoding="utf-8") as handle:
        handle.write(
            "\n## Demo: before vs after on held-out prompts\n\n| metric | before | after |\n|---|---|---|\n"
        )
        handle.write(f"| held-out loss | {before['eval_loss']} | {after['eval_loss']} |\n")
        handle.write(f"| exact match | {before['exact_match']:.0%} | {after['exact_match']:.0%} |\n")
        for skill in after["per_skill"]:
            handle.write(
                f"| {skill} | {before['per_skill'][skill]:.0%} | {after['per_skill'][skill]:.0%} |\n"
            )
        handle.write(f"\nChat: USER: Who are you? ASSISTANT: {chat_a}\n")
    console.print(
        f"Saved: model and report in {out / 'model'} (report.md, loss.png), results in {out / 'demo_results.json'}."
    )
    console.print(
        f"Next: `llama-sft chat {out / 'model'}` · `llama-sft eval {out / 'model'} --data {out / 'data' / 'heldout.jsonl'}`"
    )
    return result
