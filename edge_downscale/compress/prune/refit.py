"""Least-squares refit of ``down_proj`` after FFN rows are removed.

Removing intermediate row j of a gated FFN deletes one input h_j of ``down_proj``; nothing else in
the block changes. Given the Gram matrix ``G = sum_t h_t h_t^T`` of the intermediate activations
on calibration text, the ``down_proj`` over the kept rows S that best reproduces the dense output
``W h`` has a closed form, the ridge solution ``W_S = W G[:, S] (G[S, S] + damp I)^-1`` (the
compensation step of Optimal Brain Surgeon, Hassibi & Stork 1993, for whole columns, as in Frantar
& Alistarh, "Optimal Brain Compression", 2022). Layers are fitted independently from the dense
model's activations (one calibration pass). Greedy OBS *selection* was tried in an exploratory run
(no better than the activation-aware score with this refit, and much slower) and is not offered.
"""
from __future__ import annotations

from typing import Sequence

from ...errors import require
from .ffn import ffn_layers, slice_ffn_
from .methods import down_inputs


def ffn_grams(model, calibration: Sequence[Sequence[int]]):
    """Per layer, ``G = sum_t h_t h_t^T`` (d_ff, d_ff, float64) of the inputs h of ``down_proj``."""
    torch = require("torch", "compress")
    grams = [torch.zeros(f.down.weight.shape[1], f.down.weight.shape[1], dtype=torch.float64) for f in ffn_layers(model)]

    def accumulate(i, h):
        h = h.float()  # (B*T, d_ff): a float32 product, accumulated in float64
        grams[i] += (h.T @ h).double().cpu()

    down_inputs(model, calibration, accumulate)
    return grams


def refit_ffns_(model, grams, kept, *, damp: float = 0.01) -> None:
    """Slice every FFN to ``kept`` and give each the least-squares ``down_proj`` over its kept rows."""
    torch = require("torch", "compress")
    fitted = [refit_down(f.down.weight, g, idx, damp=damp) for f, g, idx in zip(ffn_layers(model), grams, kept)]
    slice_ffn_(model, kept)
    with torch.no_grad():
        for f, w in zip(ffn_layers(model), fitted):
            f.down.weight.copy_(w.to(f.down.weight.device))


def _damped(gram, damp: float):
    torch = require("torch", "compress")
    n = gram.shape[0]
    return gram + damp * gram.diagonal().mean() * torch.eye(n, dtype=gram.dtype)


def refit_down(down_weight, gram, kept, *, damp: float = 0.01):
    """``W G[:, S] (G[S, S] + damp)^-1`` (d_model, k): the best down_proj over the kept rows ``S``."""
    torch = require("torch", "compress")
    w = down_weight.detach().double().cpu()  # (d_model, d_ff)
    g = gram.index_select(0, kept.cpu())  # (k, d_ff)
    gss = _damped(g.index_select(1, kept.cpu()), damp)  # (k, k)
    rhs = g @ w.T  # (k, d_model) = G[S, :] W^T
    return torch.linalg.solve(gss, rhs).T.to(down_weight.dtype)  # (d_model, k)
