"""Thread count for tests that train or generate with tiny models (importable: tests/ is on sys.path)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def single_thread():
    """Tiny models run ~10x faster on one thread than on two busy cores (CI runners, shared machines)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
