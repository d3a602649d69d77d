"""OpenAI-compatible HTTP serving of a trained run (FastAPI + uvicorn)."""

from .app import create_app, prompt_for

__all__ = ["create_app", "prompt_for"]
