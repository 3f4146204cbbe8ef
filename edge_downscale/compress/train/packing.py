"""From corpus to token blocks: :class:`TextSplits` (documents), packing, :class:`TrainSource`, the :class:`Sampler`."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Iterable

import numpy as np

from .config import TrainConfig, TrainingError


@dataclasses.dataclass
class TextSplits:
    """A corpus as lists of documents: train (what is learned) and validation (what is scored)."""

    name: str
    train: list[str]
    validation: list[str]


def load_splits(source: str | os.PathLike | TextSplits) -> TextSplits:
    """A demo domain name (``docs``), a corpus directory (``data build`` output) or :class:`TextSplits`."""
    if isinstance(source, TextSplits):
        return source
    from ...data import load_corpus, resolve_corpus

    ds = load_corpus(resolve_corpus(source))
    return TextSplits(name=str(source), train=list(ds["train"]["text"]), validation=list(ds["validation"]["text"]))


def pack(tokenizer, texts: Iterable[str], block: int, *, max_blocks: int | None = None) -> np.ndarray:
    """Tokenize documents, join them with EOS, cut into non-overlapping blocks: (N, block) int64."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_blocks and len(ids) >= max_blocks * block:
            break
    n = len(ids) // block
    if max_blocks:
        n = min(n, max_blocks)
    return np.asarray(ids[:n * block], dtype=np.int64).reshape(n, block)


def blocks_digest(blocks: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(blocks).tobytes()).hexdigest()[:16]


@dataclasses.dataclass
class TrainSource:
    """One corpus packed into blocks of ``seq_len + 1`` tokens (inputs are [:-1], labels [1:])."""

    name: str
    train: np.ndarray  # (N, seq_len + 1)
    validation: np.ndarray  # (M, seq_len + 1)


def make_source(tokenizer, splits: TextSplits, config: TrainConfig, *, need_blocks: int, role: str) -> TrainSource:
    """Pack a corpus; refuse one too small to train on, saying how many tokens it needs."""
    block = config.seq_len + 1
    train = pack(tokenizer, splits.train, block)
    val = pack(tokenizer, splits.validation, block, max_blocks=max(1, config.eval_tokens // block))
    need = max(need_blocks, 1)
    minimum = min(need, config.batch_size) * block
    if len(train) * block < minimum:
        have = len(train) * block
        raise TrainingError(
            f"{role} corpus {splits.name!r} has {have} training tokens in whole blocks; at least {minimum} are needed "
            f"(batch_size {config.batch_size} x seq_len+1 {block}); add text or lower --batch-size/--seq-len")
    if len(val) == 0:
        raise TrainingError(f"{role} corpus {splits.name!r} has fewer than {block} validation tokens; "
                            "add validation text or lower --seq-len")
    return TrainSource(splits.name, train, val)


class Sampler:
    """Which blocks each optimizer step trains on; its whole state is JSON (saved in checkpoints).

    Each source walks a seeded permutation of its blocks (a new permutation each epoch). Per step the
    number of domain sequences follows the share r exactly over time: round((s+1)*B*r) - round(s*B*r).
    A curriculum may push a queue of chosen domain blocks that is served before the permutation.
    """

    def __init__(self, sizes: dict[str, int], share: float, batch: int, seed: int):
        self.sizes, self.share, self.batch, self.seed = sizes, share, batch, seed
        self.state: dict[str, Any] = {"cursor": {k: 0 for k in sizes}, "queue": []}

    def _perm(self, name: str, epoch: int) -> np.ndarray:
        salt = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        return np.random.default_rng([self.seed, salt, epoch]).permutation(self.sizes[name])

    def peek(self, name: str, count: int) -> list[int]:
        """The next ``count`` block indices of ``name``'s permutation, without consuming them."""
        start, n = self.state["cursor"][name], self.sizes[name]
        perms = {e: self._perm(name, e) for e in range(start // n, (start + count - 1) // n + 1)}  # each epoch once
        return [int(perms[(start + i) // n][(start + i) % n]) for i in range(count)]

    def take(self, name: str, count: int) -> list[int]:
        out = self.peek(name, count)
        self.state["cursor"][name] += count
        return out

    def domain_count(self, step: int) -> int:
        b, r = self.batch, self.share
        return int(round((step + 1) * b * r) - round(step * b * r))

    def batch_at(self, step: int) -> list[tuple[str, int]]:
        """(source, block) pairs of step ``step``: domain first, then replay."""
        nd = self.domain_count(step)
        queue = self.state["queue"]
        from_queue, self.state["queue"] = queue[:nd], queue[nd:]
        domain = list(from_queue) + self.take("domain", nd - len(from_queue))
        items = [("domain", i) for i in domain]
        if self.batch - nd:
            items += [("replay", i) for i in self.take("replay", self.batch - nd)]
        return items
