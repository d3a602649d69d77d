"""Fixtures for the data tools: run `llama-sft data ...` in-process and read what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def cli(tmp_path, capsys):
    """Run `llama-sft data ARGS --quiet --report R`; returns (exit code, report dict or None, stderr)."""
    from llama_sft.cli.main import main

    def run(*args: str) -> tuple[int, dict | None, str]:
        report = tmp_path / "report.json"
        report.unlink(missing_ok=True)
        code = main(["data", *map(str, args), "--quiet", "--report", str(report)])
        err = capsys.readouterr().err
        return code, json.loads(report.read_text()) if report.exists() else None, err

    return run


@pytest.fixture
def jsonl(tmp_path):
    def write(name: str, records: list) -> Path:
        path = tmp_path / name
        path.write_text(
            "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
            encoding="utf-8",
        )
        return path

    return write
