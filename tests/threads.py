"""Thread count for tests that train or generate with tiny models (importable: tests/ is on sys.path).

Tiny models run ~10x faster on one thread than on two busy cores (CI runners, shared machines); the
package's own `one_thread` (what the demos decode under) does exactly that.
"""

from __future__ import annotations

from llama_sft.generation import one_thread as single_thread

__all__ = ["single_thread"]
