"""The selectors by name (``STEPS``): what each needs and how a recipe runs it on the documents alive."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .active import TrainCallback, active_select
from .dedup import exact_dedup
from .diversity import diversity_select
from .near_dedup import near_dedup
from .quality import quality_select
from .reference import ReferenceCache
from .relevance import relevance_select
from .selection import Selection, Subset

if TYPE_CHECKING:
    from .config import PruneRecipe


@dataclasses.dataclass
class StepContext:
    """What a step may use besides its documents: the recipe, the models, the target and the cache."""

    recipe: PruneRecipe
    reference: Any = None
    student: Any = None
    target_texts: Iterable[str] | None = None
    train_callback: TrainCallback | None = None
    cache: ReferenceCache | None = None
    progress: bool = False


# run(ctx, texts alive, their global indices (R,), documents to keep or None) -> Selection over the R
StepFn = Callable[[StepContext, Subset, np.ndarray, "int | None"], Selection]


@dataclasses.dataclass(frozen=True)
class Step:
    """A selector: ``ranking`` steps share the keep budget (the others filter); ``model`` needs a reference."""

    name: str
    ranking: bool
    model: bool
    run: StepFn


def _dedup(ctx: StepContext, sub: Subset, idx: np.ndarray, n_keep: int | None) -> Selection:
    return exact_dedup(sub, ctx.recipe.dedup, progress=ctx.progress)


def _near_dedup(ctx: StepContext, sub: Subset, idx: np.ndarray, n_keep: int | None) -> Selection:
    return near_dedup(sub, ctx.recipe.near_dedup, progress=ctx.progress)


def _quality(ctx: StepContext, sub: Subset, idx: np.ndarray, n_keep: int | None) -> Selection:
    cfg = ctx.recipe.quality
    rs = ctx.cache.get(idx, cfg.max_tokens, cfg.batch_size, False)
    return quality_select(sub, ctx.reference, n_keep, cfg, scores=rs, progress=ctx.progress)


def _relevance(ctx: StepContext, sub: Subset, idx: np.ndarray, n_keep: int | None) -> Selection:
    return relevance_select(sub, ctx.target_texts, n_keep, ctx.recipe.relevance, progress=ctx.progress)


def _diversity(ctx: StepContext, sub: Subset, idx: np.ndarray, n_keep: int | None) -> Selection:
    cfg = ctx.recipe.diversity
    rs = ctx.cache.get(idx, cfg.max_tokens, cfg.batch_size, True) if cfg.embedder == "reference" else None
    return diversity_select(sub, ctx.reference, n_keep, cfg, scores=rs, progress=ctx.progress)


def _active(ctx: StepContext, sub: Subset, idx: np.ndarray, n_keep: int | None) -> Selection:
    cfg = ctx.recipe.active
    rs = ctx.cache.get(idx, cfg.max_tokens, cfg.batch_size, False)
    return active_select(sub, ctx.reference, ctx.student, n_keep, cfg, train_callback=ctx.train_callback,
                         teacher_scores=rs, progress=ctx.progress)


STEPS: dict[str, Step] = {s.name: s for s in (
    Step("dedup", ranking=False, model=False, run=_dedup),
    Step("near-dedup", ranking=False, model=False, run=_near_dedup),
    Step("quality", ranking=True, model=True, run=_quality),
    Step("relevance", ranking=True, model=False, run=_relevance),
    Step("diversity", ranking=True, model=True, run=_diversity),
    Step("active", ranking=True, model=True, run=_active),
)}
FILTER_STEPS = frozenset(n for n, s in STEPS.items() if not s.ranking)
RANKING_STEPS = frozenset(n for n, s in STEPS.items() if s.ranking)
MODEL_STEPS = frozenset(n for n, s in STEPS.items() if s.model)
