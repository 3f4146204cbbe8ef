"""Compression stage: structured pruning (prune/: PruneNet and baselines) and compression laws (laws.py).

Data pruning, distillation and domain-continual pretraining are still to come (issues 4 and 7).
"""
