"""`llama-sft plan --probe`: train a few real steps on this machine's GPU at increasing micro-batch
and report the measured peak and the largest batch that ran, next to the prediction.

Each try runs in its own process (`python -m llama_sft.plan.measure`), so an out-of-memory error
or the allocator's cache from one try cannot change the next. The model is random-init with the
real shapes: no weights are downloaded, and memory does not depend on their values. Only settings
without sharding are probed (one GPU; a multi-GPU probe would need a launcher per try).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace

from .measure import RunSpec, shape_dict
from .memory import GIB, estimate
from .search import Row, largest_batch
from .shapes import ModelShape


def spec_for(shape: ModelShape, row: Row, micro_batch_size: int, steps: int = 2) -> RunSpec:
    s = row.setting
    return RunSpec(
        shape=shape_dict(shape),
        method=s.method,
        gradient_checkpointing=s.gradient_checkpointing,
        micro_batch_size=micro_batch_size,
        seq_len=s.seq_len,
        steps=steps,
        grad_accum=2 if s.grads_resident else 1,
        lora_r=s.lora_r,
        lora_targets=list(s.lora_targets),
        precision=s.precision,
        # sdpa_packed is registered by the train floor; a full unmasked row on sdpa is its closest stand-in
        attn="sdpa" if s.attn == "sdpa_packed" else s.attn,
        padding=s.attention_mask,
        device="cuda",
    )


def try_batch(spec: RunSpec, timeout: float = 1800) -> dict:
    """One measured run; {'oom': True} when it ran out of memory."""
    proc = subprocess.run(
        [sys.executable, "-m", "llama_sft.plan.measure", json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    if "out of memory" in proc.stderr.lower() or "OutOfMemoryError" in proc.stderr:
        return {"oom": True}
    raise RuntimeError(f"probe run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def probe(shape: ModelShape, row: Row, max_tries: int = 3) -> dict:
    """Start at the predicted largest batch; step up while it fits, down while it does not.

    The probe trains through `measure` with transformers' own loss, so it checks the plain-loss row.
    """
    if row.setting.loss_impl != "plain":
        row = largest_batch(shape, replace(row.setting, loss_impl="plain"), row.gpu_bytes)
    predicted = max(row.micro_batch_size, 1)
    tries, best_ok, lowest_oom = [], 0, None
    batch = predicted
    for _ in range(max_tries):
        result = try_batch(spec_for(shape, row, batch))
        est = estimate(shape, replace(row.setting, micro_batch_size=batch, device="cuda"))
        entry = {"micro_batch_size": batch, "predicted_allocated_gib": round(est.allocated / GIB, 2)}
        if result.get("oom"):
            entry["oom"] = True
            lowest_oom = batch if lowest_oom is None else min(lowest_oom, batch)
        else:
            entry["measured_peak_gib"] = round(result["peak_bytes"] / GIB, 2)
            entry["error_pct"] = round(100 * (est.allocated / result["peak_bytes"] - 1), 1)
            best_ok = max(best_ok, batch)
        tries.append(entry)
        if lowest_oom is None:
            batch = max(batch + 1, int(batch * 1.25))
        elif best_ok == 0:
            batch = max(1, batch // 2)
        elif lowest_oom - best_ok > 1:
            batch = (best_ok + lowest_oom) // 2
        else:
            break
        if batch < 1 or batch == lowest_oom:
            break
    return {
        "setting": row.to_json(),
        "predicted_max_batch": row.micro_batch_size,
        "measured_max_batch_at_least": best_ok,
        "first_oom_batch": lowest_oom,
        "tries": tries,
    }
