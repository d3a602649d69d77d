"""`llama-sft train [CONFIG.yaml] [--flags]`: FastChat's flags, transformers' TrainingArguments."""

from __future__ import annotations

import sys

USAGE = """\
llama-sft train [CONFIG.yaml] [--flag value ...]

Fine-tune a LLaMA-family model on chat data with transformers' Trainer. A YAML file (sections
model/data/lora/training/distributed, or flat keys) gives defaults; flags override it. FastChat's
train.py / train_lora.py flags work as they are, so its scripts run with the program name changed.

Examples:
  llama-sft train --model_name_or_path meta-llama/Llama-2-7b-hf --data_path data.json \\
      --output_dir runs/7b-lora --lora_r 8 --lora_alpha 16 --bf16 True \\
      --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --num_train_epochs 3
  llama-sft train configs/llama2-7b-qlora.yaml --data_path my.jsonl
  torchrun --nproc_per_node 8 -m llama_sft.cli.main train configs/llama2-70b-lora-zero3.yaml
  deepspeed llama_sft/... --deepspeed configs/deepspeed/zero2.json   (or accelerate launch)

Most used: --method full|lora|qlora (or --q_lora True), --lora_r, --lora_alpha, --lora_target_modules,
--conv_template vicuna_v1.1, --model_max_length, --packing none|padded|packed, --masking,
--eval_data_path / --eval_ratio with --eval_strategy steps --eval_steps N, --save_strategy,
--resume_from_checkpoint auto, --activation_checkpointing True (FastChat: --gradient_checkpointing),
--deepspeed FILE (a config's paths are relative to it), --rope_scaling_type, --special_tokens_in_content.
All flags (every transformers TrainingArguments field is one) follow.
"""


def register(subparsers) -> None:
    # `train` parses its own flags (see main.py); this entry is for the command list and --help.
    from .main import formatter

    subparsers.add_parser(
        "train",
        help="fine-tune: LoRA, QLoRA or full (FastChat-compatible flags)",
        description=USAGE,
        formatter_class=formatter(),
        add_help=False,
    )


def run_train(argv: list[str]) -> int:
    from .errors import run_with_clean_errors

    if any(a in ("-h", "--help") for a in argv):
        from ..config import build_parser

        print(USAGE)
        build_parser().print_help()
        return 0
    config_file = None
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        config_file, argv = argv[0], argv[1:]

    def go():
        from ..config import parse_run_config
        from ..train.distributed import deepspeed_in_one_process
        from ..train.preemption import PREEMPTED_EXIT_CODE, Preempted
        from ..train.run import train

        note = deepspeed_in_one_process(argv, config_file)
        run = parse_run_config(argv, config_file)
        run.notes += [note] if note else []
        try:
            train(run)
        except Preempted as stop:  # checkpoint complete; a requeue script tells this code from a failure
            print(f"llama-sft: {stop}", file=sys.stderr)
            return PREEMPTED_EXIT_CODE
        return 0

    return run_with_clean_errors(go)


if __name__ == "__main__":
    sys.exit(run_train(sys.argv[1:]))
