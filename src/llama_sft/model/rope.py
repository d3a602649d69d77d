"""RoPE scaling written into the model config, so training and inference use the same positions.

transformers 5 keeps RoPE settings under `config.rope_parameters` ({"rope_type", "factor",
"rope_theta", ...}); the saved config.json then carries them to chat, eval, merge and servers.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def apply_rope_scaling(
    config, rope_type: str | None, factor: float | None, model_max_length: int
) -> dict | None:
    """Set `config.rope_parameters` for the requested scaling; returns the new parameters (or None)."""
    if rope_type is None or factor is None or factor <= 1.0:
        return None
    params = dict(getattr(config, "rope_parameters", None) or {})
    original = getattr(config, "max_position_embeddings", None)
    params.update({"rope_type": rope_type, "factor": float(factor)})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    if rope_type in ("yarn", "llama3"):
        params.setdefault("original_max_position_embeddings", original)
    if rope_type == "llama3":
        params.setdefault("low_freq_factor", 1.0)
        params.setdefault("high_freq_factor", 4.0)
    if rope_type == "dynamic":
        log.warning(
            "rope_scaling_type=dynamic: dynamic NTK changes the RoPE base as a sequence grows past "
            "max_position_embeddings, so positions seen in training depend on each batch's length; "
            "linear (or yarn) scaling is stable during training."
        )
    config.rope_parameters = params
    if original and model_max_length > original:
        # Let the model accept the longer context it is being trained for.
        config.max_position_embeddings = int(model_max_length) if rope_type != "dynamic" else original
    return params
