"""Typed errors. Every message says what went wrong *and what to do*; the CLI prints it on one line."""
from __future__ import annotations


class EdgeDownscaleError(Exception):
    """Base class of every error this library raises on purpose (bad input, missing pieces)."""

    exit_code = 2


class ConfigError(EdgeDownscaleError, ValueError):
    """A configuration value is invalid."""


class UnknownModelError(EdgeDownscaleError, KeyError):
    """A model name is neither registered nor an existing path."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ModelFormatError(EdgeDownscaleError):
    """A model file is not what it claims to be (not GGUF, truncated, wrong hash...)."""


class ModelFetchError(EdgeDownscaleError):
    """A model could not be obtained (no pip, registry unreachable, hash mismatch)."""


class CorpusError(EdgeDownscaleError):
    """A corpus source is empty, unreadable, or a corpus directory is malformed."""


class MissingDependencyError(EdgeDownscaleError, ImportError):
    """An optional dependency (an extra) is not installed."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"this needs the '{module}' package: pip install 'edge-downscale[{extra}]'"
        )
        self.module = module
        self.extra = extra


class EnergyUnavailableError(EdgeDownscaleError):
    """An energy meter was asked to measure although it is not available here (the message says why)."""


class EvalError(EdgeDownscaleError):
    """An evaluation cannot run on the given input."""


class LawFitError(EdgeDownscaleError):
    """Compression-law data cannot be read or fit (bad points, too few, nothing to identify)."""


class ExportError(EdgeDownscaleError):
    """An export failed or was refused, or an exported artifact does not match its manifest."""


class BundleError(EdgeDownscaleError):
    """An ensemble bundle is missing, malformed or tampered with, or none of its members could answer."""


class BenchError(EdgeDownscaleError):
    """A benchmark cannot run: a missing target or baseline, no held-out data, a worker that failed."""


def require(module: str, extra: str):
    """Import an optional module or raise a MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module, extra) from e
