"""Texts a bundle is built from: router training corpora and held-out cascade calibration data.

The one place in :mod:`edge_downscale.bundle` that reads corpora (through ``data.resolve_corpus``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data import iter_texts, resolve_corpus
from ..errors import ConfigError
from ..eval.mc import build_items


def texts_by_domain(corpus_dirs: Mapping[str, str | Path], split: str) -> dict[str, list[str]]:
    """``{domain: texts of split}`` for built corpora (directories from ``edge-downscale data build``).

    A value that is a demo domain's name (``"code"``) is that demo corpus, built into the cache on
    first use, as everywhere else in the library.
    """
    return {domain: [t for t in iter_texts(resolve_corpus(str(path)), split) if t]
            for domain, path in corpus_dirs.items()}


def calibration_data(corpora: Sequence[str], *, split: str = "validation", n: int = 24, prompt_chars: int = 256,
                     text_chars: int = 1500, seed: int = 0) -> dict[str, Any]:
    """Held-out cascade calibration data from built corpora (or demo domain names).

    From each corpus's ``split``: generation prompts (the first ``prompt_chars`` of documents),
    texts to score (the first ``text_chars``) and multiple-choice items (as in evaluation), ``n`` of
    each in all, spread over the corpora.
    """
    per = max(n // max(len(corpora), 1), 1)
    prompts, texts, choices = [], [], []
    for name, docs in texts_by_domain({c: c for c in corpora}, split).items():
        if not docs:
            raise ConfigError(f"calibration corpus {name!r} has no {split} documents")
        prompts += [d[:prompt_chars] for d in docs[:per]]
        texts += [d[:text_chars] for d in docs[:per]]
        choices += [(it.context, it.choices) for it in build_items(docs, n_items=per, context_chars=320,
                                                                   continuation_chars=64, seed=seed)]
    return {"prompts": prompts, "texts": texts, "choices": choices}
