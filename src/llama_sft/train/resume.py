"""Find a checkpoint to resume from: the newest *complete* one.

A run killed while saving leaves a checkpoint folder without its trainer_state.json (written
last); resuming from it would fail or, worse, load a half-written optimizer. We skip those.
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        match = CHECKPOINT.match(child.name)
        if match and child.is_dir() and (child / "trainer_state.json").exists():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def resolve_resume(value: str | bool | None, output_dir: str | Path) -> str | None:
    """'auto' -> newest complete checkpoint in output_dir (or None); a path must exist."""
    if value in (None, False, "", "false", "False", "no"):
        return None
    if value in (True, "auto", "true", "True", "latest"):
        found = complete_checkpoints(output_dir)
        return str(found[-1]) if found else None
    path = Path(str(value))
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {path}: not a complete checkpoint (no trainer_state.json)"
        )
    return str(path)
