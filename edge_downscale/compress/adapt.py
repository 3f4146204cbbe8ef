"""Domain-continual pretraining: keep training a causal LM on a domain corpus, optionally mixed
with a general "replay" corpus so it does not forget (D-CPT law, Que et al. 2024: the domain
share r of the mixture trades domain loss against general loss; ``compress.laws.dcpt`` fits the law
and proposes r).

``adapt`` is the LM objective on the shared engine (``compress.train.engine``): full fine-tuning, the FFNs
only, or LoRA (peft, merged into the weights when saving), so the output is a plain HF directory.
"""
from __future__ import annotations

from typing import Any

from .train.config import TrainConfig
from .train.engine import Engine, LMObjective
from .train.packing import TextSplits, load_splits


def adapt(model: str, domain: str | TextSplits, out_dir, *, config: TrainConfig | None = None,
          replay: str | TextSplits | None = None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Continue pretraining ``model`` on ``domain`` (mixed with ``replay`` at ``config.domain_share``).

    ``model``: a registry name, HF directory or GGUF file; ``domain``/``replay``: demo domain names,
    corpus directories or :class:`TextSplits`. Writes an HF directory, ``train_log.jsonl``,
    ``run.json`` and ``eval_summary.json`` into ``out_dir``; returns the summary.
    """
    from ..models import load_torch

    config = config or TrainConfig()
    net, tokenizer, info = load_torch(model)
    engine = Engine(net, tokenizer, LMObjective(), load_splits(domain), config, out_dir,
                    replay=load_splits(replay) if replay is not None else None, kind="adapt",
                    meta={"model": info}, resume=resume, progress=progress)
    return engine.run()
