"""Multi-process runs (DDP, FSDP, DeepSpeed ZeRO): the rules checked before any weights load, the
setup ZeRO-3 and CPU runs need before `from_pretrained`, and a callback that records how the model
was really sharded and stops a run whose FSDP or ZeRO silently fell back to plain DDP.
"""

from __future__ import annotations

import logging
import os

from transformers import TrainerCallback

from ..config import ConfigError, RunConfig
from ..sharding import (  # noqa: F401 - re-exported: the distributed rules are read from here too
    deepspeed_config,
    fsdp_requested,
    fsdp_state_dict_type,
    launched,
    process_count,
    shards_weights,
    zero_stage,
)

log = logging.getLogger("llama_sft")

LAUNCH_HINT = "torchrun --nproc_per_node N -m llama_sft.cli.main train ..., accelerate launch or deepspeed --no_local_rank"


def deepspeed_in_one_process(argv: list[str], config_file: str | None) -> str | None:
    """DeepSpeed needs a process group even for one process. Run without a launcher (the README's
    `llama-sft train configs/llama2-7b-qlora.yaml ...`), make it a world of one, as `deepspeed
    --num_gpus 1` would, instead of failing. Call before TrainingArguments exist (they read the
    environment). Returns a note for the user, or None when nothing was done."""
    from ..config import load_yaml

    if launched():
        return None
    flagged = any(a == "--deepspeed" or a.startswith("--deepspeed=") for a in argv)
    if not flagged and not (config_file and load_yaml(config_file).get("deepspeed")):
        return None
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    import torch

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       # what this process already uses; else accelerate sets 2 and warns about it
                       "OMP_NUM_THREADS": str(torch.get_num_threads())}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    return (
        "DeepSpeed without a launcher: running as one process on one device. For several GPUs: "
        "deepspeed --num_gpus N $(which llama-sft) train ..."
    )


def check_distributed(run: RunConfig) -> None:
    """Refuse, with the fix, combinations that cannot run, cannot shard or would save empty weights."""
    import torch

    stage, fsdp = zero_stage(run), fsdp_requested(run)
    if stage is not None and fsdp:
        raise ConfigError(
            "--deepspeed and --fsdp both given: pick one (ZeRO-3 and FSDP full shard do the same job)"
        )
    if (stage is not None or fsdp) and not launched():
        what = "--deepspeed" if stage is not None else "--fsdp"
        raise ConfigError(
            f"{what} needs a distributed launcher, even for one process: {LAUNCH_HINT} "
            "(see docs/distributed.md)"
        )
    if launched() and process_count() > 1 and not torch.cuda.is_available() and not run.training.use_cpu:
        raise ConfigError(
            "several processes on a machine without CUDA: pass --use_cpu True (gloo); otherwise "
            "accelerate finds no device and every process trains alone"
        )
    if stage == 3:
        zero = deepspeed_config(run).get("zero_optimization", {})
        if not zero.get("stage3_gather_16bit_weights_on_model_save", False):
            raise ConfigError(
                'ZeRO-3 config without "stage3_gather_16bit_weights_on_model_save": true: the saved model or adapter '
                "would be empty (only a DeepSpeed checkpoint is written). Set it in the JSON or use "
                "configs/deepspeed/zero3.json"
            )
    if fsdp and "FULL_STATE_DICT" not in fsdp_state_dict_type(run):
        raise ConfigError(
            f"FSDP state_dict_type {fsdp_state_dict_type(run)}: the Trainer then writes no final weights at all. "
            "Use FULL_STATE_DICT (as configs/accelerate/fsdp.yaml does)"
        )
    if (run.lora.method == "qlora" or run.lora.q_lora) and shards_weights(run):
        check_sharded_qlora(run)


def check_sharded_qlora(run: RunConfig) -> None:
    """QLoRA under ZeRO-3 or FSDP: `model.quantize` stores the 4-bit weights in the dtype of the other
    weights (float32 included), so the engines, which shard by dtype, split them with the rest;
    `ShardingCheck` verifies that they did."""
    offload = (deepspeed_config(run) or {}).get("zero_optimization", {}).get("offload_param", {})
    if offload.get("device", "none") != "none":
        log.warning(
            "QLoRA with ZeRO-3 parameter offload uses more GPU memory than without it (PEFT's DeepSpeed "
            "guide); configs/deepspeed/zero3.json is the better choice"
        )


def setup_distributed(run: RunConfig) -> None:
    """Check the distributed settings, then set up what must exist before the model loads: the process
    group, DeepSpeed's communication layer for ZeRO-3 (which partitions weights inside
    `from_pretrained`) and FSDP on CPU. Call it before anything reads `run.training.device`."""
    check_distributed(run)
    if not launched():
        return
    import torch

    t = run.training
    stage = zero_stage(run)
    if stage is not None and not torch.cuda.is_available():
        import deepspeed.ops

        # On CPU DeepSpeed would JIT-compile a shared-memory all-reduce kernel (minutes, and a C++
        # toolchain) to speed up a run that only exists for testing; gloo does the job.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    t.device  # noqa: B018 - builds accelerate's state and the process group (--ddp_backend)
    if stage == 3:
        import deepspeed

        # zero.Init, which from_pretrained runs while the arguments' HfDeepSpeedConfig is alive, reads the
        # world size from DeepSpeed's own communication layer. On CPU accelerate starts only
        # torch.distributed, so without this zero.Init sees 1 process and rejects the batch sizes.
        deepspeed.init_distributed(
            dist_backend=t.ddp_backend or ("nccl" if torch.cuda.is_available() else "gloo")
        )
    if fsdp_requested(run) and not torch.cuda.is_available():
        _let_accelerate_use_fsdp_on_cpu()


def _let_accelerate_use_fsdp_on_cpu() -> None:
    """accelerate upgrades only GPU-type process groups to FSDP; on CPU (gloo) it silently runs DDP.
    torch's FSDP2 works on CPU, so call the group GPU-type until accelerate has decided (the
    Trainer's Accelerator then records FSDP). `ShardingCheck` verifies the result."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState._shared_state
    if state.get("distributed_type") == DistributedType.MULTI_CPU:
        state["distributed_type"] = DistributedType.MULTI_GPU


def describe_sharding(model, optimizer=None) -> dict:
    """What the prepared model is on this process: FSDP units, partitioned parameters, optimizer."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.6 has no FSDP2
        FSDPModule = DTensor = ()  # noqa: N806

    def sizes(p) -> tuple[int, int]:  # (full, on this process)
        if isinstance(p, DTensor):  # FSDP2 shard
            return p.numel(), p.to_local().numel()
        if hasattr(p, "ds_id"):  # ZeRO-3 partition
            return p.ds_numel, p.ds_tensor.numel()
        return p.numel(), p.numel()

    fsdp2 = [type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)]
    fsdp1 = sum(isinstance(m, FullyShardedDataParallel) for m in model.modules())
    full = local = dtensors = zero3 = 0
    for p in model.parameters():
        dtensors += isinstance(p, DTensor)
        zero3 += hasattr(p, "ds_id")
        size = sizes(p)
        full, local = full + size[0], local + size[1]
    # QLoRA: the packed 4-bit weights of bitsandbytes' Linear4bit layers, which are the base model.
    # (peft's LoRA wrapper around one is also called Linear4bit, hence the module check.)
    four_bit = [m.weight for m in model.modules() if any(_is_bnb_linear4bit(c) for c in type(m).__mro__)]
    four_bit_sizes = [sizes(p) for p in four_bit]
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the real optimizer
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    world_size = torch.distributed.get_world_size() if dist else 1
    optimizer_name = type(inner).__name__ if inner is not None else None
    wrapper = type(optimizer).__name__ if optimizer is not None else ""
    if fsdp2 or fsdp1:
        mode = "fsdp2" if fsdp2 else "fsdp1"
    elif zero3 or "DeepSpeed" in f"{wrapper} {optimizer_name}":
        mode = "deepspeed"
    else:
        mode = "ddp" if world_size > 1 else "single"
    return {
        "mode": mode,
        "world_size": world_size,
        "backend": torch.distributed.get_backend() if dist else None,
        "model_class": type(model).__name__,
        "fsdp2_modules": sorted(set(fsdp2)),
        "fsdp2_module_count": len(fsdp2),
        "fsdp1_module_count": fsdp1,
        "dtensor_params": dtensors,
        "zero3_params": zero3,
        "params_full": full,
        "params_local": local,
        "four_bit_layers": len(four_bit),
        "four_bit_full": sum(f for f, _ in four_bit_sizes),
        "four_bit_local": sum(n for _, n in four_bit_sizes),
        "optimizer": optimizer_name,
    }


def _is_bnb_linear4bit(cls) -> bool:
    return cls.__name__ == "Linear4bit" and cls.__module__.startswith("bitsandbytes")


class ShardingCheck(TrainerCallback):
    """Records how the model was sharded (`info`, saved in the run record) and stops a run that asked
    for FSDP or DeepSpeed but got plain data parallelism, which accelerate does without a word on
    some setups (FSDP on CPU, a launcher that ignored the config)."""

    def __init__(self, run: RunConfig):
        self.fsdp = fsdp_requested(run)
        self.stage = zero_stage(run)
        self.info: dict = {}

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        info = describe_sharding(model, optimizer)
        info["requested"] = "fsdp" if self.fsdp else f"zero{self.stage}" if self.stage is not None else None
        self.info = info
        if self.fsdp and not (info["fsdp2_module_count"] or info["fsdp1_module_count"]):
            raise RuntimeError(
                f"FSDP was requested but the model is {info['model_class']} with no FSDP-wrapped "
                "module: accelerate fell back to DDP. See docs/distributed.md"
            )
        if self.stage is not None and info["mode"] != "deepspeed":
            raise RuntimeError(
                f"DeepSpeed was requested but the optimizer is {info['optimizer']}: not a DeepSpeed run"
            )
        if self.stage == 3 and not info["zero3_params"]:
            raise RuntimeError("ZeRO-3 was requested but no parameter is partitioned")
        sharded = self.fsdp or self.stage == 3
        if sharded and info["four_bit_layers"] and info["world_size"] > 1:
            if info["four_bit_local"] >= info["four_bit_full"]:
                raise RuntimeError(
                    f"{info['requested']} was requested but the {info['four_bit_layers']} 4-bit layers of the "
                    "QLoRA base are whole on every process (bnb_4bit_quant_storage differs from the other "
                    "weights' dtype?): the base is not sharded"
                )
        if state.is_world_process_zero:
            log.info("sharding: %s", ", ".join(f"{k}={v}" for k, v in info.items() if v not in (None, [], 0)))
