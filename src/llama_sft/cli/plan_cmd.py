"""`llama-sft plan`: the settings (and the largest model) that fit a set of GPUs, with the peak
memory per GPU broken down. Pure arithmetic unless --probe: no torch import, well under a second."""

from __future__ import annotations

import json
from dataclasses import replace


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "plan",
        help="which settings and model fit your GPUs (peak memory per GPU, broken down)",
        formatter_class=formatter(),
        description="Estimate peak memory per GPU for every method x sharding (none/DDP, ZeRO-1/2/3, FSDP) x "
        "offload x gradient checkpointing, with the largest micro-batch that fits and the best choice. "
        "The model is a preset, a config.json, a model directory or a hub id (config only, no weights). "
        "See llama_sft/plan/memory.py for the formulas and benchmarks/results/plan_validation.md for "
        "predicted vs measured peaks.",
        epilog="Examples: `llama-sft plan --model llama2-7b --gpus 8 --gpu-memory 80GiB`; "
        "`llama-sft plan --largest --gpus 1 --gpu-memory 24GiB`; `llama-sft plan --model llama3-8b --json`.",
    )
    p.add_argument(
        "--model",
        help="preset (llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b), "
        "config.json, model directory or hub id",
    )
    p.add_argument("--gpus", type=int, help="GPUs per node (default: this machine's)")
    p.add_argument(
        "--gpu-memory", help="memory of one GPU, e.g. 80GiB, 80GB, 24GiB (default: this machine's)"
    )
    p.add_argument("--nodes", type=int, default=1, help="nodes (data-parallel ranks = gpus x nodes)")
    p.add_argument(
        "--host-memory",
        help="CPU RAM per node, e.g. 512GiB: offload rows must fit it "
        "(without it they are listed with the RAM they need, and --largest ignores offload)",
    )
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per row (model_max_length)")
    p.add_argument(
        "--method", choices=["full", "lora", "qlora"], help="only this method (default: all three)"
    )
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    p.add_argument(
        "--lora-targets",
        default=None,
        help="comma-separated projections (default: q,k,v,o,gate,up,down _proj, as train)",
    )
    p.add_argument(
        "--packing",
        choices=["none", "padded", "packed"],
        default="padded",
        help="batching; rows are planned at --seq-len tokens either way. none/padded: with sdpa or eager "
        "a padding mask reaches attention (a bias per layer, GQA heads repeated). packed: with sdpa, "
        "training switches to sdpa_packed (attention per conversation, no mask); eager gets a "
        "block-diagonal mask. flash_attention_2 never needs a mask",
    )
    p.add_argument(
        "--attn",
        choices=["sdpa", "flash_attention_2", "eager"],
        default="sdpa",
        help="attention implementation",
    )
    p.add_argument(
        "--precision",
        choices=["bf16", "mixed"],
        default="bf16",
        help="full fine-tuning without DeepSpeed: bf16 weights and optimizer states, or fp32 weights "
        "with bf16 autocast (DeepSpeed always keeps a fp32 master copy)",
    )
    p.add_argument(
        "--no-grad-accum",
        action="store_true",
        help="gradients do not live across micro-steps (gradient_accumulation_steps 1)",
    )
    p.add_argument(
        "--loss-impl",
        choices=["chunked", "plain", "liger"],
        default="chunked",
        help="training loss, as `llama-sft train --loss_impl`: chunked (default) never makes the full "
        "tokens x vocab logits; plain does (12 bytes x vocab per token at the start of backward)",
    )
    p.add_argument(
        "--activation-offloading",
        action="store_true",
        help="as `llama-sft train --activation_offloading`: saved activations wait in host RAM "
        "(reported in the notes), the GPU keeps about one layer's",
    )
    p.add_argument("--largest", action="store_true", help="the largest preset each method can train here")
    p.add_argument("--all", action="store_true", help="also list settings that do not fit")
    p.add_argument("--json", action="store_true", help="print JSON (a list of rows) instead of tables")
    p.add_argument(
        "--probe",
        action="store_true",
        help="train 2-3 real steps on this machine's GPU to find the true largest micro-batch "
        "of the best single-GPU setting (needs torch with CUDA)",
    )
    p.set_defaults(func=cmd_plan)


class PlanInputError(ValueError):
    """Bad or missing planner input; the message says what to pass."""


def _hardware(args) -> tuple[int, float, str]:
    from llama_sft.plan.hardware import detect_gpus, parse_memory

    if args.gpus is not None and args.gpus < 1:
        raise PlanInputError("--gpus must be >= 1")
    if args.nodes < 1:
        raise PlanInputError("--nodes must be >= 1")
    found = None
    if args.gpus is None or args.gpu_memory is None:
        found = detect_gpus()
        if found is None:
            raise PlanInputError(
                "no GPU found on this machine: pass --gpus and --gpu-memory (e.g. --gpus 8 "
                "--gpu-memory 80GiB)"
            )
    gpus = args.gpus if args.gpus is not None else found[0]
    memory = parse_memory(args.gpu_memory) if args.gpu_memory is not None else found[1]
    name = found[2] if found and args.gpu_memory is None else f"{memory / 1024**3:.0f} GiB GPU"
    return gpus, memory, name


def packing_attention(packing: str, attn: str) -> dict:
    """The attention kernel and mask a run with this packing gets, as `llama-sft train` sets them up."""
    if packing == "packed" and attn == "sdpa":
        return {"attn": "sdpa_packed", "attention_mask": False}  # train/run.py: use_packed_attention
    return {"attn": attn, "attention_mask": attn != "flash_attention_2"}


def cmd_plan(args) -> int:
    from rich.console import Console

    from llama_sft.cli.errors import err_console
    from llama_sft.plan.memory import Setting
    from llama_sft.plan.shapes import DEFAULT_TARGETS, ShapeError, load_shape

    console = Console(highlight=False)
    if not console.is_terminal or console.width < 150:
        console = Console(highlight=False, width=160)  # the breakdown table is wide; let it wrap
    try:
        if not args.largest and not args.model:
            raise PlanInputError("pass --model (a preset, config.json, directory or hub id) or --largest")
        if args.seq_len < 1 or args.lora_r < 1:
            raise PlanInputError("--seq-len and --lora-r must be >= 1")
        gpus, memory, gpu_name = _hardware(args)
        targets = (
            tuple(t.strip() for t in args.lora_targets.split(",")) if args.lora_targets else DEFAULT_TARGETS
        )
        base = Setting(
            seq_len=args.seq_len,
            world_size=gpus * args.nodes,
            lora_r=args.lora_r,
            lora_targets=targets,
            precision=args.precision,
            **packing_attention(args.packing, args.attn),
            grads_resident=not args.no_grad_accum,
            loss_impl=args.loss_impl,
            activation_offloading=args.activation_offloading,
        )
        methods = (args.method,) if args.method else None
        shape = load_shape(args.model) if args.model else None
        from llama_sft.plan.hardware import parse_memory

        host = parse_memory(args.host_memory) if args.host_memory else None
        if shape is not None:
            shape.lora_params(args.lora_r, targets)  # unknown target names fail here, with the valid ones
    except (PlanInputError, ShapeError, ValueError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    where = f"{gpus} x {gpu_name}" + (f" x {args.nodes} nodes" if args.nodes > 1 else "")
    limits = {"host_bytes": host, "gpus_per_node": gpus}
    if args.largest:
        return _largest(console, base, memory, methods, where, args, limits)
    return _plan(console, shape, base, memory, methods, where, args, limits)


def _plan(console, shape, base, memory, methods, where, args, limits) -> int:
    from llama_sft.plan.report import render_rows, setting_label
    from llama_sft.plan.search import best, plan

    rows = plan(shape, base, memory, methods, **limits)
    top, reason = best(rows)
    probe_result = None
    if args.probe:
        probe_result = _probe(shape, rows)
        if isinstance(probe_result, int):
            return probe_result
    if args.json:
        out = [dict(r.to_json(), model=shape.name, packing=args.packing, best=r is top) for r in rows]
        print(json.dumps(out if probe_result is None else {"rows": out, "probe": probe_result}, indent=1))
        return 0
    header = (
        f"{shape.name}: {shape.total_params / 1e9:.2f}B params, {where}, seq-len {base.seq_len}, "
        f"attention {base.attn}{'' if base.attention_mask else ' (no mask)'}, peak GiB per GPU"
    )
    render_rows(console, shape, rows, header, args.all)
    if top is None:
        console.print(f"[bold red]Nothing fits[/]: {reason}.")
        return 1
    from llama_sft.plan.memory import estimate

    run = top.useful_batch
    b = estimate(shape, replace(top.setting, micro_batch_size=run))
    console.print(
        f"[bold]best:[/] {setting_label(top)}, micro-batch {run}, {b.peak / 1024**3:.1f} GiB per GPU "
        f"— {reason}."
    )
    if probe_result is not None:
        print(json.dumps(probe_result, indent=1))
    return 0


def _largest(console, base, memory, methods, where, args, limits) -> int:
    from llama_sft.plan.report import render_largest
    from llama_sft.plan.search import largest_model

    answers = largest_model(base, memory, methods, **limits)
    if args.json:
        print(json.dumps(answers, indent=1))
    else:
        render_largest(console, answers, f"Largest preset per method on {where}, seq-len {base.seq_len}")
    return 0 if any(a["best"] for a in answers) else 1


def _probe(shape, rows):
    from llama_sft.cli.errors import err_console
    from llama_sft.plan.search import best

    top, _ = best([r for r in rows if r.setting.sharding == "none"])
    if top is None:
        err_console.print("[bold red]error:[/] --probe needs a setting that fits one GPU without sharding")
        return 2
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError
    except (ImportError, RuntimeError):
        err_console.print("[bold red]error:[/] --probe needs a CUDA GPU on this machine")
        return 2
    from llama_sft.plan.probe import probe

    return probe(shape, top)
