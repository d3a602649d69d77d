"""RoPE scaling written into the model config, so training and inference use the same positions.

transformers 5 keeps RoPE settings under `config.rope_parameters` ({"rope_type", "factor",
"rope_theta", ...}); the saved config.json then carries them to chat, eval, merge and servers.

A model may already scale RoPE (LLaMA-3.1: `llama3`, factor 8 over 8,192 positions). Scaling it
again composes with what is there when the kind is the same (the factors multiply over the same
original length) and is refused otherwise: replacing `llama3` by `linear` x2 would silently
throw away the 8x the model was trained with.
"""

from __future__ import annotations

import logging

from ..exceptions import ConfigError

log = logging.getLogger(__name__)


def existing_scaling(config) -> dict | None:
    """The model's own RoPE scaling, or None when it has plain RoPE."""
    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type") in (None, "default"):
        return None
    return dict(params)


def check_rope_scaling(config, rope_type: str | None, factor: float | None) -> None:
    """Refuse, before any weights load, scaling of another kind on top of the model's own."""
    have = existing_scaling(config)
    if have is None or rope_type is None or factor is None or factor <= 1.0:
        return
    if rope_type != have["rope_type"]:
        original = have.get("original_max_position_embeddings")
        over = f" over {original} positions" if original else ""
        raise ConfigError(
            f"--rope_scaling_type {rope_type}: the model already scales RoPE ({have['rope_type']}, factor "
            f"{have.get('factor')}{over}); scaling of another kind would replace it. Use --rope_scaling_type "
            f"{have['rope_type']} (the factors multiply: {have.get('factor')} x {factor:g}), or train within "
            f"max_position_embeddings {getattr(config, 'max_position_embeddings', '?')}"
        )


def apply_rope_scaling(
    config, rope_type: str | None, factor: float | None, model_max_length: int
) -> dict | None:
    """Set `config.rope_parameters` for the requested scaling; returns the new parameters (or None)."""
    if rope_type is None or factor is None or factor <= 1.0:
        return None
    check_rope_scaling(config, rope_type, factor)
    have = existing_scaling(config)
    params = dict(getattr(config, "rope_parameters", None) or {})
    original = getattr(config, "max_position_embeddings", None)
    if have is not None:  # same kind: compose over the model's original length
        factor = float(have.get("factor") or 1.0) * float(factor)
        original = have.get("original_max_position_embeddings") or original
        log.info("RoPE: the model's %s scaling composed to factor %g", rope_type, factor)
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
    limit = getattr(config, "max_position_embeddings", None)
    if limit and model_max_length > limit and rope_type != "dynamic":
        # Let the model accept the longer context it is being trained for. Dynamic NTK measures its
        # stretch against max_position_embeddings, so that stays; `scaled_context` reads the factor.
        config.max_position_embeddings = int(model_max_length)
    return params


def scaled_context(config) -> int | None:
    """How many positions a model serves: max_position_embeddings, times the factor under dynamic
    NTK (which keeps max_position_embeddings at the original length and stretches beyond it)."""
    limit = getattr(config, "max_position_embeddings", None)
    params = getattr(config, "rope_parameters", None) or {}
    if limit and params.get("rope_type") == "dynamic" and float(params.get("factor") or 1.0) > 1.0:
        return int(limit * float(params["factor"]))
    return limit
