"""Predicted vs measured peak memory on one CUDA GPU, at full depth with random-init real shapes.

Each row trains 2 steps through transformers' Trainer (`--bf16`) in a fresh process and reads
`torch.cuda.max_memory_allocated()` (the allocator's peak, without the CUDA context), which is
compared with the planner's `allocated` (its peak less the assumed overhead: CUDA context and
allocator slack are budgeted, not measured here).

    python benchmarks/gpu_plan_probe.py            # 6 rows, ~5 min on an H100
    python benchmarks/gpu_plan_probe.py --quick    # 3 rows

Needs a GPU with >= 80 GB for the default grid (QLoRA rows need bitsandbytes). Writes
benchmarks/results/plan_validation_gpu.{json,md}; not run yet (no device was lent when it was written).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from llama_sft.plan.measure import RunSpec, shape_dict
from llama_sft.plan.memory import GIB, Setting, estimate
from llama_sft.plan.shapes import load_shape

RESULTS = Path(__file__).parent / "results"

# (name, preset, method, checkpointing, micro-batch, seq-len, quick)
GRID = [
    ("7b-lora", "llama2-7b", "lora", False, 2, 2048, True),
    ("7b-lora-ckpt", "llama2-7b", "lora", True, 8, 2048, True),
    ("7b-qlora-ckpt", "llama2-7b", "qlora", True, 8, 2048, True),
    ("8b-lora-ckpt", "llama3-8b", "lora", True, 4, 2048, False),
    ("7b-full-ckpt", "llama2-7b", "full", True, 2, 2048, False),
    ("13b-qlora-ckpt", "llama2-13b", "qlora", True, 4, 2048, False),
]


def run_row(name, preset, method, ckpt, batch, seq) -> dict:
    shape = load_shape(preset)
    spec = RunSpec(
        shape=shape_dict(shape),
        method=method,
        gradient_checkpointing=ckpt,
        micro_batch_size=batch,
        seq_len=seq,
        steps=2,
        device="cuda",
    )
    setting = Setting(
        method=method,
        gradient_checkpointing=ckpt,
        micro_batch_size=batch,
        seq_len=seq,
        attention_mask=False,
        grads_resident=False,
        device="cuda",
        loss_impl="plain",  # measure.py trains with transformers' own loss
    )
    pred = estimate(shape, setting)
    row = {
        "name": name,
        "model": preset,
        "method": method,
        "ckpt": ckpt,
        "batch": batch,
        "seq": seq,
        "predicted_allocated_gib": round(pred.allocated / GIB, 2),
        "predicted_peak_gib": round(pred.peak / GIB, 2),
        "predicted_phase": pred.phase,
    }
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "llama_sft.plan.measure", json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        oom = "out of memory" in proc.stderr.lower()
        row.update(measured_gib=None, error_pct=None, note="OOM" if oom else proc.stderr.strip()[-300:])
        return row
    measured = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
    row.update(
        measured_gib=round(measured / GIB, 2),
        error_pct=round(100 * (pred.allocated / measured - 1), 1),
        seconds=round(time.time() - started),
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "plan_validation_gpu"))
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    rows = []
    for name, preset, method, ckpt, batch, seq, quick in GRID:
        if args.quick and not quick:
            continue
        rows.append(run_row(name, preset, method, ckpt, batch, seq))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(
        json.dumps({"device": device, "rows": rows}, indent=1) + "\n", encoding="utf-8"
    )
    lines = [
        f"# `llama-sft plan` on {device}: predicted vs torch.cuda.max_memory_allocated",
        "",
        "| row | model | method | ckpt | batch x seq | predicted GiB | measured GiB | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        meas = f"{r['measured_gib']:.2f}" if r.get("measured_gib") is not None else r.get("note", "-")
        err = f"{r['error_pct']:+.1f}%" if r.get("error_pct") is not None else "-"
        lines.append(
            f"| {r['name']} | {r['model']} | {r['method']} | {'yes' if r['ckpt'] else 'no'} | "
            f"{r['batch']} x {r['seq']} | {r['predicted_allocated_gib']:.2f} | {meas} | {err} |"
        )
    Path(f"{out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    errors = [abs(r["error_pct"]) for r in rows if r.get("error_pct") is not None]
    print(f"worst |error| {max(errors, default=0):.1f}% over {len(errors)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
