"""The GPUs of this machine, for `llama-sft plan` without --gpus/--gpu-memory: nvidia-smi first
(no torch import), then torch.cuda."""

from __future__ import annotations

import re
import shutil
import subprocess

from .memory import GIB

_UNITS = {"": GIB, "gib": GIB, "gb": 1e9, "mib": 1024**2, "mb": 1e6, "tib": 1024**4, "tb": 1e12}


def parse_memory(text: str) -> float:
    """'80GiB', '80GB' (decimal), '81920MiB' or a bare number of GiB -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"--gpu-memory {text!r}: write it like 80GiB, 80GB or 81920MiB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError("--gpu-memory must be positive")
    return value


def detect_gpus() -> tuple[int, float, str] | None:
    """(count, bytes of the smallest, name) of this machine's GPUs, or None."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            rows = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
            if rows:
                return len(rows), min(float(mib) for _, mib in rows) * 1024**2, rows[0][0].strip()
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return len(props), float(min(p.total_memory for p in props)), props[0].name
