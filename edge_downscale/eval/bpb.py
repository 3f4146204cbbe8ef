"""Bits-per-byte: tokenizer-independent language-modelling quality on held-out text.

    bpb = (sum over every token of -log p(token | its left context)) / (ln 2 * number of UTF-8 bytes)

Every byte of every document is covered: each document is prefixed with the model's BOS (or EOS)
so its first token is scored too. Documents longer than the window are scored with a sliding
window: windows start every ``stride`` tokens and each scores only tokens not scored before, so
every token after the first window sees at least ``max_length - stride`` tokens of context.
Because the denominator counts bytes, models with different tokenizers compare directly.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator

import numpy as np

from ..errors import EvalError
from ..runtime.base import Backend


@dataclasses.dataclass
class BpbResult:
    bits_per_byte: float
    nll_nats: float
    n_bytes: int
    n_tokens: int
    n_documents: int
    n_windows: int

    @property
    def bits_per_token(self) -> float:
        return self.nll_nats / math.log(2) / max(self.n_tokens, 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bits_per_token"] = self.bits_per_token
        return d


def windows(n_targets_plus_one: int, max_length: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(begin, end, first_new)`` over a sequence of length n: score targets [first_new, end).

    ``first_new`` is an absolute position; targets are positions 1..n-1 (position 0 is the prefix).
    """
    n = n_targets_plus_one
    stride = max(1, min(stride, max_length - 1))  # a window's first token has no context: overlap >= 1
    scored_up_to = 1
    begin = 0
    while scored_up_to < n:
        end = min(begin + max_length, n)
        if end > scored_up_to:
            yield begin, end, scored_up_to
            scored_up_to = end
        begin += stride


def bits_per_byte(backend: Backend, texts: Iterable[str], *, max_length: int = 512, stride: int = 256,
                  progress=None) -> BpbResult:
    """Score ``texts`` with ``backend`` and return bits-per-byte over all of them together."""
    max_length = min(max_length, backend.context_length)
    prefix = backend.prefix_ids
    nll = 0.0
    n_bytes = n_tokens = n_docs = n_windows = 0
    for text in texts:
        if not text:
            continue
        ids = prefix + backend.tokenize(text)  # (n,)
        for begin, end, first_new in windows(len(ids), max_length, stride):
            (lp,) = backend.token_logprobs([ids[begin:end]])  # (end-begin-1,): lp[j] = log p(ids[begin+j+1])
            new = lp[first_new - begin - 1:]
            if not np.all(np.isfinite(new)):
                raise EvalError("the model produced non-finite log-probabilities (NaN/Inf weights?)")
            nll -= float(new.sum())
            n_windows += 1
        n_tokens += len(ids) - len(prefix)
        n_bytes += len(text.encode("utf-8"))
        n_docs += 1
        if progress is not None:
            progress.update(len(text.encode("utf-8")))
    if n_bytes == 0:
        raise EvalError("no text to score: the split is empty; build a larger corpus or pick another split")
    return BpbResult(bits_per_byte=nll / math.log(2) / n_bytes, nll_nats=nll, n_bytes=n_bytes,
                     n_tokens=n_tokens, n_documents=n_docs, n_windows=n_windows)
