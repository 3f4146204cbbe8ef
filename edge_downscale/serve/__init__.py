"""OpenAI-compatible HTTP server over :class:`~edge_downscale.runtime.Ensemble` (torch-free).

``edge-downscale serve BUNDLE`` or, from Python::

    from edge_downscale.serve import ServeConfig, serve
    serve("bundle/", ServeConfig(port=8080))

Importing this package is light (the config only): Starlette, uvicorn and prometheus-client (the
``[serve]`` extra) are imported when a server is built (:func:`create_app`, :func:`serve`).
"""
from __future__ import annotations

from typing import Any

from ..errors import MissingDependencyError
from .config import API_KEY_ENV, ServeConfig

__all__ = ["API_KEY_ENV", "ServeConfig", "create_app", "serve"]


def _app_module():
    try:
        from . import app
    except ImportError as e:
        raise MissingDependencyError(e.name or "starlette", "serve") from e
    return app


def create_app(bundle: Any, config: ServeConfig | None = None):
    """The Starlette app for ``bundle`` (a path or a loaded Ensemble); the bundle is verified first."""
    return _app_module().create_app(bundle, config)


def serve(bundle: Any, config: ServeConfig | None = None, **kw: Any) -> None:
    """Verify ``bundle``, then serve it with uvicorn until interrupted."""
    _app_module().serve(bundle, config, **kw)
