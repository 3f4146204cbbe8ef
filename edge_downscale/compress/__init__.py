"""Compression stage (data pruning, PruneNet, distillation, domain-continual pretraining): lands with issues 3, 4 and 7."""
