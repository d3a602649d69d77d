"""`llama-sft launch`: the printed commands are the ones docs/distributed.md shows, and they carry
what restarts and preemption need."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from llama_sft.cli.main import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "distributed.md"


def launch_examples() -> list[tuple[list[str], str]]:
    """(arguments, output) for each ```bash block that runs `llama-sft launch`, paired with the block after it."""
    blocks = re.findall(r"```(?:bash|text)\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    pairs = []
    for block, following in zip(blocks, blocks[1:], strict=False):
        if block.startswith("llama-sft launch"):
            args = shlex.split(block.replace("\\\n", " "))[2:]
            pairs.append((args, following))
    return pairs


def test_docs_show_what_the_launcher_prints(capsys, tmp_path):
    examples = launch_examples()
    assert len(examples) == 2 and any("--slurm" in args for args, _ in examples)
    for args, shown in examples:
        if "-o" in args:  # the docs write the script to a file; print it here
            at = args.index("-o")
            args = args[:at] + args[at + 2 :]
        assert main(["launch", *args]) == 0
        assert capsys.readouterr().out == shown, args


def test_torchrun_command_restarts_from_checkpoints_and_forwards_preemption(capsys):
    args = ["--nodes", "2", "--gpus", "4", "--master", "10.0.0.1", "--port", "29400"]
    assert main(["launch", *args, "--", "--model_name_or_path", "m", "--output_dir", "out dir"]) == 0
    out = capsys.readouterr().out
    torchrun = out[out.index("torchrun") :].replace("\\\n    ", "")
    parsed = shlex.split(torchrun)
    assert parsed[parsed.index("--rdzv_endpoint") + 1] == "10.0.0.1:29400"
    assert parsed[parsed.index("--nnodes") + 1] == "2" and parsed[parsed.index("--nproc_per_node") + 1] == "4"
    assert "SIGUSR1" in parsed[parsed.index("--signals-to-handle") + 1]
    assert parsed[-2:] == ["--resume_from_checkpoint", "auto"]  # restarts continue, not start over
    assert parsed[parsed.index("--output_dir") + 1] == "out dir"  # quoted for the shell
    assert "llama-sft data prepare --model_name_or_path m --output_dir 'out dir'" in out


def test_sbatch_script_requeues_on_preemption(tmp_path):
    script = tmp_path / "train.sbatch"
    args = ["launch", "--nodes", "3", "--gpus", "8", "--slurm", "-o", str(script)]
    assert (
        main([*args, "--", "--output_dir", "/shared/x", "--resume_from_checkpoint", "/shared/x/checkpoint-9"])
        == 0
    )
    text = script.read_text()
    assert "#SBATCH --nodes=3" in text and "#SBATCH --signal=USR1@" in text
    assert 'if [ -f "/shared/x/PREEMPTED" ]; then scontrol requeue' in text
    assert text.count("--resume_from_checkpoint") == 2  # the user's own path kept, not a second one added
