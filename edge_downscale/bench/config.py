"""What one benchmark run measures and how long it takes: :class:`BenchConfig` and its quick profile."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ..config import StageConfig, check, check_int, is_number

# The --quick profile: a smoke run of a minute or two (fewer rounds, prompts, bytes and items).
QUICK: dict[str, Any] = {"rounds": 2, "warmup": 1, "n_prompts": 2, "prompt_chars": 200, "max_tokens": 16,
                         "max_bytes": 3_000, "piece_chars": 600, "mc_items": 6, "profile": "quick"}
PROFILES = ("full", "quick")


@dataclasses.dataclass
class BenchConfig(StageConfig):
    """One benchmark run.

    Speed: ``warmup`` unrecorded rounds, then ``rounds`` rounds; each round sends one greedy request of
    ``max_tokens`` to every configuration (the order rotates each round), its prompt the first
    ``prompt_chars`` characters of one of ``n_prompts`` held-out texts (taken round-robin across
    domains). Quality: at most ``max_bytes`` held-out bytes per domain, cut into pieces of at most
    ``piece_chars`` characters (each scored in one window from BOS, by every configuration alike), and
    the first ``mc_items`` multiple-choice items per domain. ``threads``: backend threads (llama.cpp
    ``n_threads``, onnxruntime intra-op), None = the backend's default. ``timeout_s``: the longest a
    worker may take for one request before the run is abandoned. ``bandwidth_mib``: the working set of
    the memory-bandwidth measurement behind the roofline column (several times the last-level cache).
    """

    stage: ClassVar[str] = "bench"
    rounds: int = 8
    warmup: int = 1
    n_prompts: int = 4
    prompt_chars: int = 400
    max_tokens: int = 64
    max_bytes: int = 24_000
    piece_chars: int = 1_200
    mc_items: int = 40
    threads: int | None = None
    timeout_s: float = 900.0
    bandwidth_mib: int = 256
    plots: bool = True
    overwrite: bool = False
    profile: str = "full"  # "quick" from quick(): which profile the figures come from

    def validate(self) -> None:
        check_int(self, "rounds", 1)
        check_int(self, "warmup", 0)
        check_int(self, "n_prompts", 1)
        check_int(self, "prompt_chars", 16)
        check_int(self, "max_tokens", 2)
        check_int(self, "max_bytes", 64)
        check_int(self, "piece_chars", 32)
        check_int(self, "mc_items", 0)
        if self.threads is not None:
            check_int(self, "threads", 1)
        check_int(self, "bandwidth_mib", 1)
        check(is_number(self.timeout_s) and self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s!r}")
        for name in ("plots", "overwrite"):
            check(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        check(self.profile in PROFILES, f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        """The ``--quick`` profile (:data:`QUICK`), with ``overrides`` on top."""
        return cls.from_dict({**QUICK, **overrides})
