"""What an ensemble returns (:class:`Response`, streamed :class:`ResponseChunk`) and a member's failure."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import EdgeDownscaleError
from .generation import Usage


@dataclasses.dataclass
class Response:
    """What an ensemble answered, who answered and why, and what it cost (summed over members)."""

    strategy: str
    members: list[str]  # the member(s) whose output is the answer
    reason: str  # one human-readable line
    usage: Usage
    text: str | None = None  # generate
    finish_reason: str | None = None
    choice: int | None = None  # choose: index of the chosen option
    option_scores: list[float] | None = None  # choose: combined score per option
    logprob: float | None = None  # score: total log-probability of the text
    bits_per_byte: float | None = None  # score
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # router decision, cascade levels, votes
    fallbacks: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {"member", "error"} per failure
    tokens: list[int] | None = None  # generate: the answer's token ids (the answering member's vocabulary)
    token_logprobs: list[float] | None = None  # generate: log-probability of each of those tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ResponseChunk:
    """Streamed text; ``restart`` means the text so far was discarded (a member failed mid-stream)."""

    text: str
    final: Response | None = None
    restart: bool = False


class MemberError(EdgeDownscaleError):
    """A member raised while answering; strategies catch it to fall back."""
