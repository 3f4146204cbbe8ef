"""Config dataclasses: one per stage, validated on construction, round-trip through JSON/YAML.

Every stage config subclasses :class:`StageConfig`, so ``Cfg.from_dict(cfg.to_dict()) == cfg`` holds
and an unknown or ill-typed key is a :class:`~edge_downscale.errors.ConfigError`, not a silent default.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

T = TypeVar("T", bound="StageConfig")


@dataclasses.dataclass
class StageConfig:
    """Base of every stage config. Subclasses add fields and override :meth:`validate`."""

    stage: ClassVar[str] = "stage"

    def __post_init__(self) -> None:
        # JSON has no tuples: accept lists where the default is a tuple.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list) and isinstance(f.default, tuple):
                setattr(self, f.name, tuple(value))
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
            )
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object")
        return cls.from_dict(data)


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON true/false must not pass as 1/0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def registrar(registry: dict[str, type], kind: str):
    """A class decorator that adds a class to a plain ``{cls.name: cls}`` registry (names unique)."""
    def register(cls: type) -> type:
        if cls.name in registry:
            raise ConfigError(f"{kind} {cls.name!r} registered twice")
        registry[cls.name] = cls
        return cls

    return register


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (validation helper)."""
    if not condition:
        raise ConfigError(message)


def check_int(config: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> None:
    """``config.name`` must be an int (not a bool) within [minimum, maximum] (either bound optional)."""
    value = getattr(config, name)
    if minimum is not None and maximum is not None:
        want = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an integer >= {minimum}"
    else:
        want = "an integer"
    ok = is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    check(ok, f"{name} must be {want}, got {value!r}")


@dataclasses.dataclass
class EvalConfig(StageConfig):
    """Bits-per-byte and multiple-choice evaluation settings.

    ``max_length``/``stride``: sliding window over long documents; each window scores only the
    tokens the previous window did not, with at least ``max_length - stride`` tokens of context.
    ``max_bytes``: cap on held-out bytes scored per domain (documents are taken in split order).
    """

    stage: ClassVar[str] = "eval"
    split: str = "test"
    max_length: int = 512
    stride: int = 256
    max_bytes: int | None = 24_000
    mc_items: int = 40
    mc_context_chars: int = 320
    mc_continuation_chars: int = 64
    mc_choices: int = 4
    batch_size: int = 4
    seed: int = 0

    def validate(self) -> None:
        check(self.split in ("train", "validation", "test"), f"split must be train/validation/test, got {self.split!r}")
        check(self.max_length >= 16, f"max_length must be >= 16, got {self.max_length}")
        check(0 < self.stride <= self.max_length, f"stride must be in (0, max_length], got {self.stride}")
        check(self.max_bytes is None or self.max_bytes > 0, "max_bytes must be positive or None")
        check(self.mc_items >= 0, "mc_items must be >= 0")
        check(self.mc_choices >= 2, "mc_choices must be >= 2")
        check(self.mc_context_chars >= 16 and self.mc_continuation_chars >= 8, "mc context/continuation too short")
        check(self.batch_size >= 1, "batch_size must be >= 1")
