"""The data-pruning config (:class:`PruneRecipe`): which selectors run, in which order, keeping how much."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Sequence

from ...config import StageConfig, check, check_int, is_number
from ..corpus import SPLITS
from .active import ActiveConfig
from .dedup import ExactDedupConfig
from .diversity import DiversityConfig
from .near_dedup import NearDedupConfig
from .quality import QualityConfig
from .relevance import RelevanceConfig
from .steps import STEPS

_SUB_CONFIGS: dict[str, type[StageConfig]] = {
    "dedup": ExactDedupConfig, "near_dedup": NearDedupConfig, "quality": QualityConfig,
    "relevance": RelevanceConfig, "diversity": DiversityConfig, "active": ActiveConfig,
}


def parse_steps(steps: str | Sequence[str]) -> tuple[str, ...]:
    """Step names from ``"dedup,quality"`` or a sequence (blanks dropped; checked by :class:`PruneRecipe`)."""
    names = [s.strip() for s in (steps.split(",") if isinstance(steps, str) else steps) if s and s.strip()]
    return tuple(names)


@dataclasses.dataclass
class PruneRecipe(StageConfig):
    """Which selectors run, in which order, and the fraction of train documents to keep.

    ``keep``: fraction of the input train documents kept, in (0, 1] (how it is spread over the steps:
    :mod:`edge_downscale.data.prune.budget`). ``reference``/``student``: model names or paths for the model
    steps (``active`` uses ``reference`` as the teacher). ``target``: a corpus directory or demo
    domain whose ``target_split`` is DSIR's target. Per-step settings live in the nested configs.
    """

    stage: ClassVar[str] = "prune"
    steps: tuple[str, ...] = ("dedup", "near-dedup", "quality", "diversity")
    keep: float = 0.5
    seed: int = 0
    reference: str | None = None
    student: str | None = None
    target: str | None = None
    target_split: str = "train"
    dedup: ExactDedupConfig = dataclasses.field(default_factory=ExactDedupConfig)
    near_dedup: NearDedupConfig = dataclasses.field(default_factory=NearDedupConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    relevance: RelevanceConfig = dataclasses.field(default_factory=RelevanceConfig)
    diversity: DiversityConfig = dataclasses.field(default_factory=DiversityConfig)
    active: ActiveConfig = dataclasses.field(default_factory=ActiveConfig)

    def validate(self) -> None:
        steps = parse_steps(self.steps) if isinstance(self.steps, (str, tuple, list)) else None
        check(steps is not None and len(steps) > 0, f"steps must be a non-empty list of {', '.join(STEPS)}")
        unknown = [s for s in steps if s not in STEPS]
        check(not unknown, f"unknown pruning step(s) {', '.join(map(repr, unknown))}; available: {', '.join(STEPS)}")
        check(len(set(steps)) == len(steps), f"each step may appear once, got {', '.join(steps)}")
        self.steps = steps
        check(is_number(self.keep) and 0 < self.keep <= 1, f"keep must be a fraction in (0, 1], got {self.keep!r}")
        self.keep = float(self.keep)
        check_int(self, "seed")
        for name in ("reference", "student", "target"):
            v = getattr(self, name)
            check(v is None or (isinstance(v, str) and v != ""), f"{name} must be a non-empty string or None")
        check(self.target_split in SPLITS, f"target_split must be one of {', '.join(SPLITS)}")
        for name, cls in _SUB_CONFIGS.items():
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, cls.from_dict(v))
            check(isinstance(getattr(self, name), cls), f"{name} must be a {cls.__name__} or a dict of its fields")
