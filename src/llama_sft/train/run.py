"""`llama-sft train`: config -> checks -> data -> model -> transformers.Trainer -> outputs.

One code path serves one CPU process and N GPU processes (torchrun / accelerate / deepspeed set
the environment; the Trainer does the distribution). Rank 0 tokenizes first and caches; the
other ranks then read the cache.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import ConfigError, RunConfig
from ..data.dataset import build_dataset, file_fingerprint
from ..data.templates import get_template
from ..data.tokenizer import load_tokenizer, save_tokenizer
from ..model.adapters import add_adapters, trainable_summary
from ..model.load import load_model, load_model_config, preflight, quantization_config
from ..model.quantize import describe as describe_quantization
from ..model.trained import BASE_CONFIG
from .callbacks import MetricsLogger
from .collator import make_collator
from .distributed import ShardingCheck, setup_distributed
from .outputs import plot_loss, save_template, write_report, write_run_record
from .packing import PackedDataset, use_packed_attention
from .resume import resolve_resume
from .trainer import SFTTrainer

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
    run.validate(
        world_size=world_size(),
        max_position_embeddings=getattr(model_config, "max_position_embeddings", None),
    )
    preflight(run)
    setup_distributed(run)  # refuses what cannot shard or save; process group before any model loads
    tokenizer = load_tokenizer(
        run.model.model_name_or_path,
        trust_remote_code=run.model.trust_remote_code,
        model_max_length=run.data.model_max_length,
    )
    template = get_template(run.data.conv_template, tokenizer)
    return model_config, tokenizer, template


def build_datasets(run: RunConfig, tokenizer, template):
    d = run.data
    common = dict(
        tokenizer=tokenizer,
        template=template,
        max_length=d.model_max_length,
        strategy=d.masking,
        data_format=d.data_format,
        skip_bad=d.skip_bad,
        strict=d.strict,
        cache_dir=d.data_cache_dir,
        num_workers=d.preprocess_num_workers,
    )
    with run.training.main_process_first(desc="tokenizing data"):
        train, report, stats = build_dataset(d.data_path, **common)
        evaluation = None
        if d.eval_data_path:
            evaluation, eval_report, _ = build_dataset(d.eval_data_path, **common)
            report.extend(eval_report)
    if evaluation is None and d.eval_ratio > 0:
        split = train.train_test_split(test_size=d.eval_ratio, seed=run.training.seed)
        train, evaluation = split["train"], split["test"]
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
            "data: %d train conversations, %s eval; %d supervised tokens; %d truncated; %d warning(s), %d skipped",
            len(train_ds),
            len(eval_ds) if eval_ds is not None else 0,
            stats["supervised_tokens"],
            stats["truncated"],
            len(report.warnings),
            len(report.skipped_ids),
        )
        for severity, reason, count, examples in report.summary_rows():
            log.info("  %s %s: %d (e.g. %s)", severity, reason, count, "; ".join(examples))
    for note in run.notes:
        log.warning(note)
    if t.dataloader_pin_memory and not __import__("torch").cuda.is_available():
        t.dataloader_pin_memory = False
    if run.model.rope_scaling_factor:
        log.info("RoPE scaling: %s x%s", run.model.rope_scaling_type, run.model.rope_scaling_factor)
    # Seed before the adapters exist: LoRA's A matrices are drawn at creation, before the Trainer
    # seeds anything, so without this two runs with the same --seed start from different weights.
    from transformers import set_seed

    set_seed(t.seed)
    model = load_model(run, model_config)
    if run.data.packing == "packed":
        # sdpa -> sdpa_packed (attention within each conversation); flash_attention_2 and eager stay
        log.info("packing: attention %s", use_packed_attention(model))
    if t.gradient_checkpointing:
        t.gradient_checkpointing_kwargs = t.gradient_checkpointing_kwargs or {"use_reentrant": False}
    model = add_adapters(model, run)
    params = trainable_summary(model)
    log.info(
        "method %s: %s trainable of %s parameters (%.4f%%)",
        run.lora.method,
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
        callbacks=[MetricsLogger(output_dir), sharding := ShardingCheck(run)],
        sample_ids=train_ds["id"],
    )
    resume = resolve_resume(t.resume_from_checkpoint, output_dir)
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    final_eval = trainer.evaluate() if eval_ds is not None else {}
    tokenizer.chat_template = template.to_jinja()
    trainer.save_model(str(output_dir))
    summary = {"train_loss": round(result.training_loss, 4), "steps": result.global_step}
    if final_eval:
        summary["eval_loss"] = round(final_eval["eval_loss"], 4)
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        save_tokenizer(
            tokenizer, template, output_dir
        )  # chat_template = training template, reloads to same ids
        model_config.to_json_file(str(output_dir / BASE_CONFIG)) if run.lora.method != "full" else None
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
                "distributed": sharding.info,
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
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Wait until every rank is past its last collective (rank 0 writes outputs alone), then tear
        # the group down: a gloo process that exits with a live group, or destroys it while a peer
        # still uses it, can abort ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()
    return summary
