"""`llama-sft train`: config -> checks -> data -> model -> transformers.Trainer -> outputs.

One code path serves one CPU process and N GPU processes (torchrun / accelerate / deepspeed set
the environment; the Trainer does the distribution). The first process to take the cache's file
lock tokenizes; the others then read the cache (data/prepare.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..data.dataset import file_fingerprint, split_by_group
from ..data.encode import REASONING_AS_CONTEXT
from ..data.prepare import build_dataset_once
from ..data.templates import get_template
from ..data.tokenizer import TerminatorError, check_terminator, load_tokenizer, save_tokenizer
from ..model.adapters import add_adapters, trainable_summary
from ..model.lean_load import load_for_this_rank
from ..model.load import load_model_config, preflight, quantization_config
from ..model.quantize import describe as describe_quantization
from ..model.rope import check_rope_scaling, existing_scaling
from ..model.trained import BASE_CONFIG
from ..rundir import write_generation_config
from .callbacks import LeanLoading, MetricsLogger
from .collator import make_collator
from .distributed import ShardingCheck, setup_distributed
from .fault_injection import fault_injection
from .host_memory import HostMemory
from .loss import install as install_loss
from .outputs import plot_loss, save_template, write_report, write_run_record
from .packing import PackedDataset, use_packed_attention
from .preemption import Preempted, PreemptionHandler, clear_marker, write_marker
from .resume import resolve_resume
from .trainer import SFTTrainer
from .world_resume import WorldRecorder, check_world_resume, current_world

log = logging.getLogger("llama_sft")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def prepare_run(run: RunConfig):
    """Everything that can fail without weights: config rules, environment, tokenizer, template."""
    if not run.model.model_name_or_path:
        raise ConfigError("no model: pass --model_name_or_path (hub id or local directory)")
    try:
        model_config = load_model_config(run)
    except OSError as exc:  # missing directory, bad hub id, offline without a cached copy
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"--model_name_or_path {run.model.model_name_or_path}: cannot read its config ({first}). "
            "Pass a local model directory (with config.json) or a hub id reachable from here."
        ) from None
    have = existing_scaling(model_config)
    if have is not None and run.model.rope_scaling_type is None:
        run.model.rope_scaling_type = have["rope_type"]  # longer than the model: extend its own scaling
    run.validate(
        world_size=world_size(),
        max_position_embeddings=getattr(model_config, "max_position_embeddings", None),
    )
    if have is not None and not (run.model.rope_scaling_factor or 0.0) > 1.0:
        run.model.rope_scaling_type = None  # within the model's own context: its scaling stays as it is
    check_rope_scaling(model_config, run.model.rope_scaling_type, run.model.rope_scaling_factor)
    preflight(run)
    setup_distributed(run)  # refuses what cannot shard or save; process group before any model loads
    return model_config, *tokenizer_and_template(run)


def tokenizer_and_template(run: RunConfig):
    """The tokenizer and template the run trains with (and `llama-sft data prepare` caches for)."""
    tokenizer = load_tokenizer(
        run.model.model_name_or_path,
        trust_remote_code=run.model.trust_remote_code,
        model_max_length=run.data.model_max_length,
    )
    template = get_template(run.data.conv_template, tokenizer)
    try:
        for warning in check_terminator(tokenizer, template):
            log.warning(warning)
    except TerminatorError as exc:
        raise ConfigError(str(exc)) from None
    return tokenizer, template


def build_datasets(run: RunConfig, tokenizer, template):
    d = run.data
    common = dict(
        tokenizer=tokenizer,
        template=template,
        max_length=d.model_max_length,
        strategy=d.masking if d.train_on_reasoning else d.masking + REASONING_AS_CONTEXT,
        data_format=d.data_format,
        skip_bad=d.skip_bad,
        strict=d.strict,
        cache_dir=d.data_cache_dir,
        num_workers=d.preprocess_num_workers,
        special_policy=d.special_tokens_in_content,
    )
    # A file lock per cache entry, not a barrier: ranks never wait for tokenization in a collective
    # whose timeout (--ddp_timeout) could end the job (data/prepare.py).
    train, report, stats = build_dataset_once(d.data_path, **common)
    evaluation = None
    if d.eval_data_path:
        evaluation, eval_report, _ = build_dataset_once(d.eval_data_path, **common)
        report.extend(eval_report)
    if evaluation is None and d.eval_ratio > 0:
        try:
            train, evaluation = split_by_group(train, d.eval_ratio, run.training.seed)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    train = train.add_column("sample_index", list(range(len(train))))
    if evaluation is not None:
        evaluation = evaluation.add_column("sample_index", list(range(len(evaluation))))
    return train, evaluation, report, stats


def train(run: RunConfig) -> dict:
    from .. import logging_setup

    logging_setup.configure(main=is_main_process())
    model_config, tokenizer, template = prepare_run(run)
    t = run.training
    output_dir = Path(t.output_dir)
    train_ds, eval_ds, report, stats = build_datasets(run, tokenizer, template)
    if is_main_process():
        log.info(
            "data: %d train conversations, %s eval; %d supervised tokens; %d truncated; "
            "%d token(s) across a prompt/reply boundary in %d conversation(s); %d warning(s), %d skipped",
            len(train_ds),
            len(eval_ds) if eval_ds is not None else 0,
            stats["supervised_tokens"],
            stats["truncated"],
            stats.get("boundary_tokens", 0),
            stats.get("boundary_conversations", 0),
            len(report.warnings),
            len(report.skipped_ids),
        )
        for severity, reason, count, examples in report.summary_rows():
            first = next(i for i in report.issues if i.reason == reason)
            log.info("  %s %s: %d (e.g. %s: %s)", severity, reason, count, "; ".join(examples), first.detail)
    for note in run.notes:
        log.warning(note)
    if t.dataloader_pin_memory and not __import__("torch").cuda.is_available():
        t.dataloader_pin_memory = False
    if run.model.rope_scaling_factor:
        log.info("RoPE scaling: %s x%s", run.model.rope_scaling_type, run.model.rope_scaling_factor)
    # Seed before the adapters exist: LoRA's A matrices are drawn at creation, before the Trainer
    # seeds anything, so without this two runs with the same --seed start from different weights.
    from transformers import set_seed

    world = current_world(run, world_size())
    resume = resolve_resume(t.resume_from_checkpoint, output_dir)
    if resume:
        check_world_resume(resume, world)  # before the weights load: a refusal takes seconds
    if is_main_process():
        clear_marker(output_dir)  # PREEMPTED describes the latest attempt only

    set_seed(t.seed)
    host_memory = HostMemory()
    lean_loading = LeanLoading()  # freed load buffers go back to the system (train/malloc.py)
    model = load_for_this_rank(run, model_config)  # FSDP cpu_ram_efficient_loading: rank 0 reads alone
    if run.data.packing == "packed":
        # sdpa -> sdpa_packed (attention within each conversation); flash_attention_2 and eager stay
        log.info("packing: attention %s", use_packed_attention(model))
    if t.activation_checkpointing:
        t.activation_checkpointing_kwargs = t.activation_checkpointing_kwargs or {"use_reentrant": False}
    model = add_adapters(model, run)
    host_memory.loaded()
    install_loss(model, t.loss_impl)  # after the adapters: it hooks the causal LM inside peft's wrapper
    params = trainable_summary(model)
    log.info(
        "method %s, loss %s: %s trainable of %s parameters (%.4f%%)",
        run.lora.method,
        t.loss_impl,
        f"{params['trainable_params']:,}",
        f"{params['total_params']:,}",
        100 * params["trainable_share"],
    )
    train_rows, eval_rows = train_ds, eval_ds
    if run.data.packing == "packed":
        train_rows = PackedDataset(train_ds, run.data.model_max_length)
        eval_rows = PackedDataset(eval_ds, run.data.model_max_length) if eval_ds is not None else None
        log.info(
            "packing: %d conversations in %d rows of up to %d tokens (%.1f%% full)",
            len(train_ds),
            len(train_rows),
            run.data.model_max_length,
            100 * sum(train_ds["length"]) / (len(train_rows) * run.data.model_max_length),
        )
    trainer = SFTTrainer(
        model=model,
        args=t,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=make_collator(run.data.packing, tokenizer, run.data.model_max_length),
        processing_class=tokenizer,
        callbacks=[
            MetricsLogger(output_dir),
            sharding := ShardingCheck(run),
            WorldRecorder(world),
            *fault_injection(),  # test hook, before the handler that reacts to its signal
            preemption := PreemptionHandler(),
            host_memory,
            lean_loading,  # after host_memory, which reads the load peak before the heap is trimmed
        ],
        sample_ids=train_ds["id"],
    )
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    if preemption.stopped_at is not None:  # a signal: checkpoint written, no final save or eval
        checkpoint = preemption.checkpoint(output_dir)
        if trainer.is_world_process_zero():
            write_marker(output_dir, preemption.stopped_at, checkpoint)
        close_process_group()
        raise Preempted(preemption.stopped_at, checkpoint)
    final_eval = trainer.evaluate() if eval_ds is not None else {}
    tokenizer.chat_template = template.to_jinja()
    trainer.save_model(str(output_dir))
    host = host_memory.gather()  # every rank, before rank 0 writes the record
    summary = {"train_loss": round(result.training_loss, 4), "steps": result.global_step}
    if final_eval:
        summary["eval_loss"] = round(final_eval["eval_loss"], 4)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_tokenizer(
            tokenizer, template, output_dir
        )  # chat_template = training template, reloads to same ids
        model_config.to_json_file(str(output_dir / BASE_CONFIG)) if run.lora.method != "full" else None
        # Adapter runs too: vLLM or plain `generate` must stop where `llama-sft chat` does.
        write_generation_config(output_dir, template, tokenizer, getattr(model, "generation_config", None))
        template_file = save_template(template, output_dir)
        fingerprints = {
            str(p): file_fingerprint(p)[:16] for p in [*run.data.data_path, *(run.data.eval_data_path or [])]
        }
        record = write_run_record(
            output_dir,
            run,
            template,
            template_file,
            fingerprints,
            stats,
            params,
            extra={
                "summary": summary,
                "rope_parameters": getattr(model_config, "rope_parameters", None),
                # chat, serve and eval tokenize prompts under the same policy (data/special_content.py)
                "special_tokens_in_content": run.data.special_tokens_in_content,
                "distributed": sharding.info,
                "host_memory": host,
                "quantization": describe_quantization(quantization_config(run))
                if run.lora.method == "qlora"
                else None,
            },
        )
        plot_loss(output_dir)
        write_report(output_dir, record, summary)
        log.info(
            "saved to %s: train loss %.4f%s",
            output_dir,
            result.training_loss,
            f", eval loss {final_eval['eval_loss']:.4f}" if final_eval else "",
        )
    close_process_group()
    return summary


def close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Wait until every rank is past its last collective (rank 0 writes outputs alone), then tear
        # the group down: a gloo process that exits with a live group, or destroys it while a peer
        # still uses it, can abort ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    import sys

    # DeepSpeed keeps its own handles on the (now destroyed) groups (its comm backend and the
    # data-parallel groups it cached); forget them so a second run in the same process (a notebook,
    # the tests) initializes afresh instead of failing with "Group ... is not registered".
    ds_groups = sys.modules.get("deepspeed.utils.groups")
    if ds_groups is not None and hasattr(ds_groups, "_release_process_group_references"):
        ds_groups._release_process_group_references(group=None)
    ds_comm = sys.modules.get("deepspeed.comm.comm")
    if ds_comm is not None and getattr(ds_comm, "cdb", None) is not None:
        ds_comm.cdb = None
