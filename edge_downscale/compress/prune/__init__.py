"""Structured FFN pruning: PruneNet and ffn-policy (calibration-free, learned policies) and baselines, one API.

    policy = learn_policy(model, PruneNetConfig(), ratio=0.3)        # the authors' PruneNet, at the target ratio
    report = prune_(model, policy, 0.3, seed=0)                      # its seeded, sampled action
    policy = learn_ffn_policy(model, FFNPolicyConfig(), ratio=0.3)   # ffn-policy: rewarded for the FFN's output
    prune_(other_copy, "magnitude", 0.3)                             # baselines: random, magnitude, activation
    prune_to_dirs("smollm2-135m", PruneConfig(out_dir="pruned", ratios=(0.2, 0.3)))  # the `prune` stage
"""
from .api import (REPORT, PruneConfig, calibration_sequences, learn_policies, n_params, prune_, prune_to_dirs,
                  row_scores, save_pruned)
from .ffn import FFN_LAYOUTS, FFNLayout, PruneError, ffn_layers, ffn_width, kept_width, slice_ffn_
from .ffn_policy import FFNPolicy, FFNPolicyConfig, learn_ffn_policy
from .methods import CALIBRATION_FREE, METHODS, REGISTRY
from .prunenet import PruneNetConfig, PruneNetPolicy, learn_policy, spectrum_ks

__all__ = [
    "CALIBRATION_FREE", "FFNPolicy", "FFNPolicyConfig", "FFN_LAYOUTS", "FFNLayout", "METHODS", "PruneConfig",
    "PruneError", "PruneNetConfig", "PruneNetPolicy", "REGISTRY", "REPORT", "calibration_sequences", "ffn_layers",
    "ffn_width", "kept_width", "learn_ffn_policy", "learn_policies", "learn_policy", "n_params", "prune_",
    "prune_to_dirs", "row_scores", "save_pruned", "slice_ffn_", "spectrum_ks",
]
