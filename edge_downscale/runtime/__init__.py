"""Lightweight runtime: loads exported specialists and scores/generates with them.

Never imports torch or transformers (a test enforces this), so apps can embed it.
"""
from .base import BACKENDS, Backend, backend_class

__all__ = ["BACKENDS", "Backend", "backend_class"]
