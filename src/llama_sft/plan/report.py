"""Tables for `llama-sft plan`: the per-setting rows with their breakdown, the best choice, and
the largest-model answer."""

from __future__ import annotations

from .memory import GIB
from .search import Row
from .shapes import ModelShape

SHORT = {
    "weights": "weights",
    "trainable": "train.",
    "grads": "grads",
    "optimizer": "optim",
    "activations": "activ.",
    "logits": "logits",
    "overhead": "overh.",
}


def setting_label(row: Row) -> str:
    s = row.setting
    parts = [s.method + (f" r{s.lora_r}" if s.method != "full" else ""), s.sharding]
    if s.offload != "none":
        parts.append(f"offload {s.offload}")
    if s.gradient_checkpointing:
        parts.append("ckpt")
    return " ".join(parts)


def render_rows(console, shape: ModelShape, rows: list[Row], header: str, show_all: bool) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=header, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("setting")
    table.add_column("micro-batch", justify="right")
    table.add_column("peak GiB", justify="right", style="bold")
    for term in SHORT.values():
        table.add_column(term, justify="right")
    table.add_column("peak at")
    table.add_column("host GiB/node", justify="right")
    table.add_column("load GiB", justify="right")
    shown = [r for r in rows if r.fits or show_all]
    for r in shown:
        b = r.breakdown
        table.add_row(
            setting_label(r),
            str(r.micro_batch_size) if r.fits else "-",
            f"{b.peak / GIB:.1f}",
            *(f"{getattr(b, t) / GIB:.1f}" for t in SHORT),
            b.phase,
            f"{r.host_bytes_per_node / GIB:.0f}" if r.setting.offload != "none" else "",
            load_label(r),
            style=None if r.fits else "dim",
        )
    console.print(table)
    hidden = len(rows) - len(shown)
    if hidden:
        console.print(f"[dim]{hidden} setting(s) do not fit even at micro-batch 1 (--all lists them).[/]")
    console.print(
        "[dim]Peak at micro-batch shown (1 when nothing fits); train. = trainable copy (LoRA adapters "
        "or fp32 master); overh. = CUDA context, allocator slack, communication buffers; "
        "load = host RAM while the weights load, on a rank that reads the checkpoint / on one that "
        "does not (ZeRO-3: rank 0 reads; FSDP with cpu_ram_efficient_loading, as configs/accelerate/"
        "fsdp.yaml: each node's first rank; otherwise every rank).[/]"
    )


def load_label(row: Row) -> str:
    load = row.load
    if load is None:
        return ""
    if load.readers_per_node == load.ranks_per_node:
        return f"{load.reader_bytes / GIB:.0f}"
    return f"{load.reader_bytes / GIB:.0f} / {load.other_bytes / GIB:.0f}"


def render_largest(console, answers: list[dict], header: str) -> None:
    from rich.table import Table

    table = Table(title=header, title_justify="left")
    for col in ("method", "largest preset", "params", "best setting", "micro-batch", "peak GiB", "why"):
        table.add_column(col)
    for a in answers:
        b = a["best"]
        if b is None:
            table.add_row(a["method"], "-", "-", "-", "-", "-", a["reason"])
            continue
        setting = " ".join(
            x
            for x in (
                b["sharding"],
                "" if b["offload"] == "none" else f"offload {b['offload']}",
                "ckpt" if b["gradient_checkpointing"] else "",
            )
            if x
        )
        table.add_row(
            a["method"],
            a["model"],
            f"{a['params_b']}B",
            setting,
            str(b["micro_batch_size"]),
            f"{b['peak_gib']:.1f}",
            a["reason"],
        )
    console.print(table)


def gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"
