"""`serve`: an OpenAI-compatible HTTP server for a bundle (options from ServeConfig)."""
from __future__ import annotations

import click

from ..serve.config import API_KEY_ENV, LOG_LEVELS, ServeConfig  # light: the config only
from ._options import config_option

_FIELDS = ("host", "port", "api_key", "model_name", "memory_budget_mb", "queue_size", "max_body_bytes",
           "max_tokens_limit", "default_max_tokens", "max_prompt_chars", "preload", "log_level")


@click.command("serve", short_help="Serve a bundle over an OpenAI-compatible HTTP API (streaming, usage, energy).")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@config_option(ServeConfig, "host", help="Address to bind (anything but loopback needs --api-key).")
@config_option(ServeConfig, "port", help="TCP port (0 = any free port).")
@config_option(ServeConfig, "api_key", envvar=API_KEY_ENV, show_envvar=True,
               help="Require `Authorization: Bearer KEY` on /v1 and /metrics.")
@config_option(ServeConfig, "model_name", help="The ensemble's model id (default: the bundle directory's name).")
@config_option(ServeConfig, "memory_budget_mb", help="Unload least recently used idle members beyond this (MB).")
@config_option(ServeConfig, "queue_size", help="Requests that may wait per member; beyond: 429 with Retry-After.")
@config_option(ServeConfig, "max_body_bytes", help="Largest request body (400 beyond).")
@config_option(ServeConfig, "max_tokens_limit", help="Largest max_tokens a request may ask for (400 beyond).")
@config_option(ServeConfig, "default_max_tokens", help="max_tokens of a request that gives none.")
@config_option(ServeConfig, "max_prompt_chars", help="Longest prompt, in characters (400 beyond).")
@config_option(ServeConfig, "preload", is_flag=True, show_default=False, help="Load every member at start-up.")
@config_option(ServeConfig, "log_level", choices=LOG_LEVELS, help="uvicorn's log level.")
def serve_cmd(bundle_path, **kw):
    """Serve BUNDLE at http://HOST:PORT/v1: chat and text completions (streamed or not), /v1/models,
    /health and /metrics (Prometheus). `model` is the bundle's name (the ensemble decides) or a
    member's name. Every response carries usage with its energy and the member(s) that answered.

    \b
    Example:
      edge-downscale serve demo-bundle --port 8080
      curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "demo-bundle", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'
    """
    from ..serve import serve

    config = ServeConfig.from_dict({k: kw[k] for k in _FIELDS})
    serve(bundle_path, config, log=lambda m: click.echo(m, err=True))
