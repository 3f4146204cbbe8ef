"""Compression stage: structured pruning (prune/: PruneNet and baselines), compression laws (laws.py)
and distillation losses (distill.py). Data pruning lives in ``edge_downscale.data.prune``.

The training engine for distillation and domain-continual pretraining is still to come (issue 7).
"""
