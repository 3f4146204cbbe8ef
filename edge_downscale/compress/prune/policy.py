"""What both learned pruning policies share: drawing k of n rows, the draw's log-probability, and the
variance-reduced policy gradient.

* Drawing k rows without replacement with probability proportional to weights ``w`` (what
  ``torch.multinomial(w, k, replacement=False)`` does) is a Plackett-Luce draw. The top-k of
  ``log w + Gumbel noise`` is the same draw, in the same order (Yellott 1977; Kool, van Hoof & Welling,
  "Stochastic Beams and Where to Find Them", ICML 2019), and one noise draw then serves every k: the
  rows kept at two ratios nest. It is seeded by a ``torch.Generator``.
* The log-probability of an ordered draw ``o`` is ``sum_i log w[o_i] - log(sum of w not drawn before i)``.
* The baselined gradient: several draws per layer, their mean reward as the baseline and standardised
  advantages (Williams 1992; Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for
  Free!", ICLR workshop 2019).
"""
from __future__ import annotations

from ...errors import require


def generator(seed: int, device=None):
    """A seeded ``torch.Generator`` (on ``device``; CPU by default)."""
    torch = require("torch", "compress")
    return torch.Generator(device=device if device is not None else "cpu").manual_seed(int(seed))


def gumbel(shape, gen, device=None):
    """Standard Gumbel noise ``-log(-log U)`` of ``shape`` from ``gen``."""
    torch = require("torch", "compress")
    u = torch.rand(shape, generator=gen, device=device if device is not None else gen.device)
    return -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))


def draw_order(log_w, k: int, gen):
    """k indices drawn without replacement, probability proportional to ``exp(log_w)``, in draw order."""
    torch = require("torch", "compress")
    perturbed = log_w.detach() + gumbel(log_w.shape, gen, log_w.device)  # (n,)
    return torch.topk(perturbed, k).indices  # (k,): the first index is the first draw


def plackett_luce_log_prob(log_w, order):
    """log P(order) of drawing ``order`` (k,) without replacement from weights ``exp(log_w)`` (n,)."""
    torch = require("torch", "compress")
    log_w = log_w.double()
    top = log_w.max().detach()
    w = torch.exp(log_w - top)  # (n,), max 1: no overflow
    picked = w.index_select(0, order)  # (k,)
    before = torch.cumsum(picked, 0) - picked  # (k,) mass drawn before each pick
    remaining = (w.sum() - before).clamp_min(1e-300)  # (k,) mass left to draw from
    return (torch.log(picked.clamp_min(1e-300)) - torch.log(remaining)).sum()  # scalar


def standardised(rewards):
    """Advantages ``(R - mean R) / std R`` of one layer's draws (all zero when the draws tie)."""
    torch = require("torch", "compress")
    r = torch.as_tensor(rewards, dtype=torch.float64)
    centred = r - r.mean()
    std = r.std(unbiased=False) if r.numel() > 1 else r.new_tensor(0.0)
    return centred / std if std > 1e-12 * max(1.0, float(r.abs().max())) else torch.zeros_like(r)
