"""Structured FFN pruning: PruneNet (calibration-free, learned policy) and baselines, one API.

    policy = learn_policy(model, PruneNetConfig(train_ratio=0.4))   # once
    report = prune_(model, policy, 0.3)                             # at any ratio
    prune_(other_copy, "magnitude", 0.3)                            # baselines: random, magnitude, activation
    prune_to_dirs("smollm2-135m", PruneConfig(out_dir="pruned", ratios=(0.2, 0.3)))  # the `prune` stage
"""
from .api import REPORT, PruneConfig, calibration_sequences, n_params, prune_, prune_to_dirs, row_scores, save_pruned
from .ffn import FFN_LAYOUTS, FFNLayout, PruneError, ffn_layers, ffn_width, kept_width, slice_ffn_
from .methods import CALIBRATION_FREE, METHODS
from .prunenet import PruneNetConfig, PruneNetPolicy, learn_policy, spectrum_ks

__all__ = [
    "CALIBRATION_FREE", "FFN_LAYOUTS", "FFNLayout", "METHODS", "PruneConfig", "PruneError", "PruneNetConfig",
    "PruneNetPolicy", "REPORT", "calibration_sequences", "ffn_layers", "ffn_width", "kept_width", "learn_policy",
    "n_params", "prune_", "prune_to_dirs", "row_scores", "save_pruned", "slice_ffn_", "spectrum_ks",
]
