"""`llama-sft merge`: a run (adapter or full) -> one standalone HF model directory."""

from __future__ import annotations

import json

# The numbers are export.merge_check.TOLERANCE (kept here so --help does not import torch; a test
# holds the two together).
TOLERANCE_HELP = (
    "largest allowed difference in any logit between the merged model and the adapter on its base, over "
    "a few short conversations in the run's template (default: 0.001 for a float32 merge, 1 for "
    "bfloat16/float16: what rounding alone explains)"
)


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "merge",
        help="merge an adapter into its base: one model dir for any HF server",
        formatter_class=formatter(),
        description="Write a standalone model: merged weights in safetensors, the config the run "
        "trained with (RoPE scaling included), a tokenizer whose chat_template renders exactly the "
        "training template, the stop tokens in generation_config.json, and the run record. vLLM, "
        "TGI or `llama-sft chat/serve/eval` then build the same prompt as training. Before writing, the "
        "merged model's logits are compared with the adapter's on its base over a few short "
        "conversations in the run's template; beyond the tolerance (0.001 for float32 merges, 1 for "
        "bfloat16/float16, any logit) nothing is written. QLoRA runs: the 4-bit base is loaded as in "
        "training (GPU, or CPU with bitsandbytes >= 0.50), dequantized to the run's compute dtype and "
        "merged, and checked against the adapter on the 4-bit base; the merged model matches the "
        "trained one up to rounding to that dtype.",
    )
    p.add_argument("run", metavar="RUN", help="a `llama-sft train` output directory")
    p.add_argument(
        "--out", "--output_dir", dest="out", required=True, metavar="DIR", help="where the merged model goes"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="saved weights dtype (auto: the base checkpoint's; QLoRA: the compute dtype)",
    )
    p.add_argument(
        "--qlora_base",
        default="dequantized",
        choices=["dequantized", "original"],
        help="QLoRA only: merge into the dequantized 4-bit base as trained (default), or into the original "
        "unquantized weights (works without bitsandbytes; outputs differ by the NF4 quantization error)",
    )
    p.add_argument("--tolerance", type=float, default=None, metavar="X", help=TOLERANCE_HELP)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args) -> int:
    from rich.console import Console

    from llama_sft.export import merge_run

    notes = merge_run(
        args.run,
        args.out,
        dtype=args.dtype,
        qlora_base=args.qlora_base,
        overwrite=args.overwrite,
        tolerance=args.tolerance,
    )
    if args.json:
        print(json.dumps({"out": args.out, **notes}, indent=2, default=str))
        return 0
    console = Console(highlight=False)
    console.print(f"[bold]merged[/] {args.run} -> {args.out}: {notes['merge']}")
    console.print(
        f"  dtype {notes['dtype']}, RoPE {notes['rope_parameters']}, stop strings {notes['stop_strings']} "
        f"(token ids {notes['stop_token_ids']} in generation_config.json)"
    )
    if "check" in notes:
        check = notes["check"]
        console.print(
            f"  check: logits within {check['max_abs_logit_diff']:.2g} of the adapter's (tolerance "
            f"{check['tolerance']:g}, {check['tokens']} tokens of {check['prompts']} prompts, next-token "
            f"agreement {check['top1_agreement']:.0%})"
        )
    console.print(f"  next: `llama-sft chat {args.out}` · `llama-sft serve {args.out}` · any HF-based server")
    return 0
