"""Every command in README.md's code blocks runs on CPU (with tiny or local substitutes), so the README
cannot rot: a command added later is picked up and run; one that cannot run here must be listed in
NOT_RUN with the reason and the test that covers it instead.

How a command runs: SUBSTITUTIONS swap hub ids, model paths and sizes for local stand-ins (a tiny
random LLaMA, small data files made here), `llama-sft train` gets TRAIN_FLAGS (1 step, no saving)
appended, and the program runs in this process (`llama_sft.cli.main.main`) inside a scratch
directory, in README order, so the data pipeline's outputs feed the next command as they would for
a user. A command passes when it exits 0 (`data validate`: 0 on clean data), or, for the commands in
MAY_REFUSE, stops with a one-line error naming the reason (CPU-only machines).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from llama_sft.cli.main import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Commands (by prefix) this test does not run: why, and what covers them instead.
NOT_RUN = {
    "make demo": "installs a fresh .venv; tests/test_demo.py runs the demo, CI runs `make test` itself",
    "make test": "installs a fresh .venv and runs this suite: it is what CI runs",
    "llama-sft demo --tools": "an 8-minute CPU fine-tune of SmolLM2 (and --tiny, minutes of a tiny model): "
    "tests/model/test_tool_demo_real.py runs the real one with 24 steps, tests/test_tool_demo_score.py its scoring",
    "deepspeed --num_gpus": "8 GPU processes; tests/train/test_fastchat_compat.py runs FastChat's DeepSpeed script",
    "torchrun --nproc_per_node": "8 GPU processes; tests/train/test_distributed.py launches 2 CPU processes",
    "accelerate launch": "a multi-process launcher with '...' for the flags; tests/train/test_distributed.py",
    "llama-sft serve": "a server that runs until stopped; tests/after/test_serve_cmd.py queries it (openai client)",
    "ollama create": "Ollama is not installable here; tests/export/test_ollama_template.py runs each Modelfile "
    "TEMPLATE through Go's text/template, Ollama's engine",
    "llama-cli": "llama.cpp's own binary; tests/export/test_llama_cpp.py loads the GGUF with llama.cpp "
    "(llama-cpp-python) and compares its greedy text with llama-sft chat",
}
# Text swapped in every command before it runs (longest first): hub ids and big models -> local ones.
SUBSTITUTIONS = {
    "meta-llama/Llama-2-7b-hf": "{tiny}",
    "/models/llama-2-7b-hf": "{tiny}",
    "--tokenizer DIR": "--tokenizer {tiny}",
    "runs/7b-lora": "runs/demo/model",  # merge: the run made by the `demo_run` step below
    "configs/": "{repo}/configs/",
    "--total 100000": "--total 60",  # the small files made here hold ~100 records
}
# Appended to every `llama-sft train` that trains (flags override YAML and earlier flags).
TRAIN_FLAGS = "--max_steps 1 --save_strategy no --report_to none --model_max_length 128 --disable_tqdm True"
# Standard input for commands that read it.
STDIN = {"llama-sft chat runs/demo/model": "Hello\n/exit\n"}
# Commands that may stop on a CPU-only machine with a one-line error containing this text, and why.
MAY_REFUSE: dict[str, tuple[str, str]] = {}
# README lines docs/notes/defects.md asks the lead to change (old -> new). While the old line is still
# in README.md the new one is run instead; once the README is updated, this entry must go.
PENDING_README_CHANGES: dict[str, str] = {}


def readme_commands(text: str) -> list[str]:
    """Shell commands in ```bash/sh/shell blocks: continuations joined, trailing comments dropped."""
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(re.sub(r"\s+", " ", line))
    return out


def test_readme_parses_into_commands():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert any(c.startswith("llama-sft train") for c in commands) and len(commands) > 10
    for old in PENDING_README_CHANGES:
        assert old in commands, f"README.md no longer has {old!r}: drop it from PENDING_README_CHANGES"


def reset_after_train() -> None:
    """An in-process run leaves accelerate's singletons and environment behind (see tests/train/conftest.py)."""
    import torch.distributed as dist
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture
def workdir(tmp_path, tiny_model_dir, monkeypatch):
    """Scratch directory with the README's input files, and a short demo run at runs/demo/model."""
    from sample_records import make_sharegpt_records

    monkeypatch.chdir(tmp_path)
    records = make_sharegpt_records(60)
    for name in ("sharegpt.json", "data.json", "raw.json"):
        Path(name).write_text(json.dumps(records), encoding="utf-8")
    Path("extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_sharegpt_records(40, seed=1)))
    Path("runs/demo/data").mkdir(parents=True)
    Path("runs/demo/data/heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:4]))
    saved = dict(os.environ)
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--data_path", "data.json", "--output_dir",
            "runs/demo/model", "--method", "lora", "--max_steps", "2", "--save_strategy", "no", "--report_to",
            "none", "--model_max_length", "128", "--disable_tqdm", "True"]  # fmt: skip
    assert main(argv) == 0
    reset_after_train()
    os.environ.clear()
    os.environ.update(saved)
    return tmp_path


def prepare(command: str, tiny: Path) -> str:
    command = PENDING_README_CHANGES.get(command, command)
    for old in sorted(SUBSTITUTIONS, key=len, reverse=True):
        command = command.replace(old, SUBSTITUTIONS[old].format(tiny=tiny, repo=REPO))
    if command.startswith("llama-sft data prepare") and "--model_name_or_path" not in command:
        command += f" --model_name_or_path {tiny}"  # the config names a hub model
    if command.startswith("llama-sft train") and "--help" not in command:
        if "--model_name_or_path" not in command:
            command += f" --model_name_or_path {tiny}"
        command += " " + TRAIN_FLAGS
    return command


def run_one(command: str, stdin: str | None, monkeypatch, capsys) -> tuple[int, str]:
    argv = shlex.split(command)[1:]
    saved = dict(os.environ)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin or ""))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --help
        code = exc.code or 0
    finally:
        if argv and argv[0] == "train":
            reset_after_train()
        os.environ.clear()
        os.environ.update(saved)
    captured = capsys.readouterr()
    return int(code or 0), captured.err


def test_every_readme_command_runs(workdir, tiny_model_dir, monkeypatch, capsys):
    failures, ran, skipped = [], [], []
    for original in readme_commands(README.read_text(encoding="utf-8")):
        reason = next((why for prefix, why in NOT_RUN.items() if original.startswith(prefix)), None)
        if reason is not None:
            skipped.append(original)
            continue
        if not original.startswith("llama-sft "):
            failures.append(f"{original!r}: not a llama-sft command; add it to NOT_RUN with the reason")
            continue
        command = prepare(original, tiny_model_dir)
        stdin = next((text for prefix, text in STDIN.items() if original == prefix), None)
        code, err = run_one(command, stdin, monkeypatch, capsys)
        ran.append(f"exit {code}: {command}")
        refusal = next((v for prefix, v in MAY_REFUSE.items() if original.startswith(prefix)), None)
        if code == 0:
            continue
        lines = [line for line in err.strip().splitlines() if line.strip()]
        if refusal and code == 2 and refusal[0] in err and len(lines) == 1:
            continue  # a one-line refusal with its reason (see MAY_REFUSE)
        failures.append(f"{original!r}\n  ran as {command!r}\n  exit {code}: {err.strip()[-1500:]}")
    print("\n".join(ran))  # shown with -s
    assert not failures, f"{len(failures)} README command(s) failed:\n" + "\n".join(failures)
    unused = [prefix for prefix in NOT_RUN if not any(command.startswith(prefix) for command in skipped)]
    assert len(ran) >= 15 and not unused, f"NOT_RUN entries no README command uses any more: {unused}"
