#!/usr/bin/env bash
# All GPU checks in one run, for a session that is lent a device (results under $OUT, default
# benchmarks/results/gpu). Budget: about 8 minutes on one H100; each step is capped so one slow
# part cannot eat the others' time. Copy the results into benchmarks/results/ with the card named.
#   OUT=/some/dir bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.csv" 2>&1
# 1. LoRA / QLoRA / full fine-tuning through `llama-sft train`, with and without checkpointing.
timeout 300 $PY benchmarks/gpu_train_check.py --out "$OUT" 2>&1 | tee "$OUT/train_check.log" | tail -n 12
# 2. FastChat-style padding vs padded vs packed (vs TRL if installed): tokens/s and MFU, 7B LoRA.
timeout 150 $PY benchmarks/gpu_throughput.py --steps 8 --warmup 2 2>&1 | tee "$OUT/throughput.log" | tail -n 12
cp benchmarks/results/gpu_throughput.* "$OUT/" 2>/dev/null
# 3. The memory planner's predictions against measured peaks (quick grid).
timeout 120 $PY benchmarks/gpu_plan_probe.py --quick 2>&1 | tee "$OUT/plan_probe.log" | tail -n 12
cp benchmarks/results/plan_validation_gpu.* "$OUT/" 2>/dev/null
echo "results in $OUT"
