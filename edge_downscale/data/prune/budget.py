"""How ``keep`` is spent: the document budget, each ranking step's share of the cut, the random trim.

The budget is ``round(keep * N)`` documents (at least 1), N the documents in. Filter steps
(``dedup``, ``near-dedup``) drop what they drop. Ranking steps (``quality``, ``relevance``,
``diversity``, ``active``) share the remaining cut geometrically: with R documents alive and k
ranking steps left, a ranking step keeps ``R * (budget / R) ** (1/k)``, so the last one lands on
the budget exactly (``diversity`` may drop more: its threshold always applies). When the filters
already leave no more than the budget, ranking steps cut nothing but their thresholds. When a
recipe has no ranking step and more than the budget is left, a seeded random trim (reason
``budget``) cuts to it.
"""
from __future__ import annotations

import numpy as np

from .selection import Selection, drop, new_selection


def budget_documents(keep: float, n: int) -> int:
    """Documents kept of ``n`` at fraction ``keep``: ``round(keep * n)``, at least 1."""
    return max(1, round(keep * n))


def ranking_keep(alive: int, budget: int, rankers_left: int) -> int:
    """Documents a ranking step keeps of ``alive`` with ``rankers_left`` ranking steps left (this one included)."""
    if alive <= budget:
        return alive
    if rankers_left == 1:
        return budget
    return round(alive * (budget / alive) ** (1 / rankers_left))


def budget_trim(n: int, budget: int, seed: int) -> Selection:
    """A seeded uniformly random cut of ``n`` documents down to ``budget`` (reason ``budget``)."""
    sel = new_selection("budget", n)
    rng = np.random.default_rng(seed)
    for k in rng.choice(n, size=n - budget, replace=False):
        drop(sel, int(k), "budget")
    sel.stats["budget"] = budget
    return sel


def random_subset(n: int, keep: float, seed: int = 0) -> np.ndarray:
    """(N,) bool: a seeded uniformly random ``round(keep * n)`` documents (the baseline)."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=max(1, round(keep * n)), replace=False)] = True
    return mask
