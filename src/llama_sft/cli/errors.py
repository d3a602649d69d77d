"""Expected failures (bad data, bad config, missing files) print one clear message, not a traceback."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from llama_sft.exceptions import ConfigError, UsageError

err_console = Console(stderr=True)


def expected_errors() -> tuple[type[BaseException], ...]:
    from llama_sft.data.formats import RecordError
    from llama_sft.data.issues import DataError
    from llama_sft.data.templates import TemplateError

    return (ConfigError, DataError, TemplateError, RecordError, FileNotFoundError, UsageError)


def run_with_clean_errors(func, *args) -> int:
    try:
        result = func(*args)
    except expected_errors() as exc:
        message = str(exc)
        # A data report's lines already start with their severity.
        prefix = "" if message.startswith(("error:", "warning:")) else "[bold red]error:[/] "
        err_console.print(f"{prefix}{escape(message)}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return int(result or 0)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)
