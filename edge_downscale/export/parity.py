"""Parity gate: an export must score like its source model on held-out text of the target domain.

Two numbers per export, both on the same held-out text:
* the relative bits-per-byte increase over the source, and
* the mean per-token KL divergence KL(p_source || p_export) of the next-token distributions.
Each quantisation type has default thresholds (:data:`DEFAULT_GATES`); a miss is a
:class:`ParityError` showing the numbers unless the caller allows degraded exports.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ..eval.bpb import bits_per_byte
from ..runtime.base import Backend, log_softmax
from .errors import ExportError

# quant -> (max relative bits-per-byte increase, max mean KL in nats/token)
DEFAULT_GATES: dict[str, tuple[float, float]] = {
    # GGUF (llama.cpp)
    "f32": (0.001, 0.001), "f16": (0.002, 0.002), "q8_0": (0.005, 0.01), "q6_k": (0.01, 0.02),
    "q5_k_m": (0.02, 0.04), "q4_k_m": (0.03, 0.08), "q4_0": (0.05, 0.12),
    # ONNX (onnxruntime)
    "fp32": (0.001, 0.001), "fp16": (0.002, 0.002), "int8": (0.02, 0.05), "int4": (0.04, 0.10),
}


class ParityError(ExportError):
    """An export scores worse than its gate allows."""


@dataclasses.dataclass
class ParityResult:
    quant: str
    source_bpb: float
    export_bpb: float
    bpb_rel_delta: float  # (export - source) / source; negative = the export scored better
    mean_kl: float | None  # nats/token; None when the vocabularies differ
    n_bytes: int
    kl_tokens: int
    max_bpb_rel_delta: float
    max_kl: float
    passed: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        kl = "n/a" if self.mean_kl is None else f"{self.mean_kl:.4f}"
        return (f"{self.quant}: bits/byte {self.export_bpb:.4f} vs source {self.source_bpb:.4f} "
                f"({self.bpb_rel_delta:+.2%}, gate {self.max_bpb_rel_delta:.1%}), mean KL {kl} "
                f"(gate {self.max_kl}) on {self.n_bytes} bytes")


def mean_kl(source: Backend, exported: Backend, texts: Sequence[str], *, max_length: int = 512,
            max_tokens: int = 1024) -> tuple[float, int]:
    """Mean KL(p_source || p_export) per position over up to ``max_tokens`` tokens of ``texts``."""
    total, count = 0.0, 0
    for text in texts:
        if count >= max_tokens:
            break
        ids = (source.prefix_ids + source.tokenize(text))[: min(max_length, max_tokens - count + 1)]
        if len(ids) < 2:
            continue
        logp = log_softmax(source.logits(ids))  # (T, V)
        logq = log_softmax(exported.logits(ids))  # (T, V)
        if logp.shape != logq.shape:
            raise ExportError(f"source and export disagree on the vocabulary ({logp.shape[1]} vs {logq.shape[1]} logits)")
        total += float((np.exp(logp) * (logp - logq)).sum())
        count += len(ids)
    return (total / count if count else 0.0), count


def check_parity(source: Backend, exported: Backend, texts: Sequence[str], quant: str, *,
                 gates: dict[str, tuple[float, float]] | None = None, max_length: int = 512,
                 stride: int = 256, kl_tokens: int = 1024) -> ParityResult:
    """Score ``exported`` against ``source`` on ``texts``; ``passed`` says whether the gate holds."""
    gates = gates or DEFAULT_GATES
    max_delta, max_kl = gates.get(quant.lower(), (0.05, 0.15))
    src = bits_per_byte(source, texts, max_length=max_length, stride=stride)
    exp = bits_per_byte(exported, texts, max_length=max_length, stride=stride)
    delta = (exp.bits_per_byte - src.bits_per_byte) / src.bits_per_byte
    kl, n = (None, 0)
    if "logits" in source.capabilities and "logits" in exported.capabilities:
        kl, n = mean_kl(source, exported, texts, max_length=max_length, max_tokens=kl_tokens)
    passed = delta <= max_delta and (kl is None or kl <= max_kl)
    return ParityResult(quant.lower(), src.bits_per_byte, exp.bits_per_byte, delta, kl, src.n_bytes, n,
                        max_delta, max_kl, passed)


def enforce(result: ParityResult, *, allow_degraded: bool = False) -> ParityResult:
    """Raise :class:`ParityError` with the numbers when the gate fails (unless allowed)."""
    if not result.passed and not allow_degraded:
        raise ParityError(f"parity gate failed: {result.summary()}; pass --allow-degraded to keep it anyway")
    return result
