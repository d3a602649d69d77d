"""Fixtures for training tests: launching `llama-sft train` in several processes, and checking what it saved.

`tiny_model_dir` and `sharegpt_file` come from tests/conftest.py. Multi-process runs are CPU-only
on purpose (CUDA hidden, gloo), so they behave the same on a laptop, in CI and on a GPU box.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 300  # a run takes 30-60 s on 2 busy cores; most of it is imports in each process


@pytest.fixture(autouse=True)
def fresh_launcher_state():
    """Undo what an in-process run leaves behind. accelerate exports ACCELERATE_USE_DEEPSPEED,
    ACCELERATE_USE_FSDP and FSDP_* into os.environ and keeps singleton state, and a run that looked
    launched (LOCAL_RANK set) keeps its process group: without this, a plain LoRA run after an
    in-process DeepSpeed run believes DeepSpeed was asked for."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_env(extra: dict | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": "",  # CPU + gloo everywhere, even on a GPU machine
            "DS_ACCELERATOR": "cpu",  # DeepSpeed's CPU accelerator instead of probing for devices
            "OMP_NUM_THREADS": "1",  # 2 processes x N threads on 2 cores is many times slower
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


class Launch:
    """One multi-process `llama-sft train`, by torchrun or by accelerate launch with a shipped YAML."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir

    def torchrun(self, train_args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "llama_sft.cli.main",
            "train",
            *train_args,
        ]
        return self._run(cmd)

    def accelerate(
        self, config_file: str, train_args: list[str], nproc: int = 2
    ) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            config_file,
            "--num_processes",
            str(nproc),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(free_port()),
            "-m",
            "llama_sft.cli.main",
            "train",
            *train_args,
        ]
        return self._run(cmd)

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        # cwd = repository root: accelerate YAMLs name their DeepSpeed JSON relative to it, as users run them.
        result = subprocess.run(
            cmd, cwd=REPO, env=distributed_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
        )
        log = self.log_dir / "launch.log"
        log.write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
            pytest.fail(f"launch failed with exit code {result.returncode} ({log}):\n{tail}", pytrace=False)
        return result


@pytest.fixture
def launch(tmp_path) -> Launch:
    return Launch(tmp_path)


@pytest.fixture
def check_trained_output():
    """`check(run_dir, base_dir)`: see `assert_saved_model_trained`."""
    return assert_saved_model_trained


def assert_saved_model_trained(run_dir: Path, base_dir: Path) -> list[str]:
    """The output loads with `load_trained`, no tensor is empty, and the weights moved away from the
    base. Returns the names of the changed tensors. An adapter saved from partitioned ZeRO-3 weights
    (FastChat's bug) has no or empty tensors and fails here."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llama_sft.model.trained import is_adapter_dir, load_trained

    run_dir = Path(run_dir)
    if is_adapter_dir(run_dir):
        adapter = load_file(run_dir / "adapter_model.safetensors")
        assert adapter, "adapter file holds no tensors"
        assert all(t.numel() > 0 for t in adapter.values()), {k: tuple(t.shape) for k, t in adapter.items()}
        lora_b = {k: t for k, t in adapter.items() if "lora_B" in k}
        assert lora_b and all(t.abs().sum() > 0 for t in lora_b.values()), (
            "lora_B is still all zeros: nothing trained"
        )
    model, _, _ = load_trained(run_dir, merge=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).state_dict()
    trained = model.state_dict()
    assert trained.keys() == base.keys()
    for name, tensor in trained.items():
        assert tensor.numel() > 0 and tensor.shape == base[name].shape, name
    changed = [name for name, tensor in trained.items() if not torch.equal(tensor, base[name])]
    assert changed, "the saved model equals the base model"
    return changed
