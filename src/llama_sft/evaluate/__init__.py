"""Evaluation of a trained run: supervised-token loss per reply, scored generations, loss by position."""

from .generations import eval_prompt, generate_answers, prompt_and_reference, score_answers
from .loss import position_loss, supervised_loss
from .run import EvalOptions, print_summary, run_eval

__all__ = [
    "EvalOptions",
    "eval_prompt",
    "generate_answers",
    "position_loss",
    "print_summary",
    "prompt_and_reference",
    "run_eval",
    "score_answers",
    "supervised_loss",
]
