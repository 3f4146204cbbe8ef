"""Compression stage: structured pruning (``prune/``: PruneNet and baselines), recovery and
specialisation training (``train/`` engine, ``adapt``, ``distill``) and the scaling laws (``laws/``:
compression law, D-CPT law). Data pruning lives in ``edge_downscale.data.prune``.
"""
