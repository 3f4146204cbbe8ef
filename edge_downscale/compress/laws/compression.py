"""Compression laws: quality and runtime of a compressed model as power laws of the compression ratio.

Sengupta, Chaudhary, Chakraborty (2025), "Compression Laws for Large Language Models":

    quality   L = L0^alpha * (1 + r)^beta * (1 + 1/(D + 1))^gamma
    runtime   T = T0 * (1 + r)^delta            (the paper's slides: delta ~ -0.67 for time per token)

L is a quality metric of the compressed model (bits-per-byte, a loss, or an accuracy), L0 the same
metric of the uncompressed model, r the compression ratio in [0, 1) (fraction of parameters removed),
D the recovery fine-tuning tokens (0 = no recovery), T a runtime metric and T0 the dense runtime.
Both laws are linear in their exponents after taking logs, so both are fit by ordinary least squares:

    log L = alpha * log L0 + beta * log(1 + r) + gamma * log(1 + 1/(D + 1))
    log(T / T0) = delta * log(1 + r)

The D term is not scale-free: (1 + 1/(D + 1)) is 2 at D = 0 and ~1 once D >> 1, so D is counted in
units of ``tokens_unit`` (e.g. 1e6: millions of tokens) chosen so the recovery budgets span ~0.1-100.

An exponent the data cannot determine is reported as ``None`` with a note, never as a number:
all points at one D leave gamma unidentifiable; all points at one L0 leave alpha fit together with the
constant (so the fit predicts only for that L0). See :func:`fit_quality_law`.

Results file (``RESULTS.json``, what a benchmark writes; see :func:`load_results`)::

    {"metric": "bpb", "time_metric": "s_per_token", "tokens_unit": 1e6,
     "points": [{"method": "prunenet", "ratio": 0.2, "tokens": 0, "dense": 0.95, "value": 1.05,
                 "dense_time": 0.010, "time": 0.008}, ...]}
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from ..._io import write_json_atomic
from ...errors import LawFitError
from .common import FilePoint, fit_from_dict, number, r2, read_points

# Whether a larger value is better, for metric names we know; anything else must say so in the file.
QUALITY_METRICS = {"bpb": False, "bits_per_byte": False, "loss": False, "cross_entropy": False, "nll": False,
                   "perplexity": False, "ppl": False, "accuracy": True, "acc": True}
TIME_METRICS = {"s_per_token": False, "ms_per_token": False, "seconds": False, "latency": False, "ttft": False,
                "j_per_token": False, "tokens_per_s": True, "tokens_per_second": True, "throughput": True}


# ----------------------------------------------------------------------------- points
@dataclasses.dataclass
class LawPoint(FilePoint):
    """One measured compressed model: ratio r, recovery tokens D, dense and compressed quality/runtime.

    File form (RESULTS.json): keys ratio, tokens, dense, value, dense_time, time, method.
    """

    FILE_KEYS: ClassVar[dict[str, str]] = {"method": "method", "ratio": "r", "tokens": "D", "dense": "L0",
                                           "value": "L", "dense_time": "T0", "time": "T"}
    REQUIRED: ClassVar[tuple[str, ...]] = ("ratio", "dense", "value")
    DEFAULTS: ClassVar[dict[str, float]] = {"D": 0}

    r: float
    D: float
    L0: float
    L: float
    T0: float | None = None
    T: float | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        self.r = number("ratio", self.r)
        self.D = number("tokens", self.D)
        self.L0 = number("dense", self.L0)
        self.L = number("value", self.L)
        if not 0.0 <= self.r < 1.0:
            raise LawFitError(f"ratio {self.r:g} is outside [0, 1): give the fraction of parameters removed (0.3 = 30%)")
        if self.D < 0:
            raise LawFitError(f"tokens {self.D:g} is negative: use 0 for no recovery fine-tuning")
        for key, v in (("dense", self.L0), ("value", self.L)):
            if v <= 0:
                raise LawFitError(f"'{key}' is {v:g}: quality values must be positive (the laws are fit on logs)")
        if (self.T0 is None) != (self.T is None):
            raise LawFitError("give both 'dense_time' and 'time', or neither")
        if self.T is not None:
            self.T0, self.T = number("dense_time", self.T0), number("time", self.T)
            if self.T0 <= 0 or self.T <= 0:
                raise LawFitError(f"'dense_time'/'time' are {self.T0:g}/{self.T:g}: runtimes must be positive")
        if self.method is not None and not isinstance(self.method, str):
            raise LawFitError(f"'method' must be a string, got {self.method!r}")


def as_points(points: Iterable[LawPoint | dict]) -> list[LawPoint]:
    """Points as :class:`LawPoint` (dicts in the file form are parsed); at least one."""
    pts = [p if isinstance(p, LawPoint) else LawPoint.from_dict(p) for p in points]
    if not pts:
        raise LawFitError("no points: give at least one measured compressed model per ratio")
    return pts


def _direction(metric: str, explicit: bool | None, known: dict[str, bool]) -> bool | None:
    if explicit is not None:
        if not isinstance(explicit, bool):
            raise LawFitError(f"higher_is_better must be true or false, got {explicit!r}")
        return explicit
    return known.get(metric.lower())


@dataclasses.dataclass
class Results:
    """The contents of a RESULTS.json file: points plus what the metrics are."""

    points: list[LawPoint]
    metric: str = "bpb"
    higher_is_better: bool | None = None
    time_metric: str = "s_per_token"
    time_higher_is_better: bool | None = None
    tokens_unit: float = 1.0

    def __post_init__(self) -> None:
        self.higher_is_better = _direction(self.metric, self.higher_is_better, QUALITY_METRICS)
        self.time_higher_is_better = _direction(self.time_metric, self.time_higher_is_better, TIME_METRICS)
        self.tokens_unit = number("tokens_unit", self.tokens_unit)
        if self.tokens_unit <= 0:
            raise LawFitError(f"tokens_unit must be positive, got {self.tokens_unit:g}")

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better,
                "time_metric": self.time_metric, "time_higher_is_better": self.time_higher_is_better,
                "tokens_unit": self.tokens_unit, "points": [p.to_dict() for p in self.points]}


_FILE_TOP = {"points", "metric", "higher_is_better", "time_metric", "time_higher_is_better", "tokens_unit"}


def load_results(path: str | Path) -> Results:
    """Read and validate a RESULTS.json; every problem is a one-line :class:`LawFitError`."""
    path = Path(path)
    if not path.is_file():
        raise LawFitError(f"{path}: no such file; give the RESULTS.json your benchmark wrote")
    data, points = read_points(path, LawPoint, "add one entry per measured compressed model")
    # Other top-level keys (a benchmark's rows, timings, machine...) are context, not law inputs: ignored.
    data = {k: v for k, v in data.items() if k in _FILE_TOP}
    try:
        results = Results(points, **{k: data[k] for k in _FILE_TOP - {"points"} if k in data})
    except (LawFitError, TypeError, AttributeError) as e:
        raise LawFitError(f"{path}: {e}") from e
    if results.higher_is_better is None:
        raise LawFitError(f'{path}: unknown metric {results.metric!r}: add "higher_is_better": true or false')
    if results.time_higher_is_better is None and any(p.T is not None for p in points):
        raise LawFitError(f'{path}: unknown time_metric {results.time_metric!r}: add "time_higher_is_better"')
    return results


def save_results(results: Results, path: str | Path) -> None:
    """Write a RESULTS.json atomically (what a benchmark calls)."""
    write_json_atomic(path, results.to_dict())


def select_method(points: Sequence[LawPoint], method: str | None = None) -> list[LawPoint]:
    """The points of one method; with ``method=None`` the points must not mix methods."""
    methods = sorted({p.method for p in points if p.method is not None})
    if method is not None:
        chosen = [p for p in points if p.method == method]
        if not chosen:
            raise LawFitError(f"no points for method {method!r}; methods present: {', '.join(methods) or 'none'}")
        return chosen
    if len({p.method for p in points}) > 1:
        raise LawFitError(f"points mix methods ({', '.join(methods)}); fit one at a time (--method NAME)")
    return list(points)


# ----------------------------------------------------------------------------- fitting helpers
def _is_constant(col: np.ndarray) -> bool:
    return float(np.ptp(col)) <= 1e-12 * max(1.0, float(np.max(np.abs(col))))


def _lstsq(columns: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Least squares on unit-norm columns (so a small-valued column is not mistaken for rank loss)."""
    X = np.column_stack(list(columns.values()))  # (n, p)
    norms = np.linalg.norm(X, axis=0)
    coef, _, rank, _ = np.linalg.lstsq(X / norms, y, rcond=None)
    if rank < X.shape[1]:
        raise LawFitError(f"cannot separate {', '.join(columns)}: their columns are collinear "
                          "(e.g. D changes only together with r); measure r and D independently")
    return dict(zip(columns, (coef / norms).tolist()))



def _recovery_term(D: Any, tokens_unit: float) -> np.ndarray:
    """log(1 + 1/(D + 1)) with D in units of tokens_unit; 0 at D = inf."""
    d = np.asarray(D, dtype=float) / tokens_unit
    return np.log1p(1.0 / (d + 1.0))



# ----------------------------------------------------------------------------- quality law
@dataclasses.dataclass
class QualityLawFit:
    """A fitted quality law. ``None`` exponents were not identifiable; ``notes`` says why.

    ``offset`` is the log-scale constant no reported exponent carries (non-zero only when gamma is not
    identifiable: it holds gamma * log(1 + 1/(D + 1)) at the one D measured, ``fixed_D``).
    ``fixed_L0``/``fixed_D``: the single L0 / D every point had, else None; predictions need them.
    ``residuals``: log L - fitted log L, in point order.
    """

    metric: str
    higher_is_better: bool | None
    alpha: float | None
    beta: float
    gamma: float | None
    offset: float
    fixed_L0: float | None
    fixed_D: float | None
    tokens_unit: float
    r2_log: float | None
    r2: float | None
    residuals: list[float]
    n_points: int
    n_params: int
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QualityLawFit":
        return fit_from_dict(cls, data)


def fit_quality_law(points: Iterable[LawPoint], metric: str = "bpb", higher_is_better: bool | None = None,
                    *, tokens_unit: float = 1.0) -> QualityLawFit:
    """Fit log L = alpha log L0 + beta log(1+r) + gamma log(1 + 1/(D+1)) by least squares.

    Columns with zero variance are handled explicitly (the law has no intercept, so a constant column
    *is* a constant term):
    - all points at one D: gamma is not identifiable -> None; its constant factor goes to ``offset``
      (or into alpha when L0 is constant too), so the fit still predicts at that D;
    - all points at one L0: alpha is fit together with the constant; predictions need that same L0;
    - r must take at least two values (beta is what the law is for).
    """
    pts = as_points(points)
    if tokens_unit <= 0:
        raise LawFitError(f"tokens_unit must be positive, got {tokens_unit:g}")
    r = np.array([p.r for p in pts])
    D = np.array([p.D for p in pts])
    L0 = np.array([p.L0 for p in pts])
    a, b, g = np.log(L0), np.log1p(r), _recovery_term(D, tokens_unit)
    y = np.log([p.L for p in pts])
    if _is_constant(b):
        raise LawFitError(f"every point has ratio {r[0]:g}: measure at least two compression ratios to fit beta")

    const_a, const_g = _is_constant(a), _is_constant(g)
    alpha_carries = const_a and abs(a[0]) > 1e-12  # the constant log L0 column carries the constant term
    columns = {"beta": b}
    if not const_a:
        columns["alpha"] = a
    if not const_g:
        columns["gamma"] = g
    if alpha_carries or const_g:
        columns["constant"] = np.ones_like(b)
    if len(pts) < len(columns):
        raise LawFitError(f"{len(pts)} point(s) for {len(columns)} free parameters ({', '.join(columns)}): "
                          "add measured points (more ratios, recovery budgets or dense models)")
    coef = _lstsq(columns, y)
    yhat = sum(coef[k] * col for k, col in columns.items())

    alpha, gamma, offset, notes = coef.get("alpha"), coef.get("gamma"), 0.0, {}
    d0 = f"{D[0]:g}"
    if alpha_carries:
        alpha = coef["constant"] / a[0]
        notes["alpha"] = (f"single L0 value ({L0[0]:.6g}): alpha is fit together with the constant term"
                          + (" and the D term" if const_g else "") + "; the fit predicts only for this L0")
    elif const_a:
        notes["alpha"] = "not identifiable: every point has L0 = 1, so log L0 = 0"
    if const_g:
        notes["gamma"] = (f"not identifiable: all points have D={d0}"
                          + ("; its factor is folded into alpha" if alpha_carries else "")
                          + f"; the fit predicts only at D={d0}")
        if not alpha_carries:
            offset = coef["constant"]
    return QualityLawFit(
        metric=metric, higher_is_better=_direction(metric, higher_is_better, QUALITY_METRICS),
        alpha=alpha, beta=coef["beta"], gamma=gamma, offset=offset,
        fixed_L0=float(L0[0]) if const_a else None, fixed_D=float(D[0]) if const_g else None,
        tokens_unit=float(tokens_unit), r2_log=r2(y, yhat), r2=r2(np.exp(y), np.exp(yhat)),
        residuals=(y - yhat).tolist(), n_points=len(pts), n_params=len(columns), notes=notes)


def _resolve_L0(fit: QualityLawFit, L0: float | None) -> float:
    if L0 is None:
        if fit.fixed_L0 is None:
            raise LawFitError("give L0 (the dense model's value): the fit saw several dense values")
        return fit.fixed_L0
    L0 = number("L0", L0)
    if L0 <= 0:
        raise LawFitError(f"L0 must be positive, got {L0:g}")
    if fit.fixed_L0 is not None and not math.isclose(L0, fit.fixed_L0, rel_tol=1e-9):
        raise LawFitError(f"the fit saw only L0={fit.fixed_L0:.6g}, so alpha is not separable from the constant; "
                          f"it cannot predict for L0={L0:.6g}")
    return L0


def _log_quality(fit: QualityLawFit, r: Any, D: float, L0: float) -> np.ndarray:
    r = np.asarray(r, dtype=float)
    if np.any((r < 0) | (r >= 1)):
        raise LawFitError("r must be in [0, 1)")
    if D < 0:
        raise LawFitError(f"D must be >= 0, got {D:g}")
    if fit.gamma is None and not math.isclose(D, fit.fixed_D, rel_tol=1e-9, abs_tol=1e-12):
        raise LawFitError(f"gamma is not identifiable (every point had D={fit.fixed_D:g}): predict at that D, "
                          "or refit with points at several recovery budgets")
    out = fit.beta * np.log1p(r) + fit.offset
    if fit.alpha is not None:
        out = out + fit.alpha * math.log(L0)
    if fit.gamma is not None:
        out = out + fit.gamma * _recovery_term(D, fit.tokens_unit)
    return out


def predict(fit: QualityLawFit, r: Any, D: float = 0.0, L0: float | None = None) -> Any:
    """Predicted L at ratio(s) r after D recovery tokens (D may be ``math.inf``); a float for a scalar r."""
    L0 = _resolve_L0(fit, L0)
    out = np.exp(_log_quality(fit, r, float(D), L0))
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- runtime law
@dataclasses.dataclass
class RuntimeLawFit:
    """A fitted runtime law T = T0 (1 + r)^delta; residuals are log(T/T0) - delta log(1+r)."""

    metric: str
    higher_is_better: bool | None
    delta: float
    r2_log: float | None
    r2: float | None
    residuals: list[float]
    n_points: int
    n_params: int = 1

    def speedup(self, r: float) -> float | None:
        """How many times faster than dense at ratio r (None if the metric's direction is unknown)."""
        if self.higher_is_better is None:
            return None
        factor = (1.0 + r) ** self.delta
        return factor if self.higher_is_better else 1.0 / factor

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RuntimeLawFit":
        return fit_from_dict(cls, data)


def fit_runtime_law(points: Iterable[LawPoint], metric: str = "s_per_token",
                    higher_is_better: bool | None = None) -> RuntimeLawFit:
    """Fit log(T/T0) = delta log(1+r) (through the origin: at r = 0, T = T0) on the points with times."""
    pts = [p for p in as_points(points) if p.T is not None]
    if not pts:
        raise LawFitError("no point has runtimes: add 'dense_time' and 'time' to the points")
    b = np.log1p([p.r for p in pts])
    y = np.log([p.T / p.T0 for p in pts])
    if not np.any(b > 0):
        raise LawFitError("every timed point has ratio 0: time at least one compressed model to fit delta")
    delta = float(b @ y / (b @ b))
    T0, T = np.array([p.T0 for p in pts]), np.array([p.T for p in pts])
    return RuntimeLawFit(metric=metric, higher_is_better=_direction(metric, higher_is_better, TIME_METRICS),
                         delta=delta, r2_log=r2(y, delta * b), r2=r2(T, T0 * np.exp(delta * b)),
                         residuals=(y - delta * b).tolist(), n_points=len(pts))


def predict_runtime(fit: RuntimeLawFit, r: Any, T0: float) -> Any:
    """Predicted runtime metric at ratio(s) r for a dense runtime T0."""
    out = number("T0", T0) * (1.0 + np.asarray(r, dtype=float)) ** fit.delta
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- critical ratio
@dataclasses.dataclass
class CriticalRatio:
    """r_crit for target sigma at dense value L0 and recovery D (None = D -> infinity)."""

    sigma: float
    L0: float
    D: float | None
    r_crit: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def critical_ratio(fit: QualityLawFit, sigma: float, L0: float | None = None,
                   D: float | None = None) -> CriticalRatio:
    """Largest r whose quality can still meet ``L <= sigma * L0`` (``>=`` for higher-is-better metrics).

    With unlimited recovery (D -> infinity) the gamma factor tends to 1, and solving
    L0^alpha (1 + r)^beta = sigma * L0 gives

        r_crit = (sigma * L0^(1 - alpha))^(1 / beta) - 1,

    the paper's sigma^(1/beta) - 1 when alpha = 1 (the paper states sigma relative to L0^alpha; here it
    is relative to the measured dense value). Beyond r_crit no amount of recovery fine-tuning meets the
    target. When gamma is not identifiable, or D is given, r_crit is for that finite D instead.
    ``r_crit`` is None (with the reason in ``note``) when quality does not degrade with r per the fit,
    or when the target is missed even at r = 0.
    """
    sigma = number("sigma", sigma)
    if sigma <= 0:
        raise LawFitError(f"the target ratio sigma must be positive, got {sigma:g}")
    if fit.higher_is_better is None:
        raise LawFitError(f"unknown direction for metric {fit.metric!r}: set higher_is_better")
    L0 = _resolve_L0(fit, L0)
    if D is None and fit.gamma is None:
        D, where = fit.fixed_D, f"at D={fit.fixed_D:g} (gamma not identifiable, so not the D -> inf limit)"
    elif D is None:
        where = "with unlimited recovery (D -> inf)"
    else:
        D, where = number("D", D), f"at D={D:g}"
    const = float(_log_quality(fit, 0.0, math.inf if D is None else D, L0))  # log L at r = 0
    target = math.log(sigma * L0)
    cmp = "at least" if fit.higher_is_better else "at most"
    degrades = fit.beta < 0 if fit.higher_is_better else fit.beta > 0
    if not degrades:
        return CriticalRatio(sigma, L0, D, None, f"beta = {fit.beta:.4g}: quality does not degrade with r "
                                                 "per the fit, so there is no critical ratio")
    if (const < target) if fit.higher_is_better else (const > target):
        return CriticalRatio(sigma, L0, D, None, f"{fit.metric} {cmp} {sigma:g} x dense is missed even at r = 0 {where}")
    r_crit = math.expm1((target - const) / fit.beta)
    note = f"{fit.metric} {cmp} {sigma:g} x dense {where} needs r <= r_crit"
    if r_crit >= 1:
        note += "; every ratio in [0, 1) meets it"
    return CriticalRatio(sigma, L0, D, r_crit, note)


# ----------------------------------------------------------------------------- holdout
@dataclasses.dataclass
class HoldoutResult:
    """Refit without the points at ``ratio``, then predict them: one row per held-out point."""

    ratio: float
    quality: list[dict[str, float]]
    runtime: list[dict[str, float]]
    max_rel_error: float
    runtime_max_rel_error: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def holdout_check(points: Iterable[LawPoint], holdout_ratio: float, *, tokens_unit: float = 1.0) -> HoldoutResult:
    """Fit on every point not at ``holdout_ratio`` and predict the ones that are (relative errors)."""
    pts = as_points(points)
    held = [p for p in pts if math.isclose(p.r, holdout_ratio, abs_tol=1e-9)]
    rest = [p for p in pts if not math.isclose(p.r, holdout_ratio, abs_tol=1e-9)]
    if not held:
        present = ", ".join(f"{x:g}" for x in sorted({p.r for p in pts}))
        raise LawFitError(f"no point at ratio {holdout_ratio:g} to hold out; ratios present: {present}")
    try:
        quality = fit_quality_law(rest, tokens_unit=tokens_unit)
        rows = []
        for p in held:
            pred = predict(quality, p.r, p.D, p.L0)
            rows.append({"ratio": p.r, "tokens": p.D, "dense": p.L0, "measured": p.L, "predicted": pred,
                         "rel_error": abs(pred - p.L) / p.L})
    except LawFitError as e:
        raise LawFitError(f"holdout at ratio {holdout_ratio:g}: {e}") from e
    runtime_rows = []
    if any(p.T is not None for p in held) and any(p.T is not None and p.r > 0 for p in rest):
        runtime = fit_runtime_law(rest)
        for p in held:
            if p.T is not None:
                pred = predict_runtime(runtime, p.r, p.T0)
                runtime_rows.append({"ratio": p.r, "dense_time": p.T0, "measured": p.T, "predicted": pred,
                                     "rel_error": abs(pred - p.T) / p.T})
    return HoldoutResult(float(holdout_ratio), rows, runtime_rows, max(row["rel_error"] for row in rows),
                         max((row["rel_error"] for row in runtime_rows), default=None))



def with_dense_points(points: list[LawPoint]) -> list[LawPoint]:
    """Add the uncompressed model as a measured point (r = 0, D = 0, L = L0) for each dense value.

    Every point already carries its dense measurement; using it anchors the fit at r = 0, where the
    law alone (L0^alpha) is otherwise free to miss L0.
    """
    have = {(p.L0, p.T0) for p in points if p.r == 0 and p.D == 0}
    method = next((p.method for p in points if p.method), None)
    dense = {(p.L0, p.T0) for p in points} - have
    return points + [LawPoint(0.0, 0.0, L0, L0, T0, T0, method) for L0, T0 in sorted(dense, key=lambda x: x[0])]

