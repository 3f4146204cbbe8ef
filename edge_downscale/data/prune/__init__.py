"""Data pruning: train on less data, chosen well. Selectors composed into a recipe, with reports.

Every selector is a config dataclass (validated, JSON round-trip) plus one function that takes the
documents (any sequence of texts, only ever iterated front to back, so an HF dataset column
streams) and returns a :class:`Selection`: per document a keep flag, a reason and a score.
Selectors, one module each, by name in ``STEPS``: ``dedup``, ``near-dedup``, ``quality``,
``relevance``, ``diversity``, ``active``. A :class:`PruneRecipe` orders them and sets ``keep``
(spent as :mod:`.budget` describes); :func:`prune_texts` runs it in memory and
:func:`prune_corpus` over a corpus directory, writing a new one with ``data_prune_report.json``.
"""
from .active import ActiveConfig, active_select
from .api import prune_corpus
from .budget import random_subset
from .config import PruneRecipe, parse_steps
from .dedup import ExactDedupConfig, exact_dedup
from .diversity import DiversityConfig, diversity_select, semdedup
from .near_dedup import NearDedupConfig, near_dedup
from .pipeline import PruneResult, prune_texts
from .quality import QualityConfig, band_indices, quality_select
from .reference import ReferenceCache, ReferenceScores, reference_scores
from .relevance import RelevanceConfig, dsir_weights, hashed_ngrams, relevance_select
from .report import DECISIONS, REPORT, digest_dir
from .selection import Selection
from .steps import STEPS

__all__ = [
    "DECISIONS", "REPORT", "STEPS", "ActiveConfig", "DiversityConfig", "ExactDedupConfig", "NearDedupConfig",
    "PruneRecipe", "PruneResult", "QualityConfig", "ReferenceCache", "ReferenceScores", "RelevanceConfig",
    "Selection", "active_select", "band_indices", "digest_dir", "diversity_select", "dsir_weights", "exact_dedup",
    "hashed_ngrams", "near_dedup", "parse_steps", "prune_corpus", "prune_texts", "quality_select", "random_subset",
    "reference_scores", "relevance_select", "semdedup",
]
