"""Helpers shared by the data-tool tests (imported by name: this folder is on sys.path)."""

from __future__ import annotations

import json


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sharegpt(rid: str, *turns: tuple[str, str], **extra) -> dict:
    """sharegpt("a", ("human", "hi"), ("gpt", "hello")) -> a ShareGPT record."""
    return {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns], **extra}


def counts(report: dict) -> dict[str, int]:
    """{reason: records} from a --report summary."""
    return {row["reason"]: row["records"] for row in report["reasons"]}
