"""Cascade calibration: per-level confidence thresholds set on held-out data when a bundle is built."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..config import check
from ..errors import ConfigError
from ..runtime.ensemble import Ensemble
from ..runtime.generation import GenerationConfig
from ..runtime.strategies import CascadeOptions, CascadeStrategy, generation_confidence, option_probs


def calibrate_cascade(ensemble: Ensemble, *, prompts: Sequence[str] = (), texts: Sequence[str] = (),
                      choices: Sequence[tuple[str, Sequence[str]]] = (), target_acceptance: float = 0.5,
                      generation: GenerationConfig | None = None, progress=None) -> dict[str, Any]:
    """Per-level thresholds so that each level (but the last) accepts ``target_acceptance`` of held-out requests.

    For every kind with data (generation ``prompts``, scored ``texts``, ``choices`` as
    (context, options)), each level's confidence is measured on all the data and its threshold set
    at the ``1 - target_acceptance`` quantile; prompts are answered with ``generation`` (default: at
    most 32 tokens, greedy). Returns the options to store (``thresholds`` and
    ``calibration``: the per-level acceptance actually reached on the calibration data).
    """
    check(0 < target_acceptance <= 1, f"target_acceptance must be in (0, 1], got {target_acceptance}")
    strategy = ensemble.strategy
    if not isinstance(strategy, CascadeStrategy):
        raise ConfigError("calibrate_cascade needs an ensemble whose strategy is cascade")
    kind = strategy.options.confidence
    cfg = generation if generation is not None else GenerationConfig(max_tokens=32)
    measures = {
        "generate": (prompts, lambda b, p: generation_confidence(ensemble.run_generation(b, p, cfg), kind)),
        "score": (texts, lambda b, t: b.score(t).mean),
        "choose": (choices, lambda b, c: float(option_probs(b.option_logprobs(c[0], list(c[1]))).max())),
    }
    thresholds, calibration = {}, {"target_acceptance": target_acceptance, "confidence": kind, "acceptance": {}}
    for name, (data, measure) in measures.items():
        if not data:
            continue
        values, reached = [], []
        for level in strategy.levels[:-1]:
            with ensemble.use(level) as backend:
                conf = np.array([measure(backend, item) for item in data])  # (n,)
            if progress is not None:
                progress.update(1)
            thr = float(np.quantile(conf, 1 - target_acceptance)) if target_acceptance < 1 else float(conf.min())
            values.append(thr)
            reached.append(float((conf >= thr).mean()))
        thresholds[name] = values
        calibration["acceptance"][name] = reached
        calibration[f"n_{name}"] = len(data)
    if not thresholds:
        raise ConfigError("calibrate_cascade needs held-out prompts, texts or choices")
    options = {**strategy.options.to_dict(), "thresholds": {**strategy.options.thresholds, **thresholds},
               "calibration": calibration}
    strategy.options = CascadeOptions.from_dict(options)
    return options
