"""llama-sft: supervised fine-tuning of LLaMA-family chat models."""

__version__ = "0.1.0"
