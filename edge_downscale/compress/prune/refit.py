"""Least-squares refit of ``down_proj`` after FFN rows are removed.

Removing intermediate row j of a gated FFN deletes one input h_j of ``down_proj``; nothing else in
the block changes. Given the Gram matrix ``G = sum_t h_t h_t^T`` of the intermediate activations
on calibration text, the ``down_proj`` over the kept rows S that best reproduces the dense output
``W h`` has a closed form, the ridge solution ``W_S = W G[:, S] (G[S, S] + damp I)^-1`` (the
compensation step of Optimal Brain Surgeon, Hassibi & Stork 1993, for whole columns, as in Frantar
& Alistarh, "Optimal Brain Compression", 2022). Mode ``layer`` fits every layer independently from
the dense model's activations (one calibration pass); mode ``sequential`` (the default) fits block by
block on text that has passed through the blocks already pruned, towards the dense block's output,
so each refit also corrects the error upstream. Greedy OBS *selection* was tried in an exploratory run
(no better than the activation-aware score with this refit, and much slower) and is not offered.
"""
from __future__ import annotations

from typing import Sequence

from ...errors import ConfigError, require
from .ffn import _get, ffn_layers, layout_for, slice_ffn_
from .methods import down_inputs


REFIT_MODES = ("sequential", "layer")  # sequential_refit_ | refit_ffns_ on one pass's grams


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
    fitted = [refit_down(f.down.weight, g, idx, damp=damp) for f, g, idx in zip(ffn_layers(model), grams, kept)]
    _slice_with_downs_(model, kept, fitted)


def _slice_with_downs_(model, kept, fitted) -> None:
    """Slice every FFN to ``kept``, then give layer l the fitted ``down_proj`` weight ``fitted[l]`` (d_model, k)."""
    torch = require("torch", "compress")
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


class _Captured(Exception):
    """Raised by the hook that records the first block's inputs (the rest of the forward is not needed)."""


def block_inputs(model, calibration: Sequence[Sequence[int]], *, batch_size: int = 8) -> list:
    """Per calibration batch, the first decoder block's (hidden (B, T, d_model), keyword arguments)."""
    torch = require("torch", "compress")
    lay = layout_for(model)
    first = _get(model, lay.blocks)[0]
    seen: list = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        seen.append((hidden.detach(), kwargs))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for start in range(0, len(calibration), batch_size):
                batch = calibration[start:start + batch_size]
                width = min(len(s) for s in batch)
                try:
                    model(input_ids=torch.tensor([list(s[:width]) for s in batch], device=device), use_cache=False)
                except _Captured:
                    pass
    finally:
        handle.remove()
    return seen


def sequential_refit_(model, calibration: Sequence[Sequence[int]], kept: list, *, damp: float = 0.01) -> None:
    """Slice every FFN to ``kept`` block by block, each ``down_proj`` refit to restore the *dense* block output.

    The calibration text runs through two streams at once: the dense model and the model pruned so far.
    At block l both streams pass the still-dense block; with h the down_proj inputs of the pruned
    stream and r its residual before the FFN, the kept rows S get
    ``W_S = argmin sum_t ||y_dense,t + r_dense,t - r_t - W_S h_S,t||^2``: the FFN also absorbs the error
    the pruned blocks before it left in the residual stream (the sequential, error-correcting variant
    of the per-layer refit; cf. SparseGPT's sequential calibration, Frantar & Alistarh 2023).
    """
    torch = require("torch", "compress")
    if not calibration:
        raise ConfigError("a refit needs calibration text (a non-empty token list)")
    lay = layout_for(model)
    blocks = _get(model, lay.blocks)
    ffns = ffn_layers(model)
    inputs = block_inputs(model, calibration)
    dense = [h for h, _ in inputs]  # the dense stream, (B, T, d_model) per batch
    pruned = [h.clone() for h in dense]
    fitted = []
    with torch.inference_mode():
        for block, f, idx in zip(blocks, ffns, kept):
            d_model, d_ff = f.down.weight.shape
            gram = torch.zeros(d_ff, d_ff, dtype=torch.float64)
            cross = torch.zeros(d_ff, d_model, dtype=torch.float64)  # sum_t h_t target_t^T
            kept_h, residual = [], []
            for b, (_, kwargs) in enumerate(inputs):
                _, out_d = _run_block(block, f, dense[b], kwargs)
                (h_p, y_p), out_p = _run_block(block, f, pruned[b], kwargs)
                r_p = out_p - y_p  # the pruned stream's residual before the FFN
                target = out_d - r_p  # (B, T, d_model): what the FFN must add to land on the dense output
                hp = h_p.reshape(-1, d_ff).double().cpu()
                gram += hp.T @ hp
                cross += hp.T @ target.reshape(-1, target.shape[-1]).double().cpu()
                kept_h.append(h_p)
                residual.append(r_p)
                dense[b] = out_d
            idx = idx.cpu()  # (k,)
            g = _damped(gram.index_select(0, idx).index_select(1, idx), damp)  # (k, k)
            w_s = torch.linalg.solve(g, cross.index_select(0, idx)).T.to(f.down.weight.dtype)  # (d_model, k)
            for b, (h_p, r_p) in enumerate(zip(kept_h, residual)):  # the pruned block's output
                pruned[b] = r_p + h_p.index_select(-1, idx.to(h_p.device)) @ w_s.to(h_p.device).T
            fitted.append(w_s)
    _slice_with_downs_(model, kept, fitted)


def _run_block(block, f, hidden, kwargs):
    """((down_proj input, FFN output), block output) of one decoder block on ``hidden``."""
    seen = {}

    def pre(_m, args):
        seen["h"] = args[0].detach()

    def post(_m, _args, out):
        seen["y"] = out.detach()

    handles = [f.down.register_forward_pre_hook(pre), f.mlp.register_forward_hook(post)]
    try:
        out = block(hidden, **kwargs)
    finally:
        for h in handles:
            h.remove()
    out = out[0] if isinstance(out, tuple) else out
    return (seen["h"], seen["y"]), out
