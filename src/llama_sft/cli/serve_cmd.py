"""`llama-sft serve`: an OpenAI-compatible HTTP API for a run or merged model."""

from __future__ import annotations

import os
from pathlib import Path

from .eval_cmd import add_model_arguments

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible /v1/chat/completions server",
        formatter_class=formatter(),
        description="Serve a run (adapter or full) or a merged model with OpenAI's chat completions "
        "API: GET /v1/models, POST /v1/chat/completions (streaming and not), GET /health. Prompts "
        "use the template saved with the run. Use it with any OpenAI client: "
        "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key=...). Needs `pip install 'llama-sft[serve]'`.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default loopback only; 0.0.0.0 exposes it)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--model_name", default=None, help="the model id clients pass (default: the directory name)"
    )
    p.add_argument(
        "--api_key",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: $LLAMA_SFT_API_KEY; none = no auth)",
    )
    p.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from llama_sft.cli.errors import err_console
    from llama_sft.config import ConfigError

    try:
        import uvicorn

        from llama_sft.serve import create_app
    except ImportError as exc:
        raise ConfigError(
            f"serve needs FastAPI and uvicorn ({exc.name} is missing): pip install 'llama-sft[serve]'"
        ) from None
    from llama_sft.generation import load_for_inference

    api_key = args.api_key or os.environ.get("LLAMA_SFT_API_KEY") or None
    if args.host not in LOOPBACK and not api_key:
        err_console.print(
            f"[yellow]warning:[/] serving on {args.host} without an API key: anyone who can reach this "
            "port can use the model (set --api_key or LLAMA_SFT_API_KEY)"
        )
    model, tokenizer, template = load_for_inference(
        args.model, args.conv_template, merge=args.merge, dtype=args.dtype, device=args.device
    )
    name = args.model_name or Path(args.model).resolve().name
    app = create_app(model, tokenizer, template, name, api_key=api_key)
    err_console.print(
        f"serving [bold]{name}[/] (template {template.name}) at http://{args.host}:{args.port}/v1"
        + (" · API key required" if api_key else ""),
        highlight=False,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
