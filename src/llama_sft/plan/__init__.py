"""Memory planning: which LLaMA model and which training settings fit a set of GPUs.

`shapes` (model shapes and presets), `memory` (the per-GPU peak-memory model), `search` (largest
micro-batch, best setting, largest model), `report` (tables), `measure` and `probe` (measured runs to
check the model against). Only `measure` and `probe` import torch.
"""

from .memory import GIB, Breakdown, Setting, estimate
from .search import Row, best, largest_batch, largest_model, plan
from .shapes import DEFAULT_TARGETS, PRESETS, ModelShape, ShapeError, load_shape

__all__ = [
    "GIB",
    "Breakdown",
    "Setting",
    "estimate",
    "Row",
    "best",
    "largest_batch",
    "largest_model",
    "plan",
    "DEFAULT_TARGETS",
    "PRESETS",
    "ModelShape",
    "ShapeError",
    "load_shape",
]
