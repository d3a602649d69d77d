"""`llama-sft demo`: the README's first command."""

from __future__ import annotations


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "demo",
        help="train a tiny model on CPU in minutes and show it learn",
        formatter_class=formatter(),
        description="Build a tiny random LLaMA and a tokenizer locally, write a synthetic multi-turn "
        "dataset, fine-tune on CPU, and compare held-out loss and exact-match answers before and "
        "after. Nothing is downloaded.",
    )
    p.add_argument("--output_dir", default="runs/demo")
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_train", type=int, default=2400, help="training conversations to generate")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..demo import run_demo

    result = run_demo(args.output_dir, epochs=args.epochs, seed=args.seed, n_train=args.n_train)
    return 0 if result["after"]["exact_match"] > result["before"]["exact_match"] else 1
