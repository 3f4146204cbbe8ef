"""``near-dedup``: MinHash of word shingles + LSH, verified pairs joined by union-find.

The grouping is ``corpus.near_duplicate_roots``, shared with ``build_corpus``; the first member of
each group is kept. Score: the group's size.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import ClassVar, Iterable

from ...config import StageConfig, check, check_int, is_number
from ...errors import require
from ..corpus import near_duplicate_roots, normalised_words, shingles
from .selection import Selection, drop, new_selection, progress_bar


@dataclasses.dataclass
class NearDedupConfig(StageConfig):
    """MinHash-LSH near-duplicates: estimated Jaccard similarity of word ``shingle_size``-grams."""

    stage: ClassVar[str] = "prune.near-dedup"
    threshold: float = 0.8
    num_perm: int = 128
    shingle_size: int = 5

    def validate(self) -> None:
        check(is_number(self.threshold) and 0 < self.threshold <= 1,
              f"near-dedup threshold must be in (0, 1], got {self.threshold!r}")
        check_int(self, "num_perm", 16, 1024)
        check_int(self, "shingle_size", 1)


def near_dedup(texts: Iterable[str], config: NearDedupConfig | None = None, *, progress: bool = False) -> Selection:
    """Keep the first member of each near-duplicate group, drop the rest (reason ``near-duplicate``).

    Score: the size of the document's group. ``stats``: groups, groups with more than one member.
    """
    require("datasketch", "compress")
    from datasketch import MinHash

    config = config or NearDedupConfig()
    template = MinHash(num_perm=config.num_perm, seed=1)
    minhashes = []
    with progress_bar(None, "minhash", progress) as bar:
        for text in texts:
            m = template.copy()
            m.update_batch(shingles(normalised_words(text), config.shingle_size))
            minhashes.append(m)
            bar.update()
    roots = near_duplicate_roots(minhashes, config.threshold, config.num_perm, progress)
    size = collections.Counter(roots)
    sel = new_selection("near-dedup", len(roots))
    for i, r in enumerate(roots):
        sel.score[i] = size[r]
        if r != i:
            drop(sel, i, "near-duplicate")
    sel.stats = {"groups": len(size), "multi_member_groups": sum(1 for n in size.values() if n > 1),
                 "largest_group": max(size.values(), default=0)}
    return sel
