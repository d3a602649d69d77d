"""Errors that mean "the input or the config is wrong", kept import-light so the CLI can catch
them without loading the training stack."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; the message says how to fix it."""


class UsageError(ValueError):
    """A command-line value that cannot work (out-of-range index, missing option)."""
