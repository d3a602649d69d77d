"""`llama-sft launch --nodes N --gpus G [--slurm] -- TRAIN ARGS`: the exact multi-node commands.

Users hand-writing rendezvous flags get one wrong per node. This prints the commands
docs/distributed.md shows (tests check the two agree): `llama-sft data prepare` first, so no rank
tokenizes while others wait, then one `torchrun` per node with c10d rendezvous, restarts from the last
checkpoint (`--max-restarts` with `--resume_from_checkpoint auto`) and SIGUSR1 forwarded to the
workers (preemption warning); with `--slurm`, an sbatch script that does the same and requeues the
job when training stopped on a preemption signal.
"""

from __future__ import annotations

import shlex
import sys

PORT = 29500
HANDLED_SIGNALS = "SIGTERM,SIGINT,SIGUSR1"  # torchrun forwards these to the workers (train/preemption.py)


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "launch",
        help="print the torchrun commands (or an sbatch script) for N nodes x G GPUs",
        formatter_class=formatter(),
        description="Print the commands that run `llama-sft train` on NODES machines with GPUS processes each: "
        "`llama-sft data prepare` (tokenize once, before the ranks wait on each other), then one torchrun "
        "per node with c10d rendezvous, restarts from the last checkpoint and preemption signals forwarded. "
        "--slurm writes an sbatch script instead. Train's arguments follow `--`.",
        epilog="Example: llama-sft launch --nodes 2 --gpus 8 --master node0.cluster -- "
        "configs/llama2-70b-lora-zero3.yaml --data_path data.json --output_dir /shared/runs/70b",
    )
    p.add_argument("--nodes", type=int, required=True, help="number of machines")
    p.add_argument("--gpus", type=int, required=True, help="processes (GPUs) per machine")
    p.add_argument(
        "--master", default="node0.cluster", help="host of the rendezvous (any node; ignored with --slurm)"
    )
    p.add_argument("--port", type=int, default=PORT, help="rendezvous port on --master")
    p.add_argument("--job-id", default="llama-sft", help="rendezvous id: the same on every node")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="times torchrun restarts failed workers; each restart resumes from the newest checkpoint",
    )
    p.add_argument("--slurm", action="store_true", help="print an sbatch script")
    p.add_argument("--job-name", default="llama-sft", help="SLURM job name")
    p.add_argument("--time", default="48:00:00", help="SLURM time limit")
    p.add_argument("--cpus-per-task", type=int, default=96, help="SLURM CPUs per node")
    p.add_argument("-o", "--output", default=None, help="write to this file instead of printing")
    p.add_argument("train_args", nargs="*", help="llama-sft train arguments (after --)")
    p.set_defaults(func=cmd_launch)


def with_resume(train_args: list[str]) -> list[str]:
    """torchrun's restarts and a requeued job continue only with --resume_from_checkpoint."""
    if any(a.split("=")[0] == "--resume_from_checkpoint" for a in train_args):
        return list(train_args)
    return [*train_args, "--resume_from_checkpoint", "auto"]


def _lines(*parts: str) -> str:
    return " \\\n    ".join(p for p in parts if p)


def torchrun_command(
    nodes: int,
    gpus: int,
    train_args: list[str],
    endpoint: str,
    job_id: str,
    max_restarts: int = 3,
) -> str:
    return _lines(
        f"torchrun --nnodes {nodes} --nproc_per_node {gpus}",
        f"--rdzv_id {job_id} --rdzv_backend c10d --rdzv_endpoint {endpoint}",
        f"--max-restarts {max_restarts} --signals-to-handle {HANDLED_SIGNALS}",
        "-m llama_sft.cli.main train " + shlex.join(with_resume(train_args)),
    )


def prepare_command(train_args: list[str]) -> str:
    return "llama-sft data prepare " + shlex.join(train_args)


def plain_script(
    nodes: int, gpus: int, train_args: list[str], master: str, port: int, job_id: str, max_restarts: int
) -> str:
    return (
        "# 1. on each node (once in all with --data_cache_dir on storage every node shares):\n"
        f"{prepare_command(train_args)}\n"
        f"# 2. on each of the {nodes} node(s), the same command:\n"
        f"{torchrun_command(nodes, gpus, train_args, f'{master}:{port}', job_id, max_restarts)}\n"
    )


def sbatch_script(
    nodes: int,
    gpus: int,
    train_args: list[str],
    port: int = PORT,
    job_name: str = "llama-sft",
    time: str = "48:00:00",
    cpus_per_task: int = 96,
    max_restarts: int = 3,
) -> str:
    torchrun = torchrun_command(
        "$SLURM_NNODES", gpus, train_args, f"$MASTER_ADDR:{port}", "$SLURM_JOB_ID", max_restarts
    ).replace("--nnodes $SLURM_NNODES", '--nnodes "$SLURM_NNODES"')
    return f"""#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1        # one torchrun per node
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus_per_task}
#SBATCH --time={time}
#SBATCH --signal=USR1@300          # 5 minutes before the time limit: checkpoint and stop
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out

set -uo pipefail
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export HF_HUB_OFFLINE=1            # weights downloaded beforehand to shared storage
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # a dead rank stops the job instead of hanging it
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=280  # time the workers get to finish a step and save

srun --ntasks-per-node=1 {prepare_command(train_args)} || exit 2
srun --kill-on-bad-exit=1 {torchrun}
status=$?
# train leaves PREEMPTED in its output directory when a signal stopped it after a checkpoint
if [ -f "{output_dir(train_args)}/PREEMPTED" ]; then scontrol requeue "$SLURM_JOB_ID"; exit 0; fi
exit $status
"""


def output_dir(train_args: list[str]) -> str:
    for i, arg in enumerate(train_args):
        if arg == "--output_dir" and i + 1 < len(train_args):
            return train_args[i + 1]
        if arg.startswith("--output_dir="):
            return arg.split("=", 1)[1]
    return "$OUTPUT_DIR"  # set in a YAML run file: the user fills it in


def cmd_launch(args) -> int:
    from .errors import UsageError

    if args.nodes < 1 or args.gpus < 1:
        raise UsageError("--nodes and --gpus must be at least 1")
    if args.slurm:
        text = sbatch_script(
            args.nodes,
            args.gpus,
            args.train_args,
            args.port,
            args.job_name,
            args.time,
            args.cpus_per_task,
            args.max_restarts,
        )
    else:
        text = plain_script(
            args.nodes, args.gpus, args.train_args, args.master, args.port, args.job_id, args.max_restarts
        )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
