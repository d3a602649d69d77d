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
    p.add_argument("--n_train", type=int, default=None, help="training conversations to generate")
    p.add_argument(
        "--tools",
        action="store_true",
        help="the tool-calling demo instead: train on the shipped tool set (get_weather, get_time) and "
        "score calls on held-out cities (default output runs/tool-demo, 5 epochs)",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..demo import run_demo

    if args.tools:
        from ..tool_demo import run_tool_demo

        out = args.output_dir if args.output_dir != "runs/demo" else "runs/tool-demo"
        epochs = args.epochs if args.epochs != 4.0 else 5.0
        result = run_tool_demo(out, epochs=epochs, seed=args.seed, n_train=args.n_train)
        return 0 if result["after"]["call"] > result["before"]["call"] else 1
    args.n_train = 2400 if args.n_train is None else args.n_train

    result = run_demo(args.output_dir, epochs=args.epochs, seed=args.seed, n_train=args.n_train)
    return 0 if result["after"]["exact_match"] > result["before"]["exact_match"] else 1
