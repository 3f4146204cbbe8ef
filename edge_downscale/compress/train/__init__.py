"""The training engine shared by ``adapt`` and ``distill``, one module per concern (import from them):

``config`` (:class:`TrainConfig`, :class:`DistillConfig`, errors, LR schedule; no heavy imports),
``packing`` (corpus -> token blocks: :class:`TextSplits`, :class:`TrainSource`, the sampler),
``checkpoints`` (the run directory's files: checkpoints, log, fingerprints), ``engine``
(:class:`Engine` and the objectives).
"""
