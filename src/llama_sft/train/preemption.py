"""Stop cleanly when the cluster asks: SIGTERM or SIGUSR1 -> finish the step, checkpoint, exit 75.

SLURM (`--signal=USR1@120`, preemption, `scancel`), Kubernetes and spot instances send SIGTERM (or a
chosen signal) some time before they kill. The default action ends the process between
checkpoints and loses up to `save_steps` of work. Here the handler only sets a flag; at the end of
the current optimizer step every rank learns whether any rank was signalled (one tiny all-reduce
per step, so ranks that did not get the signal still stop with the others instead of hanging in
the next collective), the Trainer writes a complete `checkpoint-N/`, training stops and the process
exits with PREEMPTED_EXIT_CODE, which a requeue script can tell from a failure (1) or a config
error (2). `--resume_from_checkpoint auto` then continues from that checkpoint.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger("llama_sft")

PREEMPTED_EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: "temporary failure, the user is invited to retry"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARKER = "PREEMPTED"  # written into output_dir with the checkpoint's name: evidence for a requeue script


class Preempted(Exception):
    """Raised after the checkpoint is written; the CLI turns it into PREEMPTED_EXIT_CODE."""

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(
            f"preempted at step {step}: saved {checkpoint}; resume with --resume_from_checkpoint auto"
        )
        self.step, self.checkpoint = step, checkpoint


class PreemptionHandler(TrainerCallback):
    """Installs the handlers for the length of `trainer.train()` and turns a signal into a clean stop."""

    def __init__(self):
        self.signalled: int | None = None  # the signal this process received
        self.stopped_at: int | None = None  # the step all ranks stopped after
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signalled is None:
            log.warning(
                "received %s: finishing this optimizer step, then saving a checkpoint",
                signal.Signals(signum).name,
            )
        self.signalled = signum

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if any_rank(self.signalled is not None, args.device):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def checkpoint(self, output_dir: str | Path) -> str | None:
        if self.stopped_at is None:
            return None
        path = Path(output_dir) / f"checkpoint-{self.stopped_at}"
        return str(path) if (path / "trainer_state.json").exists() else None


def any_rank(flag: bool, device) -> bool:
    """True when `flag` is true on any process (one all-reduce when several run)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def write_marker(output_dir: str | Path, step: int, checkpoint: str | None) -> None:
    import json

    path = Path(output_dir) / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"step": step, "checkpoint": checkpoint}) + "\n", encoding="utf-8")


def clear_marker(output_dir: str | Path) -> None:
    (Path(output_dir) / MARKER).unlink(missing_ok=True)
