"""`llama-sft`: the one entry point. Subcommands live in their own modules and register here."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module exposes `register(subparsers)`; order is the order shown in --help.
COMMAND_MODULES = [
    "llama_sft.cli.demo_cmd",
    "llama_sft.cli.train_cmd",
    "llama_sft.cli.data_cmd",
    "llama_sft.cli.templates_cmd",
    "llama_sft.cli.plan_cmd",
    "llama_sft.cli.eval_cmd",
    "llama_sft.cli.chat_cmd",
    "llama_sft.cli.merge_cmd",
    "llama_sft.cli.export_cmd",
    "llama_sft.cli.serve_cmd",
    "llama_sft.cli.fetch_model_cmd",
    "llama_sft.cli.launch_cmd",
]


def formatter():
    try:
        from rich_argparse import RawDescriptionRichHelpFormatter

        return RawDescriptionRichHelpFormatter
    except ImportError:  # pragma: no cover - rich-argparse is a dependency
        return argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-sft",
        description="Supervised fine-tuning of LLaMA-family chat models: LoRA, QLoRA and full fine-tuning, with loss "
        "masks derived from the rendered prompt, data validation, packing, a memory planner, eval, chat, merge and serve.",
        epilog="Start with `llama-sft demo` (trains a tiny model on CPU in minutes), then `llama-sft train --help`.",
        formatter_class=formatter(),
    )
    from llama_sft import __version__

    parser.add_argument("--version", action="version", version=f"llama-sft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def strip_local_rank(argv: list[str]) -> list[str]:
    """The deepspeed launcher passes `--local_rank=N` before our subcommand; the rank is also in the
    environment (LOCAL_RANK), so take it from the arguments and keep the environment in step."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg == "--local_rank":
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "0")
            os.environ.setdefault("LOCAL_RANK", value)
            i += 1 if "=" in arg else 2
            continue
        out.append(arg)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = strip_local_rank(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from llama_sft.quiet import quiet_third_party

    quiet_third_party()
    parser = build_parser()
    # `train` parses its own (HF-style) flags: hand it everything after the subcommand.
    if argv and argv[0] == "train":
        from llama_sft.cli.train_cmd import run_train

        return run_train(argv[1:])
    if argv[:2] == ["data", "prepare"]:  # takes train's flags, so it parses them the same way
        from llama_sft.cli.data_cmd import run_prepare

        return run_prepare(argv[2:])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from llama_sft.cli.errors import run_with_clean_errors

    return run_with_clean_errors(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
