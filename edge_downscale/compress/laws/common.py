"""What both laws share: point records read from JSON files, checked numbers, fit helpers, figure output."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..._io import atomic_path
from ...errors import LawFitError


def number(name: str, value: Any) -> float:
    """``value`` as a finite float, or a :class:`LawFitError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise LawFitError(f"'{name}' must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise LawFitError(f"'{name}' must be finite, got {value}")
    return value


class FilePoint:
    """Base of a law's measured point: one JSON object per point, its keys mapped to fields.

    Subclasses are dataclasses that validate in ``__post_init__`` and set ``FILE_KEYS`` (JSON key ->
    field), ``REQUIRED`` (keys a point must have) and ``DEFAULTS`` (field values for absent keys).
    """

    FILE_KEYS: ClassVar[dict[str, str]] = {}
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        """The file form: ``FILE_KEYS`` keys, absent (None) values left out."""
        out = {key: getattr(self, name) for key, name in self.FILE_KEYS.items()}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any):
        if not isinstance(data, dict):
            raise LawFitError(f"a point must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.FILE_KEYS))
        if unknown:
            raise LawFitError(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(cls.FILE_KEYS)}")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            required = f"{', '.join(cls.REQUIRED[:-1])} and {cls.REQUIRED[-1]}"
            raise LawFitError(f"missing key(s) {', '.join(missing)} ({required} are required)")
        kwargs = {name: data[key] for key, name in cls.FILE_KEYS.items() if key in data}
        return cls(**{**cls.DEFAULTS, **kwargs})


def read_json(path: Path, what: str = "it") -> Any:
    """Parsed JSON of ``path``; an unreadable or invalid file is a one-line :class:`LawFitError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LawFitError(f"{path}: cannot read {what} ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LawFitError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from e


def read_points(path: Path, point_cls: type[FilePoint], empty_hint: str) -> tuple[dict[str, Any], list]:
    """A JSON object with a non-empty "points" list, each parsed by ``point_cls.from_dict``.

    Every problem is a one-line :class:`LawFitError` naming the file (and the point).
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise LawFitError(f'{path}: expected a JSON object with a "points" list')
    if not data["points"]:
        raise LawFitError(f"{path}: no points; {empty_hint}")
    points = []
    for i, raw in enumerate(data["points"]):
        try:
            points.append(point_cls.from_dict(raw))
        except LawFitError as e:
            raise LawFitError(f"{path}: point {i}: {e}") from e
    return data, points


def r2(y: np.ndarray, yhat: np.ndarray) -> float | None:
    """Coefficient of determination; None when ``y`` is constant."""
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot <= 0:
        return None
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss_tot


def fit_from_dict(cls, data: dict[str, Any]):
    """A fit dataclass from its ``to_dict`` form; unknown or missing keys are a :class:`LawFitError`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = sorted(set(data) - names), sorted(
        f.name for f in dataclasses.fields(cls)
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if unknown or missing:
        raise LawFitError(f"{cls.__name__}: unknown key(s) {unknown}, missing key(s) {missing}")
    return cls(**data)


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out a matplotlib figure and write it as a PNG atomically (shared by the law plots)."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)
