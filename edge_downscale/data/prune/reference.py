"""The reference-model pass (bits-per-byte and embeddings of each document's start) and its cache.

One pass per ``max_tokens`` setting is shared by ``quality``, ``diversity`` and ``active``
(:class:`ReferenceCache`); a document the model cannot score is a counted skip, never fatal.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Any, Iterable

import numpy as np

from ...errors import ConfigError
from .selection import Subset, progress_bar


@dataclasses.dataclass
class ReferenceScores:
    """Per document (N,): bits-per-byte of its first tokens (NaN: unscorable) and, optionally, (N, C) embeddings."""

    bpb: np.ndarray  # (N,)
    embeddings: np.ndarray | None  # (N, C) float32, rows of unscorable documents are zero
    n_tokens: np.ndarray  # (N,) tokens scored
    unscorable: dict[str, int]


def _scorable_ids(backend, text: str, max_tokens: int) -> tuple[list[int] | None, int, str]:
    """(ids, bytes they cover, problem): at most ``max_tokens`` token ids of the start of ``text``."""
    try:
        ids = list(backend.tokenize(text[: max_tokens * 32]))[:max_tokens]  # 32 chars/token bounds the work
    except Exception:  # noqa: BLE001 - any tokenizer failure is a counted skip, never a crash
        return None, 0, "tokenizer_error"
    if not ids:
        return None, 0, "no_tokens"
    unk = getattr(getattr(backend, "tokenizer", None), "unk_token_id", None)
    if unk is not None and unk in ids:
        return None, 0, "unknown_token"
    try:
        n_bytes = len(backend.detokenize(ids).encode("utf-8", "replace"))
    except Exception:  # noqa: BLE001
        return None, 0, "tokenizer_error"
    if n_bytes == 0:
        return None, 0, "no_tokens"
    return ids, n_bytes, ""


def _forward_torch(backend, seqs: list[list[int]], want_embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Summed log-probs (B,) of tokens 1.. of each sequence and mean-pooled last hidden states (B, C)."""
    torch = backend.torch
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T) right-padded
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    ids, mask = ids.to(backend.device), mask.to(backend.device)
    with torch.inference_mode():
        out = backend.model(input_ids=ids, attention_mask=mask, output_hidden_states=want_embeddings)
        logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        tgt = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        tgt = (tgt * mask[:, 1:]).sum(-1)  # (B,)
        emb = None
        if want_embeddings:
            h = out.hidden_states[-1].float()  # (B, T, C), after the final norm
            m = mask.clone()
            m[:, 0] = 0  # the BOS position is the same for every document: leave it out
            m = m.unsqueeze(-1).float()  # (B, T, 1)
            emb = ((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()  # (B, C)
    return tgt.double().cpu().numpy(), emb


def reference_scores(backend, texts: Iterable[str], *, max_tokens: int = 512, batch_size: int = 4,
                     embeddings: bool = False, progress: bool = False, desc: str = "reference model") -> ReferenceScores:
    """Score the first ``max_tokens`` tokens of every text: bits-per-byte and (torch only) embeddings.

    ``backend``: a :class:`~edge_downscale.models.torch_backend.TorchBackend` (one forward pass gives
    both), or any backend with ``token_logprobs`` (bits-per-byte only). A text the tokenizer cannot
    encode is a counted skip (NaN).
    """
    torch_model = getattr(backend, "model", None) is not None and hasattr(backend, "torch")
    if embeddings and not torch_model:
        raise ConfigError("diversity embeddings need a torch reference model (TorchBackend); "
                          f"got a {type(backend).__name__}")
    max_tokens = max(1, min(max_tokens, backend.context_length - len(backend.prefix_ids)))
    prefix = list(backend.prefix_ids)
    bpb: list[float] = []
    n_tok: list[int] = []
    embs: dict[int, np.ndarray] = {}
    problems: collections.Counter[str] = collections.Counter()
    pending: list[tuple[int, list[int], int]] = []

    def flush() -> None:
        seqs = [prefix + ids for _, ids, _ in pending]
        if torch_model:
            sums, emb = _forward_torch(backend, seqs, embeddings)
        else:
            sums, emb = np.array([float(lp.sum()) for lp in backend.token_logprobs(seqs)]), None
        for k, (i, _, n_bytes) in enumerate(pending):
            bpb[i] = -sums[k] / math.log(2) / n_bytes
            if emb is not None:
                embs[i] = emb[k]
        pending.clear()

    with progress_bar(None, desc, progress) as bar:
        for i, text in enumerate(texts):
            ids, n_bytes, problem = _scorable_ids(backend, text, max_tokens)
            bpb.append(math.nan)
            n_tok.append(0 if ids is None else len(ids))
            if ids is None:
                problems[problem] += 1
            else:
                pending.append((i, ids, n_bytes))
                if len(pending) >= batch_size:
                    flush()
            bar.update()
        if pending:
            flush()
    out = np.array(bpb, dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    emb_arr = None
    if embeddings:
        width = next(iter(embs.values())).shape[0] if embs else 1
        emb_arr = np.zeros((len(bpb), width), dtype=np.float32)  # (N, C)
        for i, e in embs.items():
            emb_arr[i] = e
    return ReferenceScores(out, emb_arr, np.array(n_tok, dtype=np.int64), dict(problems))


def load_backend(ref, what: str):
    """``ref`` as a backend: a model name or path is loaded with torch (context 1024); a backend passes."""
    if ref is None:
        raise ConfigError(f"this recipe needs a {what} model: pass one (CLI: --{what} MODEL, e.g. smollm2-135m)")
    if not isinstance(ref, (str, os.PathLike)):
        return ref
    from ...models.torch_backend import TorchBackend

    return TorchBackend.from_ref(str(ref), context_length=1024)


class ReferenceCache:
    """Reference scores of documents of ``base`` by global index, computed once per ``max_tokens``.

    With a torch reference, embeddings are computed in the same pass (kept for scorable documents
    only) so a later ``diversity`` step costs no second pass. ``unscorable`` counts problems over
    every pass so far.
    """

    def __init__(self, reference, base: Any, *, progress: bool = False):
        self.reference, self.base, self.progress = reference, base, progress
        self.scores: dict[int, dict[int, tuple[float, int]]] = {}  # max_tokens -> {index: (bpb, row or -1)}
        self.embeddings: list[np.ndarray] = []  # rows, each (C,)
        self.unscorable: collections.Counter[str] = collections.Counter()

    def get(self, idx: np.ndarray, max_tokens: int, batch_size: int, want_embeddings: bool) -> ReferenceScores:
        """Reference scores of the documents ``idx`` (M,) of ``base``: bpb (M,) and (M, C) embeddings if asked."""
        cache = self.scores.setdefault(max_tokens, {})
        missing = np.array([i for i in idx if int(i) not in cache], dtype=np.int64)
        if len(missing):
            ref = self.reference
            torch_model = hasattr(ref, "torch") and getattr(ref, "model", None) is not None
            rs = reference_scores(ref, Subset(self.base, missing), max_tokens=max_tokens, batch_size=batch_size,
                                  embeddings=torch_model, progress=self.progress, desc="reference model")
            for k, i in enumerate(missing):
                row = -1
                if rs.embeddings is not None and np.isfinite(rs.bpb[k]):
                    self.embeddings.append(rs.embeddings[k])
                    row = len(self.embeddings) - 1
                cache[int(i)] = (float(rs.bpb[k]), row)
            self.unscorable.update(rs.unscorable)
        bpb = np.array([cache[int(i)][0] for i in idx], dtype=np.float64)  # (M,)
        emb = None
        if want_embeddings:
            width = self.embeddings[0].shape[0] if self.embeddings else 1
            emb = np.zeros((len(idx), width), dtype=np.float32)  # (M, C)
            for k, i in enumerate(idx):
                row = cache[int(i)][1]
                if row >= 0:
                    emb[k] = self.embeddings[row]
        return ReferenceScores(bpb, emb, np.zeros(len(idx), dtype=np.int64), dict(self.unscorable))
