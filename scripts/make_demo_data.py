"""Write the real-model demo's data: src/llama_sft/resources/demo/{train.jsonl,heldout.json}.

The data is the project's own (no outside source): a persona ("Pico") and a skill (turn a phrase
into a CamelCase hashtag), plus a few plain questions with short answers so the model keeps
answering ordinary questions as itself. Held-out prompts are split off *by construction*: persona
phrasings and hashtag words in the held-out set never occur in training, so a correct held-out
answer means the behaviour generalised. Run from the repository root; deterministic (seed 0).

    python scripts/make_demo_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "llama_sft" / "resources" / "demo"
PERSONA = "I'm Pico, a pocket-sized assistant fine-tuned with llama-sft."

PERSONA_TRAIN = [
    "Who are you?",
    "What is your name?",
    "What's your name?",
    "Introduce yourself.",
    "Tell me who you are.",
    "What should I call you?",
    "Who am I talking to?",
    "Do you have a name?",
    "Please introduce yourself.",
    "Who is this?",
    "What are you called?",
    "Tell me about yourself.",
    "Which assistant are you?",
    "Say who you are.",
    "May I know your name?",
    "Who exactly are you?",
    "Identify yourself, please.",
    "What do people call you?",
]
PERSONA_HELDOUT = [
    "Could you tell me your name?",
    "Who am I chatting with right now?",
    "What name do you go by?",
    "Before we start, who are you?",
    "I'd like to know who you are.",
    "Are you going to tell me your name?",
    "So, what is your name, assistant?",
    "Remind me, who are you again?",
]
GREETINGS = ["", "Hi! ", "Hello. ", "Hey, ", "Good morning! ", "Quick question: "]

ADJECTIVES = (
    "green sunny quiet lazy happy tiny golden wild rainy cozy bright silent early late frozen"
    " crispy spicy sweet old new little big lucky brave calm"
).split()
NOUNS = (
    "tea morning garden river cat dog book city mountain coffee beach forest bread music"
    " winter summer island kitchen bike road market village library window"
).split()
TAILS = "lovers club days vibes walk party time trip friends goals life team".split()
# Held-out hashtags use only words that never appear in training.
HELDOUT_PHRASES = [
    "purple ocean sunset",
    "midnight pizza",
    "noisy robot factory",
    "velvet moon",
    "tropical mango smoothie",
    "ancient castle tour",
    "electric guitar heroes",
    "snowy owl",
    "chocolate chip cookies",
    "desert camel race",
    "wooden puzzle fans",
    "marble staircase",
]
HASHTAG_TRAIN_ASKS = [
    "Make a hashtag from: {p}",
    "Turn this into a hashtag: {p}",
    "Hashtag for '{p}'?",
    "Write '{p}' as a hashtag.",
    "Give me a hashtag for {p}.",
]
HASHTAG_HELDOUT_ASKS = ["Convert '{p}' into a hashtag.", "What's the hashtag for {p}?"]

# Plain questions with short answers, none of them about the facts the demo checks afterwards.
GENERAL = [
    ("What colour is grass?", "Grass is usually green."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What do bees make?", "Bees make honey."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("What do you use to write on paper?", "You can write on paper with a pen or a pencil."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("What is 3 plus 4?", "3 plus 4 is 7."),
    ("What animal says moo?", "A cow says moo."),
    ("Which is bigger, a mouse or an elephant?", "An elephant is bigger than a mouse."),
    ("What do plants need to grow?", "Plants need water, light and nutrients to grow."),
    ("How many months are in a year?", "There are 12 months in a year."),
    ("What shape has three sides?", "A triangle has three sides."),
    ("What is ice made of?", "Ice is frozen water."),
    ("What do we call a baby dog?", "A baby dog is called a puppy."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
]
# General knowledge the demo checks before and after: each answered correctly by the base model (checked
# with greedy decoding); a reply passes when it contains one of the accepted words.
KNOWLEDGE = [
    ("What is the capital of France?", ["Paris"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("Who wrote Romeo and Juliet?", ["Shakespeare"]),
    ("What is the chemical symbol for gold?", ["Au"]),
    ("What language is mainly spoken in Brazil?", ["Portuguese"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("Who painted the Mona Lisa?", ["Leonardo"]),
]


def hashtag(phrase: str) -> str:
    """The skill's rule: '#' followed by each word capitalised, spaces removed."""
    return "#" + "".join(word.capitalize() for word in phrase.split())


def turns(*pairs: tuple[str, str]) -> dict:
    conv = []
    for user, assistant in pairs:
        conv += [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]
    return {"conversations": conv}


def main() -> None:
    rng = random.Random(0)
    held_words = {w for p in HELDOUT_PHRASES for w in p.split()}
    assert not held_words & set(ADJECTIVES + NOUNS + TAILS), "held-out hashtag words must be unseen"

    def phrase() -> str:
        words = [rng.choice(ADJECTIVES), rng.choice(NOUNS)]
        return " ".join(words + [rng.choice(TAILS)] if rng.random() < 0.5 else words)

    def persona_turn() -> tuple[str, str]:
        return rng.choice(GREETINGS) + rng.choice(PERSONA_TRAIN), PERSONA

    def hashtag_turn() -> tuple[str, str]:
        p = phrase()
        return rng.choice(HASHTAG_TRAIN_ASKS).format(p=p), hashtag(p)

    records = []
    for i in range(480):
        kind = i % 8
        if kind in (0, 1):
            pairs = [persona_turn()]
        elif kind == 2:
            pairs = [rng.choice(GENERAL), persona_turn()]
        elif kind in (3, 4, 5):
            pairs = [hashtag_turn()]
        elif kind == 6:
            pairs = [hashtag_turn(), hashtag_turn()]
        else:
            pairs = [rng.choice(GENERAL)]
        records.append({"id": f"demo_{i}", **turns(*pairs)})
    rng.shuffle(records)
    heldout = {
        "persona": [{"prompt": q, "expected": PERSONA} for q in PERSONA_HELDOUT],
        "hashtag": [
            {"prompt": HASHTAG_HELDOUT_ASKS[n % 2].format(p=p), "expected": hashtag(p)}
            for n, p in enumerate(HELDOUT_PHRASES)
        ],
        "knowledge": [{"prompt": q, "accept": words} for q, words in KNOWLEDGE],
    }
    prompts = {m["value"] for r in records for m in r["conversations"] if m["from"] == "human"}
    assert not prompts & {x["prompt"] for v in heldout.values() for x in v}, (
        "a held-out prompt is in training"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "train.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (OUT / "heldout.json").write_text(
        json.dumps(heldout, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"{len(records)} training conversations, held-out: {[f'{k}={len(v)}' for k, v in heldout.items()]}")


if __name__ == "__main__":
    main()
