"""Run a recipe over documents in memory (:func:`prune_texts`): steps in order through ``STEPS``.

Documents without text (or with text that is not valid Unicode) are dropped before any step
(reason ``no-text``); documents a reference model cannot score (its tokenizer fails, yields nothing
or an unknown token) are dropped by that step (reason ``unscorable``). Both are counted, never fatal.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Iterable, Sequence

import numpy as np

from ...errors import ConfigError, CorpusError
from ..corpus import load_corpus
from ..heldout import resolve_corpus
from .active import TrainCallback
from .budget import budget_documents, budget_trim, ranking_keep
from .config import PruneRecipe
from .reference import ReferenceCache, load_backend
from .selection import KEPT, Selection, Subset, new_selection, valid_text
from .steps import MODEL_STEPS, RANKING_STEPS, STEPS, StepContext


@dataclasses.dataclass
class PruneResult:
    """Outcome over the input documents (N,): kept flags, which step dropped each and why."""

    keep: np.ndarray  # (N,) bool
    step: list[str | None]  # (N,) the step that dropped it (None: kept)
    reason: list[str]  # (N,)
    scores: dict[str, np.ndarray]  # step -> (N,) scores (NaN where the step did not see the document)
    selections: list[Selection]
    budget: int

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.reason))


def load_target_texts(target: str, split: str) -> list[str]:
    """The valid texts of ``split`` of the relevance target (a corpus directory or demo domain)."""
    texts = [t for t in load_corpus(resolve_corpus(target, progress=False))[split]["text"] if valid_text(t)]
    if not texts:
        raise CorpusError(f"the relevance target {target} has no text in its {split} split: choose another target or split")
    return texts


def prune_texts(texts: Sequence[str] | Any, recipe: PruneRecipe | None = None, *, reference=None, student=None,
                target_texts: Iterable[str] | None = None, train_callback: TrainCallback | None = None,
                progress: bool = False) -> PruneResult:
    """Run ``recipe`` over ``texts`` (a sequence of str, or an HF Dataset with a ``text`` column).

    ``reference``/``student``: backends or model refs (defaults: the recipe's). ``target_texts``:
    DSIR's target (default: the recipe's ``target`` corpus). Returns a :class:`PruneResult`.
    """
    recipe = recipe or PruneRecipe()
    if not isinstance(recipe, PruneRecipe):
        raise ConfigError(f"recipe must be a PruneRecipe, got {type(recipe).__name__}")
    base = texts
    n = len(base)
    if n == 0:
        raise CorpusError("no documents to prune: the input is empty; build a corpus with documents first")
    steps = recipe.steps
    budget = budget_documents(recipe.keep, n)
    if "relevance" in steps and target_texts is None:
        if recipe.target is None:
            raise ConfigError("the relevance step needs a target: a corpus directory or demo domain (CLI: --target)")
        target_texts = load_target_texts(recipe.target, recipe.target_split)
    if any(s in MODEL_STEPS for s in steps):
        reference = load_backend(reference if reference is not None else recipe.reference, "reference")
    if "active" in steps:
        student = load_backend(student if student is not None else recipe.student, "student")

    reason = [KEPT] * n
    dropped_by: list[str | None] = [None] * n
    alive = np.zeros(n, dtype=bool)  # (N,)
    texts_iter = base if not hasattr(base, "select") else Subset(base, np.arange(n))
    for i, t in enumerate(texts_iter):
        if valid_text(t):
            alive[i] = True
        else:
            reason[i], dropped_by[i] = "no-text", "input"
    scores: dict[str, np.ndarray] = {}
    selections: list[Selection] = []
    ctx = StepContext(recipe, reference, student, target_texts, train_callback,
                      ReferenceCache(reference, base, progress=progress), progress)
    rankers_left = sum(1 for s in steps if s in RANKING_STEPS)

    for step in steps:
        idx = np.flatnonzero(alive)  # (R,) global indices alive before this step
        n_keep: int | None = None
        if step in RANKING_STEPS:
            n_keep = ranking_keep(len(idx), budget, rankers_left)
            rankers_left -= 1
        t0 = time.perf_counter()
        sel = STEPS[step].run(ctx, Subset(base, idx), idx, n_keep) if len(idx) else new_selection(step, 0)
        sel.seconds = time.perf_counter() - t0
        sel.stats["budget"] = n_keep
        selections.append(sel)
        full = np.full(n, np.nan)
        full[idx] = sel.score
        scores[step] = full
        for k, i in enumerate(idx):
            if not sel.keep[k]:
                alive[i] = False
                reason[i], dropped_by[i] = sel.reason[k], step
    idx = np.flatnonzero(alive)
    if len(idx) > budget:
        t0 = time.perf_counter()
        sel = budget_trim(len(idx), budget, recipe.seed)
        sel.seconds = time.perf_counter() - t0
        selections.append(sel)
        for k, i in enumerate(idx):
            if not sel.keep[k]:
                alive[i] = False
                reason[i], dropped_by[i] = "budget", "budget"
    return PruneResult(alive, dropped_by, reason, scores, selections, budget)
