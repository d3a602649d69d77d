"""Test hook: deliver a real signal to this process at the end of a chosen optimizer step.

Tests of preemption and of torchrun restarts need a signal that arrives mid-run at a known step: a
signal sent from outside races with a run of a few fast steps. `LLAMA_SFT_TEST_FAULT` =
`step=N,signal=TERM|USR1|KILL[,rank=R][,attempt=A]` makes rank R (default 0) send itself that signal
after step N, on torchrun attempt A only (`TORCHELASTIC_RESTART_COUNT`, default 0), so the restarted
worker runs through. Unset (always, outside tests), nothing is installed.
"""

from __future__ import annotations

import os
import signal

from transformers import TrainerCallback

ENV = "LLAMA_SFT_TEST_FAULT"


class FaultInjection(TrainerCallback):
    def __init__(self, spec: str):
        fields = dict(part.split("=", 1) for part in spec.split(",") if part)
        self.step = int(fields["step"])
        self.signal = getattr(signal, "SIG" + fields["signal"].upper().removeprefix("SIG"))
        self.rank = int(fields.get("rank", 0))
        self.attempt = int(fields.get("attempt", 0))

    def on_step_end(self, args, state, control, **kwargs):
        here = int(os.environ.get("RANK", "0")) == self.rank
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == self.attempt
        if here and attempt and state.global_step == self.step:
            os.kill(os.getpid(), self.signal)


def fault_injection() -> list[TrainerCallback]:
    spec = os.environ.get(ENV)
    return [FaultInjection(spec)] if spec else []
