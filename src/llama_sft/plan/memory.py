"""Peak memory per GPU of one LLaMA training step, from first principles.

Every term is counted from what PyTorch keeps alive in the path `llama-sft train` takes
(transformers' Trainer, `--bf16`, fused AdamW, peft LoRA); `tests/plan/test_saved_tensors.py` checks
the activation terms tensor by tensor and `benchmarks/plan_validation.py` checks whole peaks.

Bytes per parameter (P = all parameters, Pt = trainable ones, N = data-parallel ranks):

| method / backend              | weights                          | trainable copy  | grads  | AdamW m, v |
|-------------------------------|----------------------------------|-----------------|--------|------------|
| full, torch, precision bf16   | 2                                | -               | 2      | 4          |
| full, torch, precision mixed  | 4 (+2: bf16 autocast copies)     | -               | 4      | 8          |
| lora, torch                   | 2 (frozen)                       | 4 Pt (fp32)     | 4 Pt   | 8 Pt       |
| qlora, torch                  | NF4 0.516 on projections, 4 on embeddings/head/norms (fp32 after peft's kbit preparation) | 4 Pt | 4 Pt | 8 Pt |
| any, DeepSpeed ZeRO (bf16)    | 2 (NF4 for qlora's projections)  | 4 Pt fp32 master | 2 Pt  | 8 Pt       |
| any, FSDP                     | as torch, every term / N, plus two gathered layers                          ||||

NF4 is 4 bits plus bitsandbytes' double-quantized absmax: 1 byte per 64 weights and 4 per 64 x 256.
ZeRO-1 divides the master copy and optimizer states by N, ZeRO-2 also the gradients (a partition
DeepSpeed allocates up front), ZeRO-3 also the weights, frozen ones included; ZeRO-3 then keeps
gathered every weight it will use again within `stage3_max_reuse_distance` (1e9 parameters), so up to
1e9 parameters stay whole at the turn from forward to backward. Offload `optimizer` moves master
copies, optimizer states and fp32 gradients to CPU RAM, `params` also the weight shards (reported as
host GiB per node). Plain DDP (N > 1) keeps a second copy of the gradients in its buckets.
LoRA adapters count r * (in + out) per targeted projection per layer, from the model's real shapes.

Activations are the tensors autograd saves, per token per decoder layer (`layer_saved`), for
transformers' `LlamaDecoderLayer` with h hidden, i intermediate, q/kv projection widths:
- RMSNorm keeps its fp32 input (4h) and the rsqrt; when its weight trains, also its normed bf16 input.
- A trained projection keeps its bf16 input (q/k/v share one; under fp32 weights autocast makes one
  copy per projection). A frozen one keeps nothing. A LoRA branch keeps its dropout mask (1 byte on
  CUDA; on CPU dropout keeps a noise tensor of the input's dtype) and lora_A's input (bf16 under
  autocast; DeepSpeed has no autocast: bf16 adapters under ZeRO-1/2, peft's fp32 ones under ZeRO-3).
- SDPA (flash or memory-efficient, also on CPU) keeps q, k, v after RoPE, the output (which is also
  o_proj's input) and a fp32 logsumexp: no seq x seq matrix. With an attention mask, transformers
  repeats GQA key/value heads and torch turns the bool mask into a bf16 bias each layer keeps (2s).
  `eager` keeps the fp32 softmax and its bf16 copy (6 bytes x heads x s).
- The SwiGLU MLP keeps gate (silu's input), silu's output and up (the product's factors) and, when
  down_proj trains, the product.
Layer 0 of a LoRA model saves less: its input (a frozen embedding) needs no gradient. Gradient
checkpointing keeps each layer's input and recomputes one layer at a time; that layer's transient
(peft's fp32 copies of down_proj's input, or the MLP's gradients) comes on top.

The logits: the head writes bf16 logits (2V bytes per token), the loss upcasts them (4V) and
`log_softmax` keeps its fp32 output (4V): 10V at the end of the forward pass. In the backward
pass the loss gradient (4V) and the log_softmax gradient (4V) join the saved output: 12V per token,
the peak of most steps (at 128k vocabulary that is 1.5 MB per token).

With `loss_impl` chunked (the default of `llama-sft train`, train/loss.py) or liger, no full logits
exist: the supervised positions go through the head `loss_chunk_tokens(V)` at a time (c), each
chunk's bf16 logits, their fp32 softmax and its bf16 gradient (8V per chunk token) live only while
that chunk is computed, and what lives to the backward pass is the gradient of the head's input
(2h, 4h with a fp32 residual, per token) and, when the head trains, its fp32 V x h gradient
accumulator (plus the bf16 cast handed to autograd). The planner counts every token as supervised.

Activation offloading (`--activation_offloading`, train/offload.py) moves the tensors saved for
backward to pinned host RAM as they are saved: the GPU keeps the final norm's and head's inputs and,
during backward, one layer's saved tensors at a time (the layer inputs under checkpointing); the
rest is counted as host memory.

The peak is the largest of the step's phases: end of forward (`forward`), start of backward
(`loss-backward`), the head's backward while full fine-tuning accumulates gradients
(`head-backward`: a second V x h gradient), a recomputed layer's backward (`recompute`), when
gradients do not live across micro-steps the end of backward (`grads`), and DeepSpeed's optimizer
step (`step`: its bf16 and fp32 gradient partitions, 6-8 bytes per trainable parameter / N). On a GPU the CUDA context, allocator slack and
communication buffers are added as `overhead`: assumed (0.75 GiB + 5% of allocated, NCCL 0.5 GiB,
DeepSpeed buckets of hidden^2 elements, DDP's gradient copy), not measured on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .shapes import DEFAULT_TARGETS, ModelShape

GIB = 1024**3
METHODS = ("full", "lora", "qlora")
SHARDINGS = ("none", "zero1", "zero2", "zero3", "fsdp")
OFFLOADS = ("none", "optimizer", "params")
# sdpa_packed: llama-sft's per-conversation SDPA for packed rows (train/packing.py): no mask, GQA heads
# repeated, each conversation's q/k/v slices saved by its own SDPA call.
ATTENTION = ("sdpa", "flash_attention_2", "eager", "sdpa_packed")
LOSS_IMPLS = ("chunked", "plain", "liger")
# train/loss.py's chunking, repeated here because plan/ sits below train/ (tests/plan checks they agree)
LOSS_CHUNK_ELEMENTS = 2**24
# NF4 stores 4 bits per weight plus, with double quantization, an 8-bit absmax per 64 weights and
# a fp32 absmax per 256 of those (bitsandbytes' defaults for QLoRA).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT = 0.75 * GIB
ALLOCATOR_SLACK = 0.05
COMM_BUFFERS = 0.5 * GIB  # NCCL communicators when N > 1


@dataclass(frozen=True)
class Setting:
    """One way to train: method, sharding, offload, checkpointing and the batch shape."""

    method: str = "lora"
    sharding: str = "none"
    offload: str = "none"
    gradient_checkpointing: bool = False
    micro_batch_size: int = 1
    seq_len: int = 2048
    world_size: int = 1
    lora_r: int = 8
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    lora_dropout: bool = True
    precision: str = "bf16"  # full only: bf16 weights and states, or "mixed" (fp32 weights + autocast)
    attn: str = "sdpa"
    attention_mask: bool = True  # a padding/packing mask reaches attention (not with flash_attention_2)
    grads_resident: bool = True  # gradient accumulation keeps gradients between micro-steps
    device: str = "cuda"
    loss_impl: str = "chunked"  # train/loss.py: chunked (default), plain (full logits) or liger
    activation_offloading: bool = False  # saved activations in host RAM (train/offload.py)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: choose one of {METHODS}")
        if self.sharding not in SHARDINGS:
            raise ValueError(f"sharding {self.sharding!r}: choose one of {SHARDINGS}")
        if self.offload not in OFFLOADS:
            raise ValueError(f"offload {self.offload!r}: choose one of {OFFLOADS}")
        if self.offload == "optimizer" and self.sharding not in ("zero1", "zero2", "zero3"):
            raise ValueError("optimizer offload needs DeepSpeed ZeRO (zero1, zero2 or zero3)")
        if self.offload == "params" and self.sharding not in ("zero3", "fsdp"):
            raise ValueError("parameter offload needs zero3 or fsdp")
        if self.attn not in ATTENTION:
            raise ValueError(f"attn {self.attn!r}: choose one of {ATTENTION}")
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl {self.loss_impl!r}: choose one of {LOSS_IMPLS}")
        if self.precision not in ("bf16", "mixed"):
            raise ValueError("precision is bf16 or mixed")
        if self.micro_batch_size < 1 or self.seq_len < 1 or self.world_size < 1:
            raise ValueError("micro_batch_size, seq_len and world_size must be >= 1")

    @property
    def deepspeed(self) -> bool:
        return self.sharding.startswith("zero")

    @property
    def tokens(self) -> int:
        return self.micro_batch_size * self.seq_len


@dataclass
class Breakdown:
    """Bytes per GPU at the step's peak, by what holds them."""

    weights: float = 0.0
    trainable: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    overhead: float = 0.0
    host: float = 0.0  # CPU RAM per rank for offloaded states (not part of the GPU peak)
    phase: str = ""
    notes: list[str] = field(default_factory=list)

    TERMS = ("weights", "trainable", "grads", "optimizer", "activations", "logits", "overhead")

    @property
    def allocated(self) -> float:
        """What torch's allocator tracks (max_memory_allocated on a GPU): everything but overhead."""
        return sum(getattr(self, t) for t in self.TERMS[:-1])

    @property
    def peak(self) -> float:
        return self.allocated + self.overhead

    def gib(self) -> dict[str, float]:
        return {t: round(getattr(self, t) / GIB, 3) for t in self.TERMS}


def loss_chunk_tokens(vocab_size: int) -> int:
    """Positions per chunk of the chunked loss (train/loss.py's `chunk_tokens`)."""
    n = max(1, LOSS_CHUNK_ELEMENTS // max(1, vocab_size))
    return max(16, min(4096, 1 << (n.bit_length() - 1)))


def logits_bytes(shape: ModelShape, s: Setting) -> dict[str, float]:
    """The loss's own bytes in each phase: plain keeps full logits, chunked one chunk's (module docstring)."""
    v, h, t = shape.vocab_size, shape.hidden_size, s.tokens
    if s.loss_impl == "plain":
        return {"forward": 10 * v * t, "loss-backward": 12 * v * t}
    chunk = min(t, loss_chunk_tokens(v))
    kept = _residual_bytes(s) * h * t  # the gradient of the head's input, made in forward
    if s.method == "full":  # the head trains: its fp32 gradient accumulator, and the cast autograd receives
        kept += 4 * shape.lm_head_params + (2 * shape.lm_head_params if s.precision == "bf16" else 0)
    return {"forward": kept + 8 * v * chunk, "loss-backward": kept}


def layer_saved(shape: ModelShape, s: Setting) -> float:
    """Bytes autograd keeps per token for one decoder layer (see the module docstring)."""
    h, i, q, kv, heads = (
        shape.hidden_size,
        shape.intermediate_size,
        shape.q_dim,
        shape.kv_dim,
        shape.num_attention_heads,
    )
    full, qlora = s.method == "full", s.method == "qlora"
    res = _residual_bytes(s)
    mlp = 4 if qlora else 2  # Linear4bit returns its input's dtype (fp32 after kbit preparation)
    targets = set() if full else set(s.lora_targets)
    lora_in, lora_mid = _lora_saved_bytes(s)

    def lora(name: str, d_in: int) -> float:
        return lora_in * d_in + lora_mid * s.lora_r if name in targets else 0

    def norm() -> float:
        return 4 * h + 4 + (res * h if full else 0)

    def proj_inputs(names: tuple[str, ...], d_in: int) -> float:
        if full:  # bf16 input shared by the projections; fp32 input is cast once per projection
            return 2 * d_in * (len(names) if res == 4 else 1)
        return sum(lora(n, d_in) for n in names)

    repeat = s.attn in ("eager", "sdpa_packed") or (s.attention_mask and s.attn == "sdpa")
    kv_saved = q if repeat else kv
    total = 2 * norm()
    total += proj_inputs(("q_proj", "k_proj", "v_proj"), h)
    if s.attn == "eager":  # q, repeated k and v, fp32 softmax and its bf16 copy; o_proj's input
        total += 6 * q + 6 * heads * s.seq_len + (2 * q if full else 0)
    else:  # q, k, v after RoPE, output (also o_proj's input: the kernels write it token-major), logsumexp
        total += 2 * q + 4 * kv_saved + 2 * q + 4 * heads
        if s.attention_mask and s.attn == "sdpa":
            total += 2 * s.seq_len  # bool mask -> bf16 bias kept by each layer
        if s.attn == "sdpa_packed" and full:  # o_proj's input is the concatenated copy, not SDPA's output
            total += 2 * q
    total += 0 if full else proj_inputs(("o_proj",), q)
    total += proj_inputs(("gate_proj", "up_proj"), h)
    total += mlp * i * 3  # silu input, silu output, up output
    total += 2 * i if full else lora("down_proj", i)
    return total


def _residual_bytes(s: Setting) -> int:
    """The residual stream is fp32 when the embedding is: fp32 weights, or QLoRA's kbit preparation."""
    mixed = s.method == "full" and s.precision == "mixed" and not s.deepspeed
    return 4 if (s.method == "qlora" or mixed) else 2


def _lora_saved_bytes(s: Setting) -> tuple[int, int]:
    """Bytes a LoRA branch keeps per input feature and per rank unit.

    Dropout keeps a bool mask on CUDA, a noise tensor of the input's dtype on CPU. Under autocast
    lora_A keeps the bf16 cast of the fp32 dropout output. DeepSpeed runs without autocast: ZeRO-1/2
    cast the adapters to bf16, ZeRO-3 (parameters created partitioned) leaves peft's fp32 adapters,
    so lora_A keeps a fp32 input.
    """
    adapter = 4 if (not s.deepspeed or s.sharding == "zero3") else 2
    noise = (1 if s.device == "cuda" else adapter) if s.lora_dropout else 0
    kept = 2 if not s.deepspeed else adapter
    return noise + kept, kept


def _first_layer_discount(shape: ModelShape, s: Setting) -> float:
    # With a frozen embedding, layer 0's input needs no gradient: its first RMSNorm saves nothing,
    # nor do the dropouts of its q/k/v adapters (only the LoRA weights need their input).
    if s.method == "full" or s.gradient_checkpointing:
        return 0
    noise = _lora_saved_bytes(s)[0] - _lora_saved_bytes(s)[1]
    qkv = len({"q_proj", "k_proj", "v_proj"} & set(s.lora_targets))
    return 4 * shape.hidden_size + 4 + qkv * noise * shape.hidden_size


def _layer_transient(shape: ModelShape, s: Setting) -> float:
    """Bytes per token alive beyond the saved tensors while one layer is recomputed and run backward.

    With LoRA the widest moment is recomputing down_proj's branch: peft's fp32 copy of the i-wide input
    and the dropout output exist next to the saved noise, and the layer's incoming gradient is held;
    without adapters, the bf16 gradients of the MLP's three i-wide tensors. Checked against the CPU
    measurement of a 7B-width layer (benchmarks/results/plan_validation.md).
    """
    i, h = shape.intermediate_size, shape.hidden_size
    return (12 * i if s.method != "full" else 6 * i) + 4 * h


def _params(shape: ModelShape, s: Setting) -> dict[str, float]:
    """Persistent bytes per GPU: weights, trainable copy, grads, optimizer, buffers (overhead)."""
    n = s.world_size
    p, lin, other = shape.total_params, shape.linear_params, shape.other_params
    pt = p if s.method == "full" else shape.lora_params(s.lora_r, s.lora_targets)
    layer = shape.layer_linear_params + shape.layer_norm_params
    if s.method == "full":
        base = 2 * p if (s.deepspeed or s.precision == "bf16") else 4 * p
    elif s.method == "lora":
        base = 2 * p
    else:
        base = NF4_BYTES * lin + (2 if s.deepspeed else 4) * other
    if s.deepspeed and s.method == "full":  # bf16 model, fp32 master copy in the optimizer
        weights, trainable, grads, optimizer = 2 * p, 4 * p, 2 * p, 8 * p
    elif s.deepspeed:  # DeepSpeed runs the adapters in bf16 too and keeps their fp32 master copy
        weights, trainable, grads, optimizer = base + 2 * pt, 4 * pt, 2 * pt, 8 * pt
    else:
        per = 2 if (s.method == "full" and s.precision == "bf16") else 4
        weights = base
        trainable = 0.0 if s.method == "full" else 4 * pt
        grads, optimizer = per * pt, 2 * per * pt
    buffers, grads_always, host, step_grads = 0.0, 0.0, 0.0, None
    stage = int(s.sharding[-1]) if s.deepspeed else 0
    if s.sharding == "fsdp":
        weights, trainable, grads, optimizer = weights / n, trainable / n, grads / n, optimizer / n
        gathered = 2 * layer if s.method != "qlora" else NF4_BYTES * shape.layer_linear_params
        weights += 2 * gathered  # current layer and the prefetched next one, unsharded
        grads += 2 * layer if s.method == "full" else 0  # one layer's unsharded grads before reduce-scatter
        if s.offload == "params":  # shards, grads and optimizer on the CPU; GPU keeps gathered layers
            host = weights - 2 * gathered + trainable + grads + optimizer
            weights, trainable, optimizer = 2 * gathered, 0.0, 0.0
            grads = 2 * layer if s.method == "full" else 0.0
    elif s.deepspeed:
        if stage >= 1:
            trainable, optimizer = trainable / n, optimizer / n
        if stage >= 2:  # the gradient partition is allocated up front and lives through the run
            grads = grads_always = grads / n
        if stage >= 3:
            # Gathered weights stay on the GPU while they will be used again within
            # stage3_max_reuse_distance (default 1e9) parameters, up to stage3_max_live_parameters (1e9):
            # at the turn from forward to backward, the last 1e9 parameters; a model smaller than that
            # is never released at all (its next step's forward is within reach too).
            live = min(p, 1e9) * (2 if s.method != "qlora" else NF4_BYTES)
            weights = weights / n + live
        # Reduce and prefetch buckets: transformers' "auto" sizes them hidden^2 elements (bf16), but
        # DeepSpeed never allocates more than the trainable (stage 1/2) or all (stage 3) parameters.
        bucket = 2 * min(shape.hidden_size**2, pt if stage < 3 else p)
        buffers = 2 * bucket if stage < 3 else 1.9 * bucket
        # At the optimizer step DeepSpeed holds the flat bf16 gradient partition and its fp32 copy
        # (ZeRO-2 also its contiguous gradient buffer; ZeRO-1 still the full bf16 gradients), and,
        # under ZeRO-1/2, the bf16 gradient of the last reduced tensor (the head's, full size).
        step_grads = {1: 2 * pt + 4 * pt / n, 2: 8 * pt / n, 3: 6 * pt / n}[stage]
        if stage < 3 and s.method == "full":
            step_grads += 2 * shape.lm_head_params
        if s.offload in ("optimizer", "params"):  # fp32 master, Adam states and fp32 grads on the CPU
            host = trainable + optimizer + 4 * pt / n
            trainable, optimizer, grads, step_grads = 0.0, 0.0, 0.0, 0.0
        if s.offload == "params":  # the shards move to the CPU; gathered weights still stay while reused
            host += weights - live
            weights = live
    elif n > 1:
        buffers = grads  # DDP's bucket copy of the gradients
    return {
        "weights": weights,
        "trainable": trainable,
        "grads": grads,
        "optimizer": optimizer,
        "buffers": buffers,
        "grads_always": grads_always,
        "host": host,
        "step_grads": step_grads,
    }


def _working_copies(shape: ModelShape, s: Setting) -> tuple[float, float]:
    """bf16 copies of fp32 weights kept while autocast runs: (all layers + head, one layer)."""
    if s.method == "full" and s.precision == "mixed" and not s.deepspeed and s.sharding != "fsdp":
        per_layer = 2 * shape.layer_linear_params
        return per_layer * shape.num_hidden_layers + 2 * shape.lm_head_params, per_layer
    if s.deepspeed or s.method == "full":
        return 0.0, 0.0
    adapters = 2 * shape.lora_params(s.lora_r, s.lora_targets)  # fp32 adapters cast to bf16 and cached
    if s.method == "qlora":  # fp32 head after kbit preparation: its bf16 copy is kept for the loss backward
        adapters += 2 * shape.lm_head_params
    return adapters, 0.0


def estimate(shape: ModelShape, s: Setting) -> Breakdown:
    """The peak-memory breakdown per GPU for one setting."""
    t, L, h, v = s.tokens, shape.num_hidden_layers, shape.hidden_size, shape.vocab_size
    params = _params(shape, s)
    copies_all, copies_layer = _working_copies(shape, s)
    res = _residual_bytes(s)
    per_layer = layer_saved(shape, s) * t
    has_mask = s.attention_mask and s.attn not in ("flash_attention_2", "sdpa_packed")
    mask = s.micro_batch_size * s.seq_len**2 if has_mask else 0
    final = (4 * h + 4 + (res * h + 2 * h if s.method == "full" else 0)) * t  # final norm, head input
    if s.gradient_checkpointing:
        kept = L * res * h * t + mask
    else:
        kept = L * per_layer - _first_layer_discount(shape, s) * t + mask
    persistent = {k: params[k] for k in ("weights", "trainable", "optimizer")}
    grads = params["grads"] if s.grads_resident else params["grads_always"]
    host_activations = 0.0
    if s.activation_offloading:  # saved tensors wait on the host; one layer's come back at a time
        host_activations = kept - mask
        kept = mask + (res * h * t if s.gradient_checkpointing else per_layer)
    loss = logits_bytes(shape, s)
    phases = {
        "forward": dict(weights=copies_all, activations=kept + final, logits=loss["forward"]),
        "loss-backward": dict(
            weights=copies_all if not s.gradient_checkpointing else copies_all - copies_layer * L,
            activations=kept + final,
            logits=loss["loss-backward"],
        ),
    }
    if s.gradient_checkpointing:
        phases["recompute"] = dict(
            weights=copies_layer, logits=0.0, activations=kept + per_layer + _layer_transient(shape, s) * t
        )
    if params["step_grads"] is not None:
        phases["step"] = dict(weights=0.0, activations=0.0, logits=0.0, grads=params["step_grads"])
    if not s.grads_resident:
        phases["grads"] = dict(weights=0.0, activations=0.0, logits=0.0, grads=params["grads"])
    elif s.method == "full" and not s.deepspeed and s.sharding != "fsdp" and s.loss_impl == "plain":
        # Accumulating: the head's new gradient is a second V x h tensor (bf16, plus its fp32 cast under
        # mixed precision) next to the stored one, while the logits' bf16 gradient is still alive.
        new_grad = shape.lm_head_params * (2 if s.precision == "bf16" else 6)
        phases["head-backward"] = dict(
            weights=phases["loss-backward"]["weights"],
            activations=kept + final,
            logits=2 * v * t,
            grads=grads + new_grad,
        )
    best: Breakdown | None = None
    for name, extra in phases.items():
        b = Breakdown(
            weights=persistent["weights"] + extra["weights"],
            trainable=persistent["trainable"],
            grads=extra.get("grads", grads),
            optimizer=persistent["optimizer"],
            activations=extra["activations"],
            logits=extra["logits"],
            phase=name,
        )
        if best is None or b.allocated > best.allocated:
            best = b
    assert best is not None
    best.host = params["host"] + host_activations
    if s.device == "cuda":
        best.overhead = CUDA_CONTEXT + ALLOCATOR_SLACK * best.allocated + params["buffers"]
        best.overhead += COMM_BUFFERS if s.world_size > 1 else 0
    else:
        best.activations += params["buffers"]  # DDP/ZeRO buffers are ordinary allocations on CPU
    if s.method == "qlora":
        best.notes.append("QLoRA not measured (bitsandbytes 4-bit needs CUDA)")
    if s.offload != "none":
        best.notes.append("needs host RAM for the offloaded states")
    if s.activation_offloading:
        best.notes.append(f"activations offloaded: {host_activations / GIB:.1f} GiB of host RAM per rank")
    if s.loss_impl == "liger":
        best.notes.append("liger modelled as the chunked loss")
    return best
