"""From the memory model to answers: every setting's largest micro-batch, the best setting, and the
largest preset model that trains on the given GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .load_host import LoadHost, load_host
from .memory import GIB, METHODS, Breakdown, Setting, estimate
from .shapes import PRESETS, ModelShape, load_shape

MAX_MICRO_BATCH = 1024
# Relative time per token, for ranking settings that fit (a heuristic, not a measurement): checkpointing
# repeats the forward pass (~1/3 of a step), 4-bit weights are dequantized in every matmul,
# offloaded optimizers step on the CPU, ZeRO-3/FSDP gather every layer's weights twice per step.
SLOWDOWN = {
    "gradient_checkpointing": 1.33,
    "qlora": 1.3,
    "optimizer": 1.5,
    "params": 2.5,
    "zero3": 1.15,
    "fsdp": 1.15,
    "zero2": 1.03,
    "zero1": 1.02,
}
SATURATION_TOKENS = 4096  # micro-batches of fewer tokens leave a large GPU partly idle
GLOBAL_BATCH = 128  # rows per optimizer step: a larger micro-batch than global / ranks buys nothing


@dataclass
class Row:
    """One setting with the largest micro-batch that fits and its peak."""

    setting: Setting
    micro_batch_size: int  # 0: not even batch 1 fits
    breakdown: Breakdown
    gpu_bytes: float
    host_bytes_per_node: float = 0.0  # CPU RAM the offloaded states need on each node
    load: LoadHost | None = None  # host RAM while the weights load (plan/load_host.py)

    @property
    def fits(self) -> bool:
        return self.micro_batch_size > 0

    @property
    def useful_batch(self) -> int:
        """The micro-batch worth running: no more than the global batch spread over the ranks."""
        return min(self.micro_batch_size, -(-GLOBAL_BATCH // self.setting.world_size))

    @property
    def score(self) -> float:
        """Tokens per second, relative: saturating in micro-batch tokens, slowed by each overhead."""
        s = self.setting
        tokens = self.useful_batch * s.seq_len
        cost = 1.0
        for key in (s.method, s.sharding, s.offload):
            cost *= SLOWDOWN.get(key, 1.0)
        if s.gradient_checkpointing:
            cost *= SLOWDOWN["gradient_checkpointing"]
        return tokens / (tokens + SATURATION_TOKENS) / cost

    def to_json(self) -> dict:
        s, b = self.setting, self.breakdown
        return {
            "method": s.method,
            "sharding": s.sharding,
            "offload": s.offload,
            "gradient_checkpointing": s.gradient_checkpointing,
            "fits": self.fits,
            "micro_batch_size": self.micro_batch_size,
            "peak_gib": round(b.peak / GIB, 2),
            "allocated_gib": round(b.allocated / GIB, 2),
            "breakdown_gib": b.gib(),
            "peak_phase": b.phase,
            "host_gib_per_node": round(self.host_bytes_per_node / GIB, 1),
            **(self.load_json() if self.load else {}),
            "seq_len": s.seq_len,
            "loss_impl": s.loss_impl,
            "activation_offloading": s.activation_offloading,
            "world_size": s.world_size,
            "lora_r": s.lora_r if s.method != "full" else None,
            "notes": b.notes,
        }

    def load_json(self) -> dict:
        load = self.load
        assert load is not None
        return {
            "load_host_gib_reader": round(load.reader_bytes / GIB, 1),
            "load_host_gib_other": round(load.other_bytes / GIB, 1),
            "load_host_gib_per_node": round(load.per_node / GIB, 1),
            "load_readers": load.who,
        }


def settings_for(base: Setting, methods: tuple[str, ...] | None = None) -> list[Setting]:
    """method x sharding x offload x checkpointing; sharding without offload only with > 1 GPU."""
    combos = [("none", "none")]
    if base.world_size > 1:
        combos += [("zero1", "none"), ("zero2", "none"), ("zero3", "none"), ("fsdp", "none")]
    combos += [("zero2", "optimizer"), ("zero3", "optimizer"), ("zero3", "params"), ("fsdp", "params")]
    out = []
    for method in methods or METHODS:
        for sharding, offload in combos:
            for ckpt in (False, True):
                out.append(
                    replace(
                        base,
                        method=method,
                        sharding=sharding,
                        offload=offload,
                        gradient_checkpointing=ckpt,
                        micro_batch_size=1,
                    )
                )
    return out


def largest_batch(
    shape: ModelShape,
    setting: Setting,
    gpu_bytes: float,
    host_bytes: float | None = None,
    gpus_per_node: int = 1,
) -> Row:
    """Binary search on the micro-batch: the estimate grows with it. Offloaded states must also fit
    `host_bytes` of CPU RAM per node when it is given."""
    one = estimate(shape, replace(setting, micro_batch_size=1))
    host = one.host * min(gpus_per_node, setting.world_size)
    load = load_host(shape, setting, gpus_per_node)
    if one.peak > gpu_bytes or (host_bytes is not None and host > host_bytes):
        return Row(replace(setting, micro_batch_size=1), 0, one, gpu_bytes, host, load)
    lo, hi = 1, MAX_MICRO_BATCH
    if estimate(shape, replace(setting, micro_batch_size=hi)).peak <= gpu_bytes:
        lo = hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate(shape, replace(setting, micro_batch_size=mid)).peak <= gpu_bytes:
            lo = mid
        else:
            hi = mid - 1
    final = replace(setting, micro_batch_size=lo)
    return Row(final, lo, estimate(shape, final), gpu_bytes, host, load)


def plan(
    shape: ModelShape,
    base: Setting,
    gpu_bytes: float,
    methods: tuple[str, ...] | None = None,
    host_bytes: float | None = None,
    gpus_per_node: int = 1,
    offload: bool = True,
) -> list[Row]:
    settings = [s for s in settings_for(base, methods) if offload or s.offload == "none"]
    return [largest_batch(shape, s, gpu_bytes, host_bytes, gpus_per_node) for s in settings]


def best(rows: list[Row]) -> tuple[Row | None, str]:
    """The fastest setting that fits (by `Row.score`) and why it wins."""
    fitting = [r for r in rows if r.fits]
    if not fitting:
        return None, "nothing fits: try more GPUs, a shorter --seq-len, or qlora"
    top = max(fitting, key=lambda r: (round(r.score, 6), -r.breakdown.peak))
    s = top.setting
    why = [f"micro-batch {top.micro_batch_size} ({top.micro_batch_size * s.seq_len} tokens) fits"]
    if top.useful_batch < top.micro_batch_size:
        why[0] += f" (run {top.useful_batch}: a global batch of {GLOBAL_BATCH} rows needs no more)"
    why.append("no offload" if s.offload == "none" else f"offload {s.offload} is needed to fit")
    if s.gradient_checkpointing:
        twin = replace(s, gradient_checkpointing=False, micro_batch_size=1)
        no_ckpt = [r for r in fitting if replace(r.setting, micro_batch_size=1) == twin]
        why.append(
            "checkpointing buys a larger batch than it costs" if no_ckpt else "fits only with checkpointing"
        )
    else:
        why.append("no recompute")
    if s.sharding in ("zero3", "fsdp") and s.offload == "none":
        why.append(
            "weights must be sharded to fit"
            if not any(
                r.setting.sharding in ("none", "zero1", "zero2") and r.setting.method == s.method
                for r in fitting
            )
            else "sharding frees memory for a larger batch"
        )
    return top, "; ".join(why)


def largest_model(
    base: Setting,
    gpu_bytes: float,
    methods: tuple[str, ...] | None = None,
    host_bytes: float | None = None,
    gpus_per_node: int = 1,
) -> list[dict]:
    """For each method, the preset with the most parameters that trains here, and its best setting.
    Offload counts only when the host RAM per node is known: without it any model 'fits'."""
    shapes = sorted((load_shape(n) for n in PRESETS), key=lambda sh: sh.total_params)
    out = []
    for method in methods or METHODS:
        answer = {"method": method, "model": None, "params_b": None, "best": None, "reason": "no preset fits"}
        for shape in shapes:
            rows = plan(
                shape, base, gpu_bytes, (method,), host_bytes, gpus_per_node, offload=host_bytes is not None
            )
            top, reason = best(rows)
            if top is not None:
                answer = {
                    "method": method,
                    "model": shape.name,
                    "params_b": round(shape.total_params / 1e9, 2),
                    "best": top.to_json(),
                    "reason": reason,
                }
        out.append(answer)
    return out
