"""Small learnable ShareGPT records shared by tests (importable: tests/ is on sys.path)."""

from __future__ import annotations


def make_sharegpt_records(n: int = 48, seed: int = 0) -> list[dict]:
    """Small, learnable ShareGPT conversations (unit conversions, some two-turn)."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(n):
        k = rng.randint(1, 99)
        turns = [
            {"from": "human", "value": f"Convert {k} km to metres."},
            {"from": "gpt", "value": f"{k} km is {k}000 m."},
        ]
        if i % 3 == 0:
            turns += [
                {"from": "human", "value": "And in centimetres?"},
                {"from": "gpt", "value": f"{k}00000 cm."},
            ]
        records.append({"id": f"conv_{i}", "conversations": turns})
    return records
