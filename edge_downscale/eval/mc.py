"""Multiple choice built from held-out real text: given a context, pick its true continuation.

Each item takes a passage of a held-out document, cuts it at a whitespace boundary into a context
and a continuation of about ``continuation_chars`` characters, and adds ``n_choices - 1``
distractors: equally long spans starting at whitespace in *other* documents of the same domain.
A model answers by the summed log-probability of each candidate given the context (``acc``); the
per-byte normalised score is reported too (``acc_norm``). Chance is 1 / n_choices. Two models
answering the same items compare by :func:`paired_mc_test` (McNemar's exact test on the items they
disagree on).
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
from typing import Sequence

import numpy as np

from ..errors import EvalError
from ..runtime.base import Backend

_WS = re.compile(r"\s")


@dataclasses.dataclass
class MCItem:
    context: str
    choices: list[str]
    answer: int


def _span_at_whitespace(text: str, start: int, length: int) -> str | None:
    """A span of ~length chars beginning at the first whitespace at/after start, ending before whitespace."""
    m = _WS.search(text, start)
    if m is None:
        return None
    s = m.start()
    span = text[s: s + length]
    cut = max(span.rfind(" "), span.rfind("\n"))
    if cut <= length // 2:
        return None
    span = span[:cut]
    return span if span.strip() else None


def build_items(texts: Sequence[str], *, n_items: int, context_chars: int, continuation_chars: int,
                n_choices: int = 4, seed: int = 0) -> list[MCItem]:
    """Deterministically build ``n_items`` items (fewer if the text runs out) from held-out documents."""
    rng = random.Random(seed)
    need = context_chars + continuation_chars + 16
    long_docs = [t for t in texts if len(t) >= need]
    if not long_docs or len(texts) < 2:  # distractors must come from another document
        return []
    items: list[MCItem] = []
    attempts = 0
    while len(items) < n_items and attempts < n_items * 20:
        attempts += 1
        d = rng.randrange(len(long_docs))
        doc = long_docs[d]
        start = rng.randrange(0, len(doc) - need + 1)
        ctx_end = max(doc.rfind(" ", start, start + context_chars), doc.rfind("\n", start, start + context_chars))
        if ctx_end <= start + context_chars // 2:
            continue
        context = doc[start:ctx_end].lstrip()
        truth = _span_at_whitespace(doc, ctx_end, continuation_chars)
        if not context.strip() or truth is None:
            continue
        distractors: list[str] = []
        seen = {" ".join(truth.split())}
        tries = 0
        while len(distractors) < n_choices - 1 and tries < 50:
            tries += 1
            other = texts[rng.randrange(len(texts))]
            if other is doc or len(other) < continuation_chars + 8:
                continue
            span = _span_at_whitespace(other, rng.randrange(0, len(other) - continuation_chars), continuation_chars)
            if span is None or abs(len(span) - len(truth)) > continuation_chars // 4:
                continue
            key = " ".join(span.split())
            if key in seen:
                continue
            seen.add(key)
            distractors.append(span)
        if len(distractors) < n_choices - 1:
            continue
        answer = rng.randrange(n_choices)
        choices = distractors[:answer] + [truth] + distractors[answer:]
        items.append(MCItem(context=context, choices=choices, answer=answer))
    return items


@dataclasses.dataclass
class MCResult:
    accuracy: float
    accuracy_norm: float
    n_items: int
    chance: float
    item_correct: tuple[int, ...] = ()  # 1 where the summed log-probability picked the answer, per item

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def score_items(backend: Backend, items: Sequence[MCItem], *, max_length: int = 512,
                progress=None) -> MCResult:
    """Accuracy of picking the true continuation by summed (and per-byte) log-probability."""
    if not items:
        raise EvalError("no multiple-choice items: the held-out split has too little text")
    max_length = min(max_length, backend.context_length)
    correct_norm = 0
    item_correct: list[int] = []
    for item in items:
        sums = backend.option_logprobs(item.context, item.choices, max_length=max_length)  # (n_choices,)
        per_byte = sums / np.array([len(c.encode("utf-8")) for c in item.choices])
        item_correct.append(int(np.argmax(sums) == item.answer))
        correct_norm += int(np.argmax(per_byte) == item.answer)
        if progress is not None:
            progress.update(1)
    n = len(items)
    return MCResult(accuracy=sum(item_correct) / n, accuracy_norm=correct_norm / n, n_items=n,
                    chance=1.0 / len(items[0].choices), item_correct=tuple(item_correct))


def paired_mc_test(a: Sequence[int], b: Sequence[int]) -> dict:
    """McNemar's exact test of two models' per-item correctness (1/0) on the same items.

    Only the items they disagree on count: ``wins`` (a right, b wrong) and ``losses`` (a wrong, b
    right). Under "equally accurate" each disagreement is a fair coin, so the two-sided p-value is
    the binomial probability of a split at least as uneven as the one seen.
    """
    if len(a) != len(b):
        raise EvalError(f"paired items differ in number ({len(a)} vs {len(b)}): score both on the same items")
    wins = sum(1 for x, y in zip(a, b) if x and not y)
    losses = sum(1 for x, y in zip(a, b) if y and not x)
    n, k = wins + losses, min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0  # P(X <= k), X ~ Bin(n, 1/2)
    return {"wins": wins, "losses": losses, "items": len(a), "p_value": min(1.0, 2 * tail)}
