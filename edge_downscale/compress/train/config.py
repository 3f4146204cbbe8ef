"""Training settings: :class:`TrainConfig` (shared by ``adapt`` and ``distill``), :class:`DistillConfig`
(the KD objective), the errors, the LR schedule. No heavy imports: the CLI reads its defaults here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from ...config import StageConfig, check, check_int
from ...errors import ConfigError, EdgeDownscaleError

TRAIN_MODES = ("ffn", "all", "lora")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DIVERGENCES = ("forward", "reverse", "jsd")
CURRICULA = ("none", "divergence")


class TrainingError(EdgeDownscaleError):
    """Training cannot start or had to stop (too little data, NaN loss, out of memory, foreign checkpoint)."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C: a checkpoint was written; rerun with resume to continue."""

    exit_code = 130


@dataclasses.dataclass
class TrainConfig(StageConfig):
    """How long and how to train. Shared by ``adapt`` and ``distill``."""

    stage = "train"
    token_budget: int = 65536  # tokens trained on (domain + replay), the budget D of the laws
    seq_len: int = 256
    batch_size: int = 8  # sequences per optimizer step (all processes together)
    micro_batch: int = 0  # sequences per forward/backward; 0 = batch_size (no accumulation)
    lr: float = 2e-4
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train: str = "ffn"  # all | ffn (only the FFNs, the part pruning changed) | lora
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple = ("gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj")
    domain_share: float = 1.0  # r: share of domain tokens in the mixture (1 = no replay)
    eval_every: int = 0  # steps between validation passes (0 = at the start and the end only)
    eval_tokens: int = 8192  # validation tokens per pass, per corpus
    checkpoint_every: int = 50  # steps between checkpoints (0 = none)
    keep_checkpoints: bool = False  # keep checkpoints after a finished run
    precision: str = "auto"  # auto = bf16 on CUDA when supported, else fp32
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def validate(self) -> None:
        for name in ("token_budget", "seq_len", "batch_size", "micro_batch", "eval_every", "eval_tokens",
                     "checkpoint_every", "lora_rank", "seed", "threads"):
            check_int(self, name, 0)
        check(self.token_budget > 0 and self.seq_len >= 8 and self.batch_size > 0,
              "token_budget, batch_size must be > 0 and seq_len >= 8")
        check(self.micro_batch == 0 or self.batch_size % self.micro_batch == 0,
              f"batch_size ({self.batch_size}) must be a multiple of micro_batch ({self.micro_batch})")
        check(self.lr > 0 and 0 <= self.warmup_ratio < 1 and 0 <= self.min_lr_ratio <= 1,
              "lr must be > 0, warmup_ratio in [0, 1), min_lr_ratio in [0, 1]")
        check(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm must be >= 0")
        check(self.train in TRAIN_MODES, f"train must be one of {', '.join(TRAIN_MODES)}, got {self.train!r}")
        check(self.lora_rank > 0 and self.lora_alpha > 0, "lora_rank and lora_alpha must be > 0")
        check(0 < self.domain_share <= 1, f"domain_share must be in (0, 1], got {self.domain_share}")
        check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        check(self.device in DEVICES, "device must be auto, cpu or cuda")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def steps(self) -> int:
        return max(1, self.token_budget // self.tokens_per_step)

    def fingerprint_dict(self) -> dict[str, Any]:
        """The fields that change what is learned (resume must match them); logging cadence does not."""
        d = self.to_dict()
        for k in ("eval_every", "eval_tokens", "checkpoint_every", "keep_checkpoints", "device", "threads"):
            d.pop(k)
        return d


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``lr * min_lr_ratio`` (step counts from 0)."""
    total = config.steps
    warm = int(config.warmup_ratio * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))



@dataclasses.dataclass
class DistillConfig(StageConfig):
    """The distillation objective. Defaults follow shared/research/prunenet-and-laws.md (tau = 2).

    The teacher's top-k logits are cached by default (``cache_topk``); the reverse KL, the JSD and
    hidden-state alignment need the live teacher: set ``cache_topk=0`` for them.
    """

    stage = "distill"
    alpha: float = 0.5  # weight of the hard-label cross-entropy
    tau: float = 2.0
    divergence: str = "forward"  # forward | reverse | jsd
    beta: float = 0.5  # the JSD's mixture weight
    hidden_weight: float = 0.0  # weight of the hidden-state MSE between matched layers (0 = off)
    cache_topk: int = 64  # cache the teacher's top-k logits once (0 = run the teacher live every step)
    curriculum: str = "none"  # none | divergence (student-aware ordering, see KDObjective.on_step)
    curriculum_every: int = 10  # steps per curriculum phase
    curriculum_pool: float = 2.0  # candidates scored per block trained on
    quiz_blocks: int = 8  # held-out (validation) blocks the curriculum watches

    def validate(self) -> None:
        check(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        check(self.tau > 0, f"tau must be > 0, got {self.tau}")
        check(self.divergence in DIVERGENCES, f"divergence must be one of {', '.join(DIVERGENCES)}")
        check(0.0 < self.beta < 1.0, "beta must be in (0, 1)")
        check(self.hidden_weight >= 0, "hidden_weight must be >= 0")
        check_int(self, "cache_topk", 0)
        check(self.curriculum in CURRICULA, f"curriculum must be one of {', '.join(CURRICULA)}")
        check_int(self, "curriculum_every", 1)
        check(self.curriculum_pool >= 1.0, "curriculum_pool must be >= 1")
        check_int(self, "quiz_blocks", 1)
        if self.cache_topk and self.divergence != "forward":
            raise ConfigError(f"a cached top-k teacher (cache_topk {self.cache_topk}) supports the forward KL only: "
                              "use divergence 'forward' or run the teacher live (cache_topk 0, --cache-topk 0)")
        if self.cache_topk and self.hidden_weight:
            raise ConfigError("hidden-state alignment needs the live teacher: set cache_topk 0 (--cache-topk 0) "
                              "or hidden_weight 0")
