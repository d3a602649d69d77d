"""`llama-sft demo --tools`: watch a tiny model learn to call tools, on CPU, with nothing downloaded.

The data is the small tool-use set the package ships (`resources/tool_demo_*.jsonl`, written by
`make_tool_splits`): two tools (`get_weather`, `get_time`) in OpenAI's record shape, a call, the
tool's result and the answer built from it, plus plain questions that need no tool. Held-out
prompts name cities never seen in training (their name parts were), so the model must copy the
argument, not recall it. Training renders with `chatml`, whose tool format is Hermes'
`<tool_call>` convention; scoring generates exactly as `serve` does and parses calls with the same
code (`tool_templates.parse_calls`).
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

PREFIXES = "Vel Mar Kor Tal Ben Sor Lin Dar Fen Gal Hol Ith Jar Kel Lum Nor Oss Pra Quen Ril".split()
SUFFIXES = "mora ston dale grad port haven field burg wick mouth".split()
SKIES = ["sunny", "cloudy", "rainy", "windy", "snowy"]
WEATHER_ASKS = [
    "What is the weather in {c}?",
    "How is the weather in {c} today?",
    "Weather in {c}, please.",
    "Is it sunny in {c}?",
]
TIME_ASKS = [
    "What time is it in {c}?",
    "Tell me the time in {c}.",
    "Local time in {c}?",
    "What's the hour in {c}?",
]
# Phrasings only held-out prompts use: the call must follow the request, not a memorized sentence.
HELDOUT_WEATHER_ASKS = ["Could you check the weather in {c}?", "What's it like outside in {c} right now?"]
HELDOUT_TIME_ASKS = ["Do you know what time it is in {c}?", "What is the current time in {c}?"]
# Questions that need no tool, some about weather and time as topics and some naming a place, so the
# model learns to call for a lookup, not for a word (measured: with only the first twelve, a
# sixth of the data, it called get_weather for "What causes rain?").
PLAIN = [
    ("Hello!", "Hello! Ask me about the weather or the time in any city."),
    ("Who are you?", "I am a tiny assistant that can look up the weather and the time."),
    ("Thanks!", "You are welcome."),
    ("What can you do?", "I can look up the weather and the local time in a city."),
    ("What is 2 + 2?", "2 + 2 is 4."),
    ("Name a primary color.", "Red is a primary color."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Say something nice.", "You are doing great today."),
    ("What do bees make?", "Bees make honey."),
    ("What is a clock for?", "A clock shows the time of day."),
    ("What is an umbrella for?", "An umbrella keeps the rain off you."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Which country is Berlin in?", "Berlin is in Germany."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What is snow made of?", "Snow is made of ice crystals."),
    ("Why is the sky blue?", "Air scatters blue light more than red light."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What is a time zone?", "A region that keeps the same local time."),
    ("What is a rainbow?", "Sunlight split into colors by raindrops."),
    ("What is 10 times 3?", "10 times 3 is 30."),
    ("Goodbye!", "Goodbye! Have a nice day."),
]
# Held-out questions that need no tool, none in training; two are about weather and time in
# general, so "no call" means the model tells a lookup from a topic.
HELDOUT_PLAIN = [
    ("Good morning!", "Good morning! Ask me about the weather or the time in any city."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What causes rain?", "Rain falls when water droplets in clouds grow heavy."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city name"}},
                "required": ["city"],
            },
        },
    }
    for name, description in (
        ("get_weather", "Current weather in a city"),
        ("get_time", "Local time in a city"),
    )
]
RESOURCE_FILES = {"train": "tool_demo_train.jsonl", "heldout": "tool_demo_heldout.jsonl"}


def tool_record(rid: str, rng: random.Random, city: str, kind: str, unseen_ask: bool = False) -> dict:
    if kind == "weather":
        ask, name = rng.choice(HELDOUT_WEATHER_ASKS if unseen_ask else WEATHER_ASKS), "get_weather"
        temp, sky = rng.randint(-5, 35), rng.choice(SKIES)
        result, answer = json.dumps({"temp_c": temp, "sky": sky}), f"It is {temp} C and {sky} in {city}."
    else:
        ask, name = rng.choice(HELDOUT_TIME_ASKS if unseen_ask else TIME_ASKS), "get_time"
        clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
        result, answer = clock, f"It is {clock} in {city}."
    return {
        "id": rid,
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": ask.format(c=city)},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": name, "arguments": {"city": city}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "name": name, "content": result},
            {"role": "assistant", "content": answer},
        ],
    }


def plain_record(rid: str, question: str, answer: str) -> dict:
    return {
        "id": rid,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
    }


def make_tool_splits(seed: int = 0, n_train: int = 96, n_heldout: int = 16) -> tuple[list[dict], list[dict]]:
    """Training and held-out records. Held-out cities are new combinations of seen name parts; half
    the held-out requests use phrasings no training record has; the held-out plain questions are
    new too. Each split draws from its own generator, so `n_train` leaves the held-out set as is."""
    rng, held_rng = random.Random(seed), random.Random(seed + 1)
    cities = [p + s for p in PREFIXES for s in SUFFIXES]
    rng.shuffle(cities)
    held_cities, train_cities = cities[:n_heldout], cities[30:]
    train = []
    for i in range(n_train):
        if i % 3 == 2:  # a third plain: fewer and the model calls a tool for any question
            q, a = rng.choice(PLAIN)
            train.append(plain_record(f"train_{i}", q, a))
        else:
            kind = "weather" if i % 2 else "time"
            train.append(tool_record(f"train_{i}", rng, rng.choice(train_cities), kind))
    held = [
        tool_record(f"heldout_{i}", held_rng, c, "weather" if i % 2 else "time", unseen_ask=i % 4 < 2)
        for i, c in enumerate(held_cities)
    ]
    held += [plain_record(f"heldout_plain_{i}", q, a) for i, (q, a) in enumerate(HELDOUT_PLAIN)]
    return train, held


def shipped_path(split: str) -> Path:
    """The shipped file for `split` (train | heldout)."""
    return Path(str(resources.files("llama_sft").joinpath("resources", RESOURCE_FILES[split])))


def shipped(split: str) -> list[dict]:
    """The shipped records of `split` (train | heldout)."""
    return [json.loads(line) for line in shipped_path(split).read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


SLACK_TOKENS = 12  # room past the expected reply (a short preamble before a call fits); decoding is the cost


def calls_in(text: str, style: str) -> list[tuple[str, dict]]:
    """(name, arguments) of each call `serve` would return for this reply."""
    from .data.tool_templates import parse_calls

    return [(c.name, c.parsed()) for c in parse_calls(text, style)[1]]


def score(model, tokenizer, template, held: list[dict]) -> dict:
    """Held-out rates and one row per record: the call (exact name and arguments, no other call),
    the answer written from the tool's result (exact, given the expected call and its result), and
    no call where none is needed. Greedy, through `ReplyStream` and `parse_calls` as `serve` does.

    Each reply may run a few tokens past the expected turn as training renders it; a reply to a
    question that needs no tool gets at least the room of the longest expected call, so a call
    there is always written out whole and counted."""
    from .data.templates import SpecialText
    from .data.tool_templates import template_style
    from .data.tools import read_tool_record
    from .generation import ReplyStream, SamplingParams, build_prompt, one_thread

    style, special = template_style(template), SpecialText.from_tokenizer(tokenizer)

    def room(messages, tools, turn: int) -> int:
        full = template.render(messages[: turn + 1], special=special, tools=tools).text
        reply = full[len(build_prompt(template, tokenizer, messages[:turn], tools)) :]
        return len(tokenizer(reply, add_special_tokens=False)["input_ids"]) + SLACK_TOKENS

    def reply(messages, tools, limit: int) -> str:
        params = SamplingParams(max_new_tokens=limit)
        return "".join(ReplyStream(model, tokenizer, template, messages, params, tools))

    records = [(record, *read_tool_record(record, "openai")) for record in held]
    call_room = max((room(m, t, 1) for _, m, t in records if m[1].tool_calls), default=64)
    rows = []
    with one_thread():
        for record, messages, tools in records:
            row = {"id": record["id"], "prompt": messages[0].content}
            if messages[1].tool_calls:
                want = [(c.name, c.parsed()) for c in messages[1].tool_calls]
                row["reply"] = first = reply(messages[:1], tools, room(messages, tools, 1))
                answer = reply(messages[:3], tools, room(messages, tools, 3))
                row |= {"expected": want, "call": calls_in(first, style) == want}
                row |= {"answer_reply": answer, "answer": answer == messages[3].content}
            else:
                row["reply"] = first = reply(messages[:1], tools, max(call_room, room(messages, tools, 1)))
                row |= {"expected": [], "no_call": not calls_in(first, style)}
            rows.append(row)

    def rate(key: str) -> float | None:
        hits = [r[key] for r in rows if key in r]
        return round(sum(hits) / len(hits), 3) if hits else None

    return {"call": rate("call"), "answer": rate("answer"), "no_call": rate("no_call"), "rows": rows}


def corpus(records: list[dict]) -> list[str]:
    """Text for the demo tokenizer: the rendered training conversations (markers and the schema
    block tokenize compactly) with newlines as spaces: the tiny BPE splits words on spaces only, so
    merges learned across a newline would make tokens that straddle the start of a reply."""
    from .data.templates import BUILTIN
    from .data.tools import read_tool_record

    out = []
    for record in records[:400]:
        messages, tools = read_tool_record(record, "openai")
        out.append(BUILTIN["chatml"].render(messages, tools=tools).text.replace("\n", " "))
    return out


def run_tool_demo(
    output_dir: str | Path = "runs/tool-demo",
    epochs: float = 5.0,
    seed: int = 0,
    n_train: int | None = None,
    extra_flags: list[str] | None = None,
) -> dict:
    """Train the tiny model on the shipped tool set (or `n_train` fresh records) and score it."""
    import torch
    from rich.console import Console

    from .config import parse_run_config
    from .data.templates import get_template
    from .model.trained import load_trained
    from .tiny import build_tiny_model, build_tokenizer
    from .train.run import train

    console = Console()
    out = Path(output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if n_train is None:
        train_records, held = shipped("train"), shipped("heldout")
    else:
        train_records, held = make_tool_splits(seed, n_train)
    write_jsonl(out / "data" / "train.jsonl", train_records)
    write_jsonl(out / "data" / "heldout.jsonl", held)
    console.print(
        f"[bold]1/4[/] data: {len(train_records)} training records, {len(held)} held-out -> {out / 'data'}"
    )
    tokenizer = build_tokenizer(corpus(train_records), vocab_size=600)
    base = build_tiny_model(
        tokenizer,
        seed=seed,
        hidden_size=128,
        layers=4,
        heads=4,
        kv_heads=2,
        intermediate_size=256,
        max_position_embeddings=512,
    )
    base.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    n_params = sum(p.numel() for p in base.parameters())
    console.print(f"[bold]2/4[/] model: tiny LLaMA, random weights, {n_params / 1e6:.2f}M parameters")
    template = get_template("chatml")
    base.eval()
    before = score(base, tokenizer, template, held)
    console.print(
        f"      before: call {before['call']:.0%}, answer {before['answer']:.0%}, no-call {before['no_call']:.0%}"
    )
    flags = [
        *("--model_name_or_path", str(out / "base"), "--data_path", str(out / "data" / "train.jsonl")),
        *("--output_dir", str(out / "model"), "--method", "full", "--conv_template", "chatml"),
        *(
            "--model_max_length",
            "512",
            "--num_train_epochs",
            str(epochs),
            "--per_device_train_batch_size",
            "32",
        ),
        *("--learning_rate", "3e-3", "--lr_scheduler_type", "cosine", "--warmup_steps", "10"),
        *("--weight_decay", "0.0", "--logging_steps", "10", "--save_strategy", "no", "--report_to", "none"),
        *("--seed", str(seed), "--data_cache_dir", str(out / "cache"), "--train_sampling_strategy", "random"),
        *(extra_flags or []),
    ]
    console.print(
        "[bold]3/4[/] training: full fine-tuning on CPU, template chatml (Hermes <tool_call> format)"
    )
    summary = train(parse_run_config(flags))
    model, tokenizer2, template2 = load_trained(out / "model")
    after = score(model, tokenizer2, template2, held)
    console.print("[bold]4/4[/] held-out (cities never seen in training), before -> after:")
    for key, label in (
        ("call", "exact call"),
        ("answer", "answer from the result"),
        ("no_call", "no call when none is needed"),
    ):
        console.print(f"      {label}: {before[key]:.0%} -> {after[key]:.0%}")
    for row in [r for r in after["rows"] if "call" in r][:3]:
        console.print(f"      [dim]{row['prompt']!r} -> {row['reply']!r}[/]")
    result = {"before": before, "after": after, "train": summary, "params": n_params, "output_dir": str(out)}
    (out / "demo_results.json").write_text(json.dumps(result, indent=2, default=str))
    console.print(
        f"Next: `llama-sft serve {out / 'model'}` and call it with `tools=` from the openai client."
    )
    return result
