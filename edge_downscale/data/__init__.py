"""Corpora: text from local files or built-in demo domains, deduplicated, with leak-free splits.

Importing this package imports neither torch nor ``datasets``/``datasketch`` (extra ``compress``);
those load inside the functions that need them.
"""
from .corpus import (
    MANIFEST,
    SPLITS,
    CorpusConfig,
    build_corpus,
    corpus_info,
    demo_corpus,
    iter_texts,
    load_corpus,
)
from .heldout import heldout_by_domain, heldout_texts, resolve_corpus
from .sources import DEMO_DOMAINS, DemoDomain, SkipCounts, Source, open_source

__all__ = [
    "DEMO_DOMAINS", "MANIFEST", "SPLITS", "CorpusConfig", "DemoDomain", "SkipCounts",
    "Source", "build_corpus", "corpus_info", "demo_corpus", "heldout_by_domain", "heldout_texts", "iter_texts",
    "load_corpus", "open_source", "resolve_corpus",
]
