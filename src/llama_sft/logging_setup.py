"""Log to the terminal on rank 0 only; other ranks log warnings and errors."""

from __future__ import annotations

import logging


def configure(main: bool = True) -> None:
    level = logging.INFO if main else logging.WARNING
    logger = logging.getLogger("llama_sft")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[llama-sft] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    import transformers

    transformers.logging.set_verbosity_warning()
