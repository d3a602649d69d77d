"""A run killed with SIGKILL between saves and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llama_sft.train.resume import complete_checkpoints, resolve_resume

pytestmark = pytest.mark.slow


def train_cmd(model_dir, data, out, *extra):
    return [
        sys.executable,
        "-m",
        "llama_sft.cli.main",
        "train",
        "--model_name_or_path",
        str(model_dir),
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        "--method",
        "lora",
        "--lora_dropout",
        "0.1",
        "--max_steps",
        "16",
        "--save_steps",
        "4",
        "--save_strategy",
        "steps",
        "--logging_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-2",
        "--report_to",
        "none",
        "--seed",
        "7",
        "--model_max_length",
        "128",
        "--disable_tqdm",
        "True",
        *extra,
    ]


def final_loss(out):
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [e for e in entries if "loss" in e and e["step"] == 16][-1]["loss"]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_model_dir, sharegpt_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLAMA_SFT_CACHE": str(tmp_path / "cache")}
    straight = tmp_path / "straight"
    subprocess.run(
        train_cmd(tiny_model_dir, sharegpt_file, straight), check=True, env=env, capture_output=True
    )

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(tiny_model_dir, sharegpt_file, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while not (killed / "checkpoint-8" / "trainer_state.json").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint-8 within 600 s"
        time.sleep(0.05)  # polling for a file the child writes, not waiting for time to pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter_model.safetensors").exists(), "the run finished before the kill"
    resumed_from = resolve_resume("auto", killed)
    assert resumed_from is not None and int(resumed_from.rsplit("-", 1)[1]) >= 8

    subprocess.run(
        train_cmd(tiny_model_dir, sharegpt_file, killed, "--resume_from_checkpoint", "auto"),
        check=True,
        env=env,
        capture_output=True,
    )
    trace = {
        name: [
            e["loss"] for e in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in e
        ]
        for name, d in (("straight", straight), ("killed", killed))
    }
    assert final_loss(killed) == pytest.approx(final_loss(straight), rel=1e-5, abs=1e-6), (
        resumed_from,
        trace,
    )


def test_incomplete_checkpoint_is_skipped(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-8").mkdir()  # killed while saving: no trainer_state.json
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-4"]
    assert resolve_resume("auto", tmp_path).endswith("checkpoint-4")
    assert resolve_resume("auto", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError):
        resolve_resume(str(tmp_path / "checkpoint-8"), tmp_path)
