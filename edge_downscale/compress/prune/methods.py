"""Every pruning method behind one registry: name -> how it scores rows, whether it needs data, how it learns.

Higher score = keep. ``prune_`` keeps the top-k rows of each layer by score.

* ``prunenet``: a learned policy's sampled action (calibration-free; see prunenet.py).
* ``ffn-policy``: a learned policy over the whole FFN, rewarded for keeping its output (ffn_policy.py).
* ``random``: a seeded random ranking (the paper's baseline).
* ``magnitude``: L2 norm of each row of ``gate_proj`` (calibration-free).
* ``activation``: a structured Wanda-style score, ``||h_j||_2 * ||W_down[:, j]||_2``, where h_j is
  the FFN's intermediate activation of row j over a small calibration set (Sun et al., "A Simple
  and Effective Pruning Approach for Large Language Models", 2023, made structured). Needs data.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from ...errors import ConfigError, require
from .ffn import ffn_layers
from .ffn_policy import FFNPolicy, FFNPolicyConfig, learn_ffn_policy
from .prunenet import PruneNetConfig, PruneNetPolicy, learn_policy


def random_scores(model, *, seed: int = 0, **_):
    torch = require("torch", "compress")
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(f.gate.weight.shape[0], generator=gen) for f in ffn_layers(model)]


def magnitude_scores(model, **_):
    return [f.gate.weight.detach().float().norm(dim=1).cpu() for f in ffn_layers(model)]


def _activation(model, *, calibration=None, grams=None, **_):
    if grams is not None:  # a refit already gathered the statistics: their diagonals are ||h_j||^2
        return activation_scores_from_sq(model, [g.diagonal() for g in grams])
    return activation_scores(model, calibration or [])


@dataclasses.dataclass(frozen=True)
class Learner:
    """A learned method: its config class, the field that holds it (PruneConfig, recipe), learn and load."""

    config: type
    field: str
    learn: Callable[..., Any]  # learn(model, config, *, ratio, progress) -> policy
    policy: type  # has .load(dir), .scores(model, seed=), .meta, .save(dir)


@dataclasses.dataclass(frozen=True)
class Method:
    """One pruning method: a fixed scoring rule (``score``) or a learned policy (``learner``)."""

    name: str
    calibration_free: bool
    score: Callable[..., list] | None = None  # score(model, *, seed, calibration, grams) -> L x (d_ff,)
    learner: Learner | None = None


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("prunenet", True, learner=Learner(PruneNetConfig, "prunenet", learn_policy, PruneNetPolicy)),
    Method("ffn-policy", True, learner=Learner(FFNPolicyConfig, "ffn_policy", learn_ffn_policy, FFNPolicy)),
    Method("random", True, score=random_scores),
    Method("magnitude", True, score=magnitude_scores),
    Method("activation", False, score=_activation),
)}
METHODS = tuple(REGISTRY)
CALIBRATION_FREE = {name: m.calibration_free for name, m in REGISTRY.items()}
POLICIES = tuple(m.learner.policy for m in REGISTRY.values() if m.learner is not None)


def method_spec(name: str) -> Method:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown pruning method {name!r}; available: {', '.join(METHODS)}") from None


def down_inputs(model, calibration: Sequence[Sequence[int]], accumulate: Callable, *, batch_size: int = 4) -> None:
    """Run the calibration sequences; call ``accumulate(layer, h)`` with each down_proj input h (B*T, d_ff)."""
    torch = require("torch", "compress")
    if not calibration:
        raise ConfigError("this pruning method needs calibration text (a non-empty token list)")

    def hook_for(i: int) -> Callable:
        def hook(_module, inputs):
            accumulate(i, inputs[0].detach().reshape(-1, inputs[0].shape[-1]))
        return hook

    handles = [f.down.register_forward_pre_hook(hook_for(i)) for i, f in enumerate(ffn_layers(model))]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for start in range(0, len(calibration), batch_size):
                batch = calibration[start:start + batch_size]
                width = min(len(s) for s in batch)  # equal lengths: no padding enters the statistics
                ids = torch.tensor([list(s[:width]) for s in batch], device=device)  # (B, T)
                model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()


def activation_scores(model, calibration: Sequence[Sequence[int]]):
    """Accumulate ||h_j||^2 at each down_proj input over the calibration token sequences."""
    torch = require("torch", "compress")
    layers = ffn_layers(model)
    sq = [torch.zeros(f.down.weight.shape[1], dtype=torch.float64) for f in layers]  # L x (d_ff,)

    def accumulate(i, h):
        sq[i] += h.double().pow(2).sum(dim=0).cpu()

    down_inputs(model, calibration, accumulate)
    return activation_scores_from_sq(model, sq)


def activation_scores_from_sq(model, sq):
    """``||h_j|| * ||W_down[:, j]||`` from the summed squares ``sq`` (L x (d_ff,)) of the down_proj inputs."""
    return [s.sqrt().float() * f.down.weight.detach().float().norm(dim=0).cpu() for s, f in zip(sq, ffn_layers(model))]
