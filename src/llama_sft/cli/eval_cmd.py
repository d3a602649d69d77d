"""`llama-sft eval`: loss and perplexity, scored generations and long-context loss for a run or model."""

from __future__ import annotations

import json


def add_model_arguments(p) -> None:
    """Flags shared by eval, chat and serve for loading RUN_OR_MODEL."""
    p.add_argument(
        "model",
        metavar="RUN_OR_MODEL",
        help="a `llama-sft train` output (adapter or full), a `llama-sft merge` output or a local HF model dir",
    )
    p.add_argument(
        "--conv_template",
        default=None,
        help="override the saved template (needed only for a model without one); see `llama-sft templates`",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (auto: float32)",
    )
    p.add_argument(
        "--merge", action="store_true", help="merge an adapter into the base in memory (faster decoding)"
    )


def add_sampling_arguments(p, max_new_tokens: int) -> None:
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument(
        "--seed", type=int, default=None, help="seed for sampling (eval uses seed + conversation index)"
    )


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "eval",
        help="loss, perplexity and scored generations on a data file",
        formatter_class=formatter(),
        description="Evaluate a run on conversations: loss and perplexity per supervised token "
        "(overall and per reply), tokenized exactly as in training; an answer to each "
        "conversation's last user turn, written with the reference to generations.jsonl and scored "
        "by exact match and ROUGE-L; with --long-context, loss by position up to the trained length "
        "(a check on RoPE scaling). Writes eval_results.json next to the generations.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="FILE",
        help="conversations (JSON/JSONL/parquet, any format)",
    )
    p.add_argument("--output_dir", "--out", default=None, help="where results go (default: RUN/eval)")
    p.add_argument("--data_format", default="auto", choices=["auto", "sharegpt", "openai", "alpaca"])
    p.add_argument(
        "--skip_bad", action="store_true", help="skip records with errors (counted in the results)"
    )
    p.add_argument("--strict", action="store_true", help="treat repairs as errors")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N conversations")
    p.add_argument(
        "--max_length", type=int, default=None, help="truncate longer conversations (default: trained length)"
    )
    p.add_argument(
        "--masking",
        default=None,
        choices=["train_on_assistant", "train_on_last", "train_on_all"],
        help="which tokens the loss covers (default: the run's)",
    )
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--no_generate", action="store_true", help="loss only, no generations")
    add_sampling_arguments(p, max_new_tokens=128)
    p.add_argument(
        "--long-context",
        "--long_context",
        dest="long_context",
        action="store_true",
        help="also measure loss by position bucket over rows of the trained length",
    )
    p.add_argument(
        "--context_length", type=int, default=None, help="row length for --long-context (default: trained)"
    )
    p.add_argument("--windows", type=int, default=4, help="rows for --long-context")
    p.add_argument("--buckets", type=int, default=8, help="position buckets for --long-context")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from rich.console import Console

    from llama_sft.config import ConfigError
    from llama_sft.evaluate import EvalOptions, print_summary, run_eval
    from llama_sft.generation import SamplingParams, load_for_inference

    for flag in ("batch_size", "windows", "buckets", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    model, tokenizer, template = load_for_inference(
        args.model, args.conv_template, merge=args.merge, dtype=args.dtype, device=args.device
    )
    options = EvalOptions(
        data=args.data,
        output_dir=args.output_dir,
        data_format=args.data_format,
        skip_bad=args.skip_bad,
        strict=args.strict,
        limit=args.limit,
        max_length=args.max_length,
        masking=args.masking,
        batch_size=args.batch_size,
        generate=not args.no_generate,
        sampling=SamplingParams(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        ),
        long_context=args.long_context,
        context_length=args.context_length,
        windows=args.windows,
        buckets=args.buckets,
        progress=not args.no_progress and not args.json,
    )
    result = run_eval(model, tokenizer, template, args.model, options)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print_summary(result, Console())
    return 0
