"""The server's settings: one validated config (the CLI's defaults are its fields)."""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import ClassVar

from ..config import StageConfig, check, check_int, is_number

API_KEY_ENV = "EDGE_DOWNSCALE_API_KEY"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class ServeConfig(StageConfig):
    """How ``edge-downscale serve`` listens, admits and caps requests.

    ``queue_size``: requests that may wait for one member while it answers another (a full queue
    answers ``429`` with ``Retry-After``). ``memory_budget_mb``: the LRU budget of loaded members
    (None = the bundle's own). Caps (``max_body_bytes``, ``max_tokens_limit``, ``max_prompt_chars``)
    answer ``400`` in the OpenAI error format. ``default_max_tokens``: when a request gives none.
    A host other than loopback needs an ``api_key``: nothing is exposed unauthenticated by accident.
    """

    stage: ClassVar[str] = "serve"
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    model_name: str | None = None  # the ensemble's model id (default: the bundle directory's name)
    memory_budget_mb: float | None = None
    queue_size: int = 16
    max_body_bytes: int = 1_000_000
    max_tokens_limit: int = 1024
    default_max_tokens: int = 256
    max_prompt_chars: int = 32_000
    preload: bool = False  # load every member at start-up (default: on first use)
    log_level: str = "warning"

    def validate(self) -> None:
        check(isinstance(self.host, str) and self.host != "", "host must be a non-empty string")
        check_int(self, "port", 0, 65535)
        check(self.api_key is None or (isinstance(self.api_key, str) and len(self.api_key) >= 8),
              "api_key must be a string of at least 8 characters")
        check(self.api_key is not None or is_loopback(self.host),
              f"binding to {self.host} would serve anyone on the network unauthenticated: "
              f"set --api-key (or {API_KEY_ENV}), or bind to 127.0.0.1")
        check(self.model_name is None or (isinstance(self.model_name, str) and self.model_name.strip() != ""),
              "model_name must be a non-empty string")
        check(self.memory_budget_mb is None or (is_number(self.memory_budget_mb) and self.memory_budget_mb > 0),
              "memory_budget_mb must be > 0")
        check_int(self, "queue_size", 0)
        check_int(self, "max_body_bytes", 1024)
        check_int(self, "max_tokens_limit", 1)
        check_int(self, "default_max_tokens", 1)
        check(self.default_max_tokens <= self.max_tokens_limit, "default_max_tokens must be <= max_tokens_limit")
        check_int(self, "max_prompt_chars", 1)
        check(isinstance(self.preload, bool), "preload must be true or false")
        check(self.log_level in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}")
