"""``active``: the documents the student finds hardest relative to the teacher, picked in rounds.

The gap is student bits-per-byte minus teacher bits-per-byte. With a ``train_callback(texts)`` the
student is trained on each round's pick and the rest is re-scored; without one the scores cannot
change, so it is one top-k pass.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Sequence

import numpy as np

from ...config import StageConfig, check_int
from .reference import ReferenceScores, reference_scores
from .selection import KEPT, Selection, quantiles


@dataclasses.dataclass
class ActiveConfig(StageConfig):
    """Teacher-student loss-gap selection in ``rounds`` (re-scored after each round's training callback)."""

    stage: ClassVar[str] = "prune.active"
    rounds: int = 2
    max_tokens: int = 256
    batch_size: int = 4

    def validate(self) -> None:
        check_int(self, "rounds", 1)
        check_int(self, "max_tokens", 8)
        check_int(self, "batch_size", 1)


TrainCallback = Callable[[list[str]], None]


def active_select(texts: Sequence[str], teacher, student, n_keep: int | None = None,
                  config: ActiveConfig | None = None, *, train_callback: TrainCallback | None = None,
                  teacher_scores: ReferenceScores | None = None, progress: bool = False) -> Selection:
    """Pick the ``n_keep`` documents with the largest gap ``student bpb - teacher bpb``, in rounds.

    Round r picks ``ceil(left / rounds_left)`` of the not-yet-picked documents with the largest gap,
    then calls ``train_callback(picked_texts)`` (e.g. a few optimizer steps on the student) and
    re-scores the rest with the student. Without a callback the scores cannot change between rounds,
    so one pass is made. Bits-per-byte (not per token) so teacher and student may tokenize
    differently. Score: the gap at the time of picking (or of the last scoring).
    """
    config = config or ActiveConfig()
    texts = list(texts) if train_callback is not None else texts
    if teacher_scores is None:
        teacher_scores = reference_scores(teacher, texts, max_tokens=config.max_tokens, batch_size=config.batch_size,
                                          progress=progress, desc="active: teacher")
    t_bpb = teacher_scores.bpb  # (N,)
    n = len(t_bpb)
    n_keep = n if n_keep is None else min(n_keep, n)
    sel = Selection("active", np.zeros(n, dtype=bool), ["not-selected"] * n, np.full(n, np.nan))
    candidates = np.isfinite(t_bpb)
    rounds = config.rounds if train_callback is not None else 1
    left = n_keep
    gap = np.full(n, np.nan)
    scored = np.zeros(n, dtype=bool)
    for r in range(rounds):
        todo = np.flatnonzero(candidates & ~sel.keep)
        if left <= 0 or not len(todo):
            break
        s = reference_scores(student, (texts[i] for i in todo) if train_callback is not None else texts,
                             max_tokens=config.max_tokens, batch_size=config.batch_size, progress=progress,
                             desc=f"active: student round {r + 1}")
        s_bpb = s.bpb if train_callback is not None else s.bpb[todo]
        gap[todo] = s_bpb - t_bpb[todo]
        scored[todo] = True
        valid = todo[np.isfinite(gap[todo])]
        take = math.ceil(left / (rounds - r))
        picked = valid[np.argsort(-gap[valid], kind="stable")[:take]]
        sel.keep[picked] = True
        left -= len(picked)
        if train_callback is not None and r + 1 < rounds:
            train_callback([texts[i] for i in picked])
    sel.score = gap
    for i in range(n):
        if sel.keep[i]:
            sel.reason[i] = KEPT
        elif not np.isfinite(t_bpb[i]) or (np.isnan(gap[i]) and scored[i]):
            sel.reason[i] = "unscorable"
    sel.stats = {"rounds": rounds, "callback": train_callback is not None, "gap_all": quantiles(gap[np.isfinite(gap)]),
                 "gap_kept": quantiles(gap[sel.keep])}
    return sel
