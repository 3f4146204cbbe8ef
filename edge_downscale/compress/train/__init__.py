"""The training engine shared by ``adapt`` and ``distill``: settings, packing, checkpoints, the loop.

``config`` (:class:`TrainConfig`, errors, LR schedule), ``packing`` (corpus -> token blocks, the
sampler), ``checkpoints`` (run-directory files), ``engine`` (:class:`Engine` and the objectives).
"""
from .checkpoints import CHECKPOINTS, LOG, RUN, SUMMARY, list_checkpoints, read_log, weights_fingerprint
from .config import PRECISIONS, TRAIN_MODES, TrainConfig, TrainingError, TrainingInterrupted, lr_at
from .engine import Engine, LMObjective, Objective
from .packing import Sampler, TextSplits, TrainSource, blocks_digest, load_splits, make_source, pack

__all__ = [
    "CHECKPOINTS", "LOG", "PRECISIONS", "RUN", "SUMMARY", "TRAIN_MODES", "Engine", "LMObjective", "Objective",
    "Sampler", "TextSplits", "TrainConfig", "TrainSource", "TrainingError", "TrainingInterrupted", "blocks_digest",
    "list_checkpoints", "load_splits", "lr_at", "make_source", "pack", "read_log", "weights_fingerprint",
]
