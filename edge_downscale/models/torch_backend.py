"""Torch backend: scores token sequences with a transformers causal LM (CPU or CUDA)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import require
from ..runtime.base import Backend


class TorchBackend(Backend):
    name = "torch"
    capabilities = frozenset({"logprobs", "logits", "gpu"})

    def __init__(self, model, tokenizer, *, context_length: int | None = None, batch_size: int = 4):
        self.torch = require("torch", "compress")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        max_pos = getattr(model.config, "max_position_embeddings", None) or 2048
        self.context_length = min(context_length or max_pos, max_pos)
        self.device = next(model.parameters()).device

    @classmethod
    def from_ref(cls, ref, *, device: str = "cpu", dtype: str = "float32", **kw) -> "TorchBackend":
        from .loader import load_torch

        model, tok, info = load_torch(ref, device=device, dtype=dtype)
        backend = cls(model, tok, **kw)
        backend.info = info
        return backend

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def prefix_ids(self) -> list[int]:
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return [bos]

    def token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        torch = self.torch
        out: list[np.ndarray] = []
        seqs = [list(s) for s in sequences]
        for start in range(0, len(seqs), self.batch_size):
            batch = seqs[start:start + self.batch_size]
            width = max(len(s) for s in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T), right-padded
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, s in enumerate(batch):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
                tgt = logp.gather(-1, ids[:, 1:].to(self.device).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
            tgt = tgt.double().cpu().numpy()
            out.extend(tgt[i, : len(s) - 1] for i, s in enumerate(batch))
        return out

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(ids)], device=self.device)).logits[0]  # (T, V)
        return out.float().cpu().numpy()
