"""What every selector returns (:class:`Selection`) and the helpers they share."""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np

KEPT = "kept"


@dataclasses.dataclass
class Selection:
    """One step's verdict on its input documents (all arrays are (N,), N = documents in)."""

    step: str
    keep: np.ndarray  # (N,) bool
    reason: list[str]  # (N,) "kept" or why it was dropped
    score: np.ndarray  # (N,) float64, NaN where the step gives no score
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_in(self) -> int:
        return len(self.reason)

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(self.reason))

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "step": self.step, "documents_in": self.n_in, "kept": counts.pop(KEPT, 0), "dropped": counts,
            "seconds": round(self.seconds, 3),
            "docs_per_second": round(self.n_in / self.seconds, 2) if self.seconds > 0 else None,
            "stats": self.stats,
        }


def new_selection(step: str, n: int) -> Selection:
    """A selection of ``n`` documents that keeps them all (no scores)."""
    return Selection(step, np.ones(n, dtype=bool), [KEPT] * n, np.full(n, np.nan))


def drop(sel: Selection, i: int, reason: str) -> None:
    sel.keep[i] = False
    sel.reason[i] = reason


def progress_bar(total: int | None, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=" docs", disable=not progress, leave=False)


def quantiles(x: np.ndarray) -> dict[str, float] | None:
    if len(x) == 0:
        return None
    q = np.quantile(x, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {k: round(float(v), 4) for k, v in zip(("min", "p25", "median", "p75", "max"), q)}


def valid_text(t: Any) -> bool:
    """A non-blank str that is valid Unicode (no lone surrogates)."""
    if not isinstance(t, str) or not t.strip():
        return False
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not valid Unicode text
        return False
    return True


class Subset(Sequence[str]):
    """The texts at ``idx`` of a base sequence, iterated in order (streams an HF column in batches)."""

    def __init__(self, base: Any, idx: np.ndarray, batch: int = 256):
        self.base, self.idx, self.batch = base, idx, batch

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k):  # type: ignore[override]
        return self.base[int(self.idx[k])]

    def __iter__(self) -> Iterator[str]:
        if hasattr(self.base, "select"):  # an HF Dataset: read rows in batches, memory-mapped
            for start in range(0, len(self.idx), self.batch):
                yield from self.base.select(self.idx[start:start + self.batch])["text"]
        else:
            for i in self.idx:
                yield self.base[int(i)]
