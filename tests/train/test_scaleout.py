"""Scale-out that survives clusters, on CPU with gloo: two torchrun "nodes" on loopback (DDP and
ZeRO-3) with tokenization slowed past the collective timeout, preemption by SIGTERM, resume on a
different number of processes, and a worker killed and restarted by `torchrun --max-restarts`.

Every run trains the same tiny LoRA model for 4 steps on a global batch of 8 (4 per process x
accumulation x processes), saving every 2 steps, with dropout off and a seeded random sampler, so
each is compared step by step with one uninterrupted single-process run (`reference`). Runs are
shared between tests to keep the multi-process cost down (each process spends most of its time
importing torch and transformers).

Signals come from `LLAMA_SFT_TEST_FAULT` (train/fault_injection.py): the process sends itself a real
signal at the end of a chosen step, because a signal sent from outside races with 4 fast steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llama_sft.train.preemption import MARKER, PREEMPTED_EXIT_CODE, PreemptionHandler

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # generous: a shared, overloaded CI machine can be several times slower
STEPS = 4
REL = 1e-5  # same batches, same updates: only summation order differs between 1 and 2 processes


def records(n: int = 48) -> list[dict]:
    return [
        {
            "id": f"conv_{i}",
            "conversations": [
                {"from": "human", "value": f"Convert {i + 3} km to metres."},
                {"from": "gpt", "value": f"{i + 3} km is {i + 3}000 m."},
            ],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir) -> dict:
    root = tmp_path_factory.mktemp("scaleout")
    data = root / "train.json"
    data.write_text(json.dumps(records()), encoding="utf-8")
    return {"root": root, "model": tiny_model_dir, "data": data}


def train_args(work: dict, out: Path, accumulation: int, *extra: str) -> list[str]:
    return [
        "train",
        "--model_name_or_path",
        str(work["model"]),
        "--data_path",
        str(work["data"]),
        "--output_dir",
        str(out),
        "--method",
        "lora",
        "--lora_dropout",
        "0",
        "--max_steps",
        str(STEPS),
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        str(accumulation),
        "--train_sampling_strategy",
        "random",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--model_max_length",
        "64",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--disable_tqdm",
        "True",
        *extra,
    ]


def env(cache: Path, **extra: str) -> dict:
    out = dict(os.environ)
    out.update(
        CUDA_VISIBLE_DEVICES="",
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        LLAMA_SFT_CACHE=str(cache),
    )
    out.pop("LLAMA_SFT_TEST_FAULT", None)
    out.pop("LLAMA_SFT_TEST_SLOW_TOKENIZE_S", None)
    out.update(extra)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single(args: list[str], environ: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "llama_sft.cli.main", *args]
    return subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True, timeout=TIMEOUT_S)


def torchrun(nproc: int, args: list[str], environ: dict, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        *flags,
        "-m",
        "llama_sft.cli.main",
        *args,
        "--ddp_backend",
        "gloo",
    ]


def run_ok(cmd_or_args, environ: dict, log: Path) -> str:
    if cmd_or_args[0] == "train":
        result = single(cmd_or_args, environ)
    else:
        result = subprocess.run(
            cmd_or_args, cwd=REPO, env=environ, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    text = result.stdout + result.stderr
    log.write_text(text, encoding="utf-8")
    assert result.returncode == 0, f"exit {result.returncode} ({log}):\n" + "\n".join(text.splitlines()[-40:])
    return text


def two_nodes(work: dict, out: Path, environs: list[dict], *extra: str) -> list[str]:
    """Two torchrun processes, one worker each, meeting by c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node, environ in enumerate(environs):
        flags = ["--nnodes", "2", "--node_rank", str(node), "--rdzv_backend", "c10d"]
        flags += ["--rdzv_endpoint", endpoint, "--rdzv_id", out.name]
        cmd = torchrun(1, train_args(work, out, 1, *extra), environ, *flags)
        procs.append(  # own session: on failure the node's torchrun and its worker go together
            subprocess.Popen(
                cmd,
                cwd=REPO,
                env=environ,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    logs = []
    try:
        for node, proc in enumerate(procs):
            text = proc.communicate(timeout=TIMEOUT_S)[0].decode(errors="replace")
            (out.parent / f"{out.name}-node{node}.log").write_text(text, encoding="utf-8")
            tail = "\n".join(text.splitlines()[-40:])
            assert proc.returncode == 0, f"node {node} exit {proc.returncode}:\n{tail}"
            logs.append(text)
    finally:
        for proc in procs:  # a failed node must not leave the other waiting in the rendezvous
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this test started: torchrun and its worker
                proc.wait(timeout=60)
    return logs


def losses(out: Path) -> dict[int, float]:
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


def assert_same_losses(out: Path, reference: dict[int, float], steps=range(1, STEPS + 1)):
    got = losses(out)
    assert sorted(got) == sorted(steps), got
    for step in steps:
        assert got[step] == pytest.approx(reference[step], rel=REL), (step, got, reference)


def world_file(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "llama_sft_world.json").read_text())


@pytest.fixture(scope="module")
def reference(work) -> dict:
    """One process, accumulation 2: the global batch of 8 every other run must reproduce."""
    out = work["root"] / "reference"
    run_ok(train_args(work, out, 2), env(work["root"] / "cache-ref"), work["root"] / "reference.log")
    trace = losses(out)
    assert sorted(trace) == [1, 2, 3, 4] and trace[4] < trace[1], trace
    assert world_file(out / "checkpoint-2")["world_size"] == 1
    return {"out": out, "losses": trace}


@pytest.fixture(scope="module")
def two_node_ddp(work, reference) -> Path:
    """Two nodes sharing a cache directory; tokenization takes 25 s, the collective timeout is 10 s (room for
    the ranks' ordinary skew on a busy machine)."""
    out = work["root"] / "ddp2"
    shared = work["root"] / "cache-shared"
    slow = env(shared, LLAMA_SFT_TEST_SLOW_TOKENIZE_S="25")
    two_nodes(work, out, [slow, slow], "--ddp_timeout", "10")
    return out


@pytest.mark.slow
def test_two_nodes_ddp_outlast_slow_tokenization_and_equal_one_node(work, reference, two_node_ddp):
    # The rank that did not take the cache lock waited 25 s on the lock, 2.5 times --ddp_timeout:
    # a barrier (the old main_process_first) would have timed out.
    assert_same_losses(two_node_ddp, reference["losses"])
    record = json.loads((two_node_ddp / "run_record.json").read_text())
    assert record["distributed"]["world_size"] == 2 and record["distributed"]["mode"] == "ddp"
    # A shared filesystem: tokenized once for the cluster, published by rename, no leftovers.
    cache = work["root"] / "cache-shared" / "data"
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "meta.json").exists(), list(cache.iterdir())
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert world_file(two_node_ddp / "checkpoint-2")["world_size"] == 2
    # Each rank's host memory around loading is measured and gathered into the record.
    host = record["host_memory"]
    assert [h["rank"] for h in host] == [0, 1] and all(
        h["anon_before_load_mb"] > 0 and h["load_peak_mb"] >= h["kept_after_prepare_mb"] for h in host
    )


@pytest.mark.slow
def test_two_nodes_zero3_equal_one_node_and_refuse_another_world_size(work, reference):
    from llama_sft.config import ConfigError
    from llama_sft.train.world_resume import check_world_resume

    out = work["root"] / "zero3"
    # No shared filesystem: each node has its own cache and tokenizes once.
    caches = [work["root"] / f"cache-node{n}" for n in (0, 1)]
    two_nodes(work, out, [env(c) for c in caches], "--deepspeed", str(REPO / "configs/deepspeed/zero3.json"))
    assert_same_losses(out, reference["losses"])
    info = json.loads((out / "run_record.json").read_text())["distributed"]
    assert info["requested"] == "zero3" and info["zero3_params"] > 0 and info["world_size"] == 2
    for cache in caches:
        assert len([p for p in (cache / "data").iterdir() if p.is_dir()]) == 1
    # ZeRO's optimizer state is partitioned per rank: resuming it on one process is refused up front.
    now = {"world_size": 1, "strategy": "zero3", "per_device_train_batch_size": 4}
    now |= {"gradient_accumulation_steps": 2, "global_batch_size": 8}
    with pytest.raises(ConfigError, match="sharded per rank.*ds_to_universal"):
        check_world_resume(out / "checkpoint-2", now)


@pytest.mark.slow
def test_resume_two_processes_on_one(work, reference, two_node_ddp):
    """2 -> 1: the DDP checkpoint of step 2 continues on one process with accumulation 2."""
    out = work["root"] / "two-to-one"
    out.mkdir()
    shutil.copytree(two_node_ddp / "checkpoint-2", out / "checkpoint-2")
    environ = env(work["root"] / "cache-ref")
    log = run_ok(train_args(work, out, 2, "--resume_from_checkpoint", "auto"), environ, out.parent / "21.log")
    assert "saved by 2 process(es), this run has 1" in log
    assert_same_losses(out, reference["losses"], steps=[3, 4])
    # A different global batch is refused (train calls this before the model loads).
    from llama_sft.config import ConfigError
    from llama_sft.train.world_resume import check_world_resume

    now = {"world_size": 1, "strategy": "ddp", "per_device_train_batch_size": 4}
    now |= {"gradient_accumulation_steps": 1, "global_batch_size": 4}
    with pytest.raises(ConfigError, match="global batch of 8.*--gradient_accumulation_steps 2"):
        check_world_resume(out / "checkpoint-2", now)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_resumes_on_two_processes(work, reference):
    """SIGTERM after step 1 of a single-process run: the step completes, checkpoint-1 is written and the
    exit code is 75. The checkpoint then resumes on 2 processes (1 -> 2, accumulation 2 -> 1) and ends
    exactly where the uninterrupted run ends."""
    out = work["root"] / "preempted"
    cache = work["root"] / "cache-ref"
    result = single(train_args(work, out, 2), env(cache, LLAMA_SFT_TEST_FAULT="step=1,signal=TERM"))
    (work["root"] / "preempted.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    assert result.returncode == PREEMPTED_EXIT_CODE, result.stderr[-3000:]
    assert "received SIGTERM" in result.stderr
    assert (out / "checkpoint-1" / "trainer_state.json").exists()
    assert json.loads((out / MARKER).read_text())["step"] == 1
    assert not (out / "adapter_model.safetensors").exists()  # no final save after a preemption
    assert json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1

    flags = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    cmd = torchrun(2, train_args(work, out, 1, "--resume_from_checkpoint", "auto"), {}, *flags)
    log = run_ok(cmd, env(cache), work["root"] / "resumed.log")
    assert "checkpoint-1 was saved by 1 process(es), this run has 2" in log
    assert_same_losses(out, reference["losses"])
    assert not (out / MARKER).exists()  # the marker describes the latest attempt only


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_from_the_last_checkpoint(work, reference):
    out = work["root"] / "restarted"
    environ = env(work["root"] / "cache-ref", LLAMA_SFT_TEST_FAULT="step=3,signal=KILL,attempt=0")
    flags = ["--max-restarts", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}"]
    cmd = torchrun(1, train_args(work, out, 2, "--resume_from_checkpoint", "auto"), environ, *flags)
    log = run_ok(cmd, environ, work["root"] / "restarted.log")
    assert "exitcode: -9" in log, log[-3000:]  # torchrun saw the worker die and restarted it
    assert f"resuming from {out / 'checkpoint-2'}" in log
    # Steps 1-2 ran in the first attempt; 3 was killed before it was logged and re-ran after the restart.
    assert_same_losses(out, reference["losses"])
    assert (out / "adapter_model.safetensors").exists()


def test_sigusr1_is_turned_into_a_clean_stop_at_the_step_end():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    handler = PreemptionHandler()
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    state, control = TrainerState(), TrainerControl()
    previous = signal.getsignal(signal.SIGUSR1)
    handler.on_train_begin(args, state, control)
    try:
        state.global_step = 7
        handler.on_step_end(args, state, control)
        assert not control.should_training_stop  # no signal yet: nothing changes
        os.kill(os.getpid(), signal.SIGUSR1)
        handler.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop and handler.stopped_at == 7
    finally:
        handler.on_train_end(args, state, control)
    assert signal.getsignal(signal.SIGUSR1) == previous
