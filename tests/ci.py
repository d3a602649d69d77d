"""What a test does when something it needs is missing: skip on a developer's laptop, fail in CI.

Importable from any test module (`from ci import unavailable, require_module`); tests/conftest.py
re-exports `unavailable`. CI (CI=true) installs every dev extra and reaches the registry, so a
skip there would hide a broken install or a broken fetch.
"""

from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """A download or dependency the test needs is missing: skip locally, fail under CI=true."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a needed download or dev dependency must not skip)")
    pytest.skip(reason)


def require_module(name: str):
    """`pytest.importorskip` that fails under CI=true (the module is a dev dependency)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc}); pip install -e '.[dev]'")


def hardware_lacks(reason: str):
    """The machine lacks a hardware feature the test is about (a CPU instruction set, a GPU): a skip
    that stands under CI too, since no install step can fix it."""
    pytest.skip(reason)
