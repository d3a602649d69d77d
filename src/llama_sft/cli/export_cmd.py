"""`llama-sft export`: a run (adapter or full) or a model directory -> GGUF (+ Ollama Modelfile) or
safetensors. `--format safetensors` is `llama-sft merge`, through the same function."""

from __future__ import annotations

import json

from .merge_cmd import TOLERANCE_HELP

FORMATS = ("gguf", "safetensors")


def register(subparsers) -> None:
    from llama_sft.export.gguf import LLAMA_CPP_OUTTYPES, OUTTYPES

    from .main import formatter

    p = subparsers.add_parser(
        "export",
        help="export a run as GGUF for llama.cpp / Ollama (or merged safetensors)",
        formatter_class=formatter(),
        description="Write a run as one GGUF file for llama.cpp, Ollama or LM Studio, and an Ollama "
        "Modelfile beside it. Adapter runs (LoRA, QLoRA) are merged first, as `llama-sft merge` does. "
        "The file carries the llama architecture's tensors (Q/K rows in llama.cpp's rotary layout), "
        "RoPE base and scaling as trained, GQA, norm eps and context length, the training tokenizer "
        "(SentencePiece for LLaMA-1/2, byte-level BPE with its pre-tokenizer for LLaMA-3/SmolLM2), "
        "BOS added once, and the training template as tokenizer.chat_template.\n\n"
        "  llama-sft export runs/my-chat --format gguf --outtype q8_0 -o out/my-chat.q8_0.gguf\n"
        "  ollama create my-chat -f out/Modelfile        # or: llama-cli -m out/my-chat.q8_0.gguf -cnv\n"
        "  llama-sft export runs/my-chat --format safetensors -o merged/   # = llama-sft merge",
    )
    p.add_argument(
        "run", metavar="RUN_OR_MODEL", help="a `llama-sft train` output directory or a model directory"
    )
    p.add_argument(
        "--format",
        default="gguf",
        choices=FORMATS,
        help="gguf (llama.cpp, Ollama) or safetensors (HF servers)",
    )
    p.add_argument(
        "--outtype",
        default="f16",
        type=str.lower,
        choices=[*OUTTYPES, *LLAMA_CPP_OUTTYPES],
        metavar="TYPE",
        help=f"GGUF weights: {', '.join(OUTTYPES)} (gguf package), or llama.cpp's k-quants "
        f"{', '.join(LLAMA_CPP_OUTTYPES)} (needs llama-cpp-python). Norms stay f32.",
    )
    p.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        default=None,
        metavar="PATH",
        help="GGUF file (default RUN/gguf/NAME-TYPE.gguf; the Modelfile goes beside it); for safetensors the directory (required)",
    )
    p.add_argument(
        "--qlora_base",
        default="dequantized",
        choices=["dequantized", "original"],
        help="QLoRA runs: merge into the dequantized 4-bit base as trained (bitsandbytes; CPU or GPU) or the original weights",
    )
    p.add_argument("--tolerance", type=float, default=None, metavar="X", help=TOLERANCE_HELP)
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="safetensors only: the saved weights' dtype",
    )
    p.add_argument(
        "--pre",
        default=None,
        help="GGUF, byte-level BPE only: llama.cpp's pre-tokenizer name, if not recognised",
    )
    p.add_argument("--no_modelfile", action="store_true", help="GGUF: do not write the Ollama Modelfile")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from rich.console import Console

    from llama_sft.config import ConfigError

    if args.format == "safetensors":
        from .merge_cmd import cmd_merge

        if not args.out:
            raise ConfigError("--format safetensors writes a directory: pass -o DIR")
        return cmd_merge(args)
    from llama_sft.export.gguf import export_gguf

    info = export_gguf(
        args.run,
        args.out,
        outtype=args.outtype,
        qlora_base=args.qlora_base,
        pre=args.pre,
        modelfile=not args.no_modelfile,
        overwrite=args.overwrite,
        tolerance=args.tolerance,
    )
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    console = Console(highlight=False)
    size = info["bytes"] / 2**20
    console.print(f"[bold]exported[/] {args.run} -> {info['gguf']} ({info['outtype']}, {size:,.1f} MiB)")
    console.print(
        f"  {info.get('merge')}; template {info['template']}; tokenizer {info['tokenizer']['model']}"
        f"{'/' + info['tokenizer']['pre'] if info['tokenizer']['pre'] else ''}, add BOS {info['tokenizer']['add_bos']}; "
        f"RoPE {info['rope']}"
    )
    if info.get("modelfile"):
        console.print(
            f"  next: `ollama create NAME -f {info['modelfile']}` · `llama-cli -m {info['gguf']} -cnv`"
        )
    return 0
