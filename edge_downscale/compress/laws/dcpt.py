"""D-CPT law: validation loss of domain-continual pretraining as a function of budget and mixture share.

Que et al. (2024), "D-CPT Law: Domain-specific Continual Pre-Training Scaling Law for Large Language
Models" (arXiv:2406.01375). For one model, continued pretraining on D tokens of a mixture whose share
r in (0, 1] is domain text (the rest, 1 - r, general "replay" text) reaches the domain validation loss

    L(D, r) = E + B * r**eta / D**beta + C / (r + eps)**gamma        E, B, C, eta, beta, gamma >= 0

- C / (r + eps)**gamma falls as the domain share grows: what only more domain data removes;
- B * r**eta / D**beta falls with training tokens and grows with r: at a small budget a large domain
  share costs more than at a large one, which is what makes the best r depend on D;
- E is the floor.

eps keeps the share term finite as r -> 0. Like the paper we fix it instead of fitting it (default
0.01, ``fit_dcpt(eps=...)``): with shares measured no nearer 0 than ~0.1 the data cannot tell eps apart
from C and gamma, and fitting it only adds a flat direction.

The same form is fitted separately to the general (replay) validation loss. There, as in the paper,
the share in the law is the *general* share: the fit with ``target="general"`` uses 1 - r where the
formula says r (a run without replay, r = 1, sits at the eps end of the general law). Every public
function takes and reports the domain share r; the fit converts.

D is counted in units of ``tokens_unit`` (a power of ten near the geometric mean of the measured D,
recorded in the fit) so that B is of the order of the losses: B in raw tokens is B * tokens_unit**beta.

A term the data cannot identify is not reported as a number: all points at one share leave eta, C and
gamma unidentifiable (reported as None, the fit predicts only at that share); all points at one budget
leave beta unidentifiable (None, predicts only at that D). Weaker problems (two shares only, a term that
vanishes, an exponent at its bound, a flat direction) are stated in ``notes``. See :func:`fit_dcpt`.

Inputs (see :func:`load_dcpt_points`): a points file

    {"points": [{"tokens": 2.0e7, "share": 0.5, "loss": 2.31, "general_loss": 3.02}, ...]}

or a training-run directory: ``run.json`` ({"domain_share": r, ...}) and ``train_log.jsonl`` whose
``{"event": "eval", "tokens": D, "val_loss": L, "replay_val_loss": G}`` lines are the points.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from ..._io import write_json_atomic
from ...config import check
from ...errors import LawFitError
from ..train.checkpoints import LOG, RUN
from .common import FilePoint, fit_from_dict, number, r2, read_json, read_points

DEFAULT_EPS = 0.01
DEFAULT_GRID = np.linspace(0.001, 1.0, 1000)  # candidate domain shares for propose_share, step 0.001


# ----------------------------------------------------------------------------- points
@dataclasses.dataclass
class DcptPoint(FilePoint):
    """One measurement: after D training tokens at domain share r, the domain (and general) validation loss.

    File form: keys tokens, share, loss, general_loss.
    """

    FILE_KEYS: ClassVar[dict[str, str]] = {"tokens": "D", "share": "r", "loss": "loss", "general_loss": "general_loss"}
    REQUIRED: ClassVar[tuple[str, ...]] = ("tokens", "share", "loss")

    D: float
    r: float
    loss: float
    general_loss: float | None = None

    def __post_init__(self) -> None:
        self.D = number("tokens", self.D)
        self.r = number("share", self.r)
        self.loss = number("loss", self.loss)
        if self.D <= 0:
            raise LawFitError(f"tokens {self.D:g} must be positive: D = 0 (before training) is outside the law")
        if not 0.0 < self.r <= 1.0:
            raise LawFitError(f"share {self.r:g} is outside (0, 1]: give the domain fraction of the mixture (0.3 = 30%)")
        if self.loss <= 0:
            raise LawFitError(f"loss {self.loss:g} must be positive (a cross-entropy)")
        if self.general_loss is not None:
            self.general_loss = number("general_loss", self.general_loss)
            if self.general_loss <= 0:
                raise LawFitError(f"general_loss {self.general_loss:g} must be positive (a cross-entropy)")


def _points_file(path: Path) -> list[DcptPoint]:
    return read_points(path, DcptPoint, "add one entry per measured (tokens, share)")[1]


def _run_dir(path: Path) -> list[DcptPoint]:
    """The eval lines of one training run; its share comes from run.json."""
    run_path, log_path = path / RUN, path / LOG
    for p in (run_path, log_path):
        if not p.is_file():
            raise LawFitError(f"{path}: not a training-run directory (no {p.name}); give a run directory "
                              "(run.json + train_log.jsonl) or a points JSON file")
    run = read_json(run_path, RUN)
    if not isinstance(run, dict) or "domain_share" not in run:
        raise LawFitError(f'{run_path}: expected a JSON object with "domain_share"')
    try:
        r = number("domain_share", run["domain_share"])
    except LawFitError as e:
        raise LawFitError(f"{run_path}: {e}") from e
    try:
        text = log_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LawFitError(f"{log_path}: cannot read ({e})") from e
    lines = text.split("\n")
    by_tokens: dict[float, DcptPoint] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # last line without its newline: a write cut short (run still going, or killed)
                continue
            raise LawFitError(f"{log_path} line {n}: not valid JSON ({str(e).splitlines()[0]})") from e
        if not isinstance(rec, dict) or rec.get("event") != "eval":
            continue
        try:
            if "tokens" not in rec or "val_loss" not in rec:
                raise LawFitError('an eval line needs "tokens" and "val_loss"')
            if number("tokens", rec["tokens"]) == 0:
                continue  # the eval before training: D = 0 is outside the law
            point = DcptPoint(rec["tokens"], r, rec["val_loss"], rec.get("replay_val_loss"))
        except LawFitError as e:
            raise LawFitError(f"{log_path} line {n}: {e}") from e
        by_tokens[point.D] = point  # a resumed run logs again after its checkpoint: the last line wins
    if not by_tokens:
        raise LawFitError(f"{log_path}: no eval line after training started (tokens > 0); "
                          "train longer or evaluate more often")
    return [by_tokens[D] for D in sorted(by_tokens)]


def load_dcpt_points(paths: str | Path | Iterable[str | Path]) -> list[DcptPoint]:
    """Points from points JSON files and/or training-run directories, in the order given.

    Every problem is a one-line :class:`LawFitError` naming the file (and line) it comes from.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    points: list[DcptPoint] = []
    for path in map(Path, paths):
        if path.is_dir():
            points += _run_dir(path)
        elif path.is_file():
            points += _points_file(path)
        else:
            raise LawFitError(f"{path}: no such file or directory; give a points JSON file or a training-run directory")
    if not points:
        raise LawFitError("no sources given: pass points JSON files or training-run directories")
    return points


def save_dcpt_points(points: Iterable[DcptPoint], path: str | Path) -> None:
    """Write a points file atomically (the form :func:`load_dcpt_points` reads)."""
    write_json_atomic(path, {"points": [p.to_dict() for p in points]})


# ----------------------------------------------------------------------------- the law
PARAMS = ("E", "B", "C", "eta", "beta", "gamma")  # the law's parameters, in report order
_LOG = ("B", "C")  # fitted as logs: their size follows the loss scale and tokens_unit
_BOUNDS = {"E": (0.0, np.inf), "B": (-30.0, 30.0), "C": (-30.0, 30.0),
           "eta": (0.0, 4.0), "beta": (0.0, 3.0), "gamma": (0.0, 4.0)}
# Deterministic starting exponents; E, B, C start at the non-negative least squares for each triple.
_STARTS = {"eta": (0.5, 1.0), "beta": (0.1, 0.3, 0.7), "gamma": (0.1, 0.5, 1.5)}


def _law(p: dict[str, float | None], x: np.ndarray, d: np.ndarray, eps: float) -> np.ndarray:
    """E + B x^eta d^-beta + C (x + eps)^-gamma; a None exponent/term is absent (not identifiable)."""
    decay = p["B"] * (x ** p["eta"] if p["eta"] is not None else 1.0)
    decay = decay * (d ** -p["beta"] if p["beta"] is not None else 1.0)
    share = p["C"] / (x + eps) ** p["gamma"] if p["C"] is not None else 0.0
    return p["E"] + decay + share


def _law_share(target: str, r: Any) -> np.ndarray:
    """The share variable of the law: r for the domain loss, the general share 1 - r for the general loss."""
    r = np.asarray(r, dtype=float)
    return r if target == "domain" else 1.0 - r


@dataclasses.dataclass
class DcptFit:
    """A fitted D-CPT law for one target loss ("domain" or "general").

    ``None`` parameters were not identifiable; ``notes`` says why. ``fixed_r`` / ``fixed_D``: the one
    domain share / budget every point had (then the fit predicts only there), else None. ``B`` is per
    D in units of ``tokens_unit``. ``residuals``: measured - fitted loss, in point order.
    ``r_range`` / ``D_range``: the measured span, to tell prediction from extrapolation.
    """

    target: str
    E: float
    B: float
    C: float | None
    eta: float | None
    beta: float | None
    gamma: float | None
    eps: float
    tokens_unit: float
    fixed_r: float | None
    fixed_D: float | None
    r_range: list[float]
    D_range: list[float]
    rmse: float
    r2: float | None
    residuals: list[float]
    n_points: int
    n_params: int
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def params(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in PARAMS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DcptFit":
        if not isinstance(data, dict):
            raise LawFitError(f"a D-CPT fit must be a JSON object, got {type(data).__name__}")
        fit = fit_from_dict(cls, data)
        if fit.target not in ("domain", "general"):
            raise LawFitError(f"target must be 'domain' or 'general', got {fit.target!r}")
        return fit


def loss_of(p: DcptPoint, target: str) -> float | None:
    """The point's domain or general loss (None when the general loss was not measured)."""
    return p.loss if target == "domain" else p.general_loss


def fit_dcpt(points: Iterable[DcptPoint], target: str = "domain", *, eps: float = DEFAULT_EPS,
             tokens_unit: float | None = None) -> DcptFit:
    """Fit the D-CPT law to the domain loss (``target="domain"``) or the general loss (``"general"``).

    Non-linear least squares on the loss (scipy's ``least_squares``, bounded: E, B, C, eta, beta,
    gamma >= 0; B and C are fitted as logs) from 18 deterministic starting exponent triples, each with
    E, B, C set by non-negative linear least squares; the lowest cost wins. The general fit uses the
    points that carry ``general_loss``. With all points at one share, eta/C/gamma are None and E, B
    absorb the share terms; with all points at one budget, beta is None and B absorbs D^-beta.
    """
    from scipy.optimize import least_squares, nnls

    check(target in ("domain", "general"), f"target must be 'domain' or 'general', got {target!r}")
    check(0 < eps < 1, f"eps must be in (0, 1), got {eps}")
    pts = [p if isinstance(p, DcptPoint) else DcptPoint.from_dict(p) for p in points]
    pts = [p for p in pts if loss_of(p, target) is not None]
    if not pts:
        raise LawFitError(f"no point has a {target} loss" + ("; add general_loss (replay_val_loss)"
                                                              if target == "general" else ""))
    D = np.array([p.D for p in pts])
    r = np.array([p.r for p in pts])
    y = np.array([loss_of(p, target) for p in pts])
    if tokens_unit is None:
        tokens_unit = 10.0 ** round(float(np.mean(np.log10(D))))
    check(tokens_unit > 0, f"tokens_unit must be positive, got {tokens_unit}")
    x, d = _law_share(target, r), D / tokens_unit

    # Which parameters the data can identify at all (the rest are None, their effect folded into E/B).
    one_r, one_D = np.ptp(r) <= 1e-12, np.ptp(D) <= 1e-9 * D.max()
    if one_r and one_D:
        raise LawFitError(f"every point is at D={D[0]:g}, r={r[0]:g}: measure several budgets and shares")
    active = [n for n in PARAMS if not (one_r and n in ("eta", "C", "gamma")) and not (one_D and n == "beta")]
    if len(pts) < len(active):
        raise LawFitError(f"{len(pts)} point(s) with a {target} loss for {len(active)} free parameters "
                          f"({', '.join(active)}): add measured points (more budgets D or shares r)")

    def unpack(v: np.ndarray) -> dict[str, float | None]:
        p = dict.fromkeys(PARAMS)
        for name, value in zip(active, v):
            p[name] = math.exp(value) if name in _LOG else float(value)
        return p

    def residuals(v: np.ndarray) -> np.ndarray:
        return _law(unpack(v), x, d, eps) - y

    lo = np.array([_BOUNDS[n][0] for n in active])
    hi = np.array([_BOUNDS[n][1] for n in active])
    exps = [n for n in ("eta", "beta", "gamma") if n in active]
    floor = 1e-6 * float(y.mean())  # B, C start here when the linear step sets them to 0 (their logs must exist)
    best = None
    for start in itertools.product(*(_STARTS[n] for n in exps)):
        p = dict.fromkeys(PARAMS) | dict(zip(exps, start)) | {"E": 1.0, "B": 1.0, "C": 1.0 if "C" in active else None}
        cols = [np.ones_like(y), _law(p | {"E": 0.0, "C": None}, x, d, eps)]  # (n,) each: 1, the B term, the C term
        if "C" in active:
            cols.append(_law(p | {"E": 0.0, "B": 0.0}, x, d, eps))
        coef, _ = nnls(np.column_stack(cols), y)
        p |= {"E": coef[0], "B": max(coef[1], floor), "C": max(coef[2], floor) if "C" in active else None}
        v0 = np.array([math.log(p[n]) if n in _LOG else p[n] for n in active])
        res = least_squares(residuals, np.clip(v0, lo, hi), bounds=(lo, hi), x_scale="jac", max_nfev=2000)
        if best is None or res.cost < best.cost - 1e-15:
            best = res
    params = unpack(best.x)
    yhat = _law(params, x, d, eps)
    notes = _identifiability_notes(active, params, best, x, d, y, eps, one_r, one_D, r, D, tokens_unit)
    return DcptFit(
        target=target, **params, eps=float(eps), tokens_unit=float(tokens_unit),
        fixed_r=float(r[0]) if one_r else None, fixed_D=float(D[0]) if one_D else None,
        r_range=[float(r.min()), float(r.max())], D_range=[float(D.min()), float(D.max())],
        rmse=float(np.sqrt(np.mean((y - yhat) ** 2))), r2=r2(y, yhat), residuals=(y - yhat).tolist(),
        n_points=len(pts), n_params=len(active), notes=notes)


def _identifiability_notes(active, params, res, x, d, y, eps, one_r, one_D, r, D, unit) -> dict[str, str]:
    """What the fit cannot vouch for, one note per parameter (the first reason found wins)."""
    notes: dict[str, str] = {}

    def note(name: str, text: str) -> None:
        notes.setdefault(name, text)

    if one_r:
        for name in ("eta", "C", "gamma"):
            note(name, f"not identifiable: every point has r={r[0]:g}; the fit predicts only at that share")
        note("E", f"includes the share term C/(r+eps)^gamma at r={r[0]:g}")
        note("B", f"includes r^eta at r={r[0]:g}")
    if one_D:
        note("beta", f"not identifiable: every point has D={D[0]:g}; the fit predicts only at that budget")
        note("B", f"includes 1/D^beta at D={D[0]:g}")
    if not one_r and len(np.unique(r)) < 3:
        for name in ("E", "C", "gamma"):
            note(name, "only two shares measured: E, C and gamma are not separately identifiable "
                       "(three parameters, two levels); predictions at other shares are unreliable")
    # A term that never matters carries no information about its exponent(s).
    scale = float(np.mean(y))
    decay = _law(params | {"E": 0.0, "C": None}, x, d, eps)
    if float(np.max(decay)) < 1e-4 * scale:
        for name in ("B", "eta", "beta"):
            if name in active:
                note(name, "the B r^eta / D^beta term is < 0.01% of the loss at every point: B, eta and beta "
                           "are not determined (the loss does not fall with D in these points)")
    if "C" in active and float(np.max(_law(params | {"E": 0.0, "B": 0.0}, x, d, eps))) < 1e-4 * scale:
        for name in ("C", "gamma"):
            note(name, "the C / (r+eps)^gamma term is < 0.01% of the loss at every point: C and gamma are not determined")
    for name in ("eta", "beta", "gamma"):
        if name in active:
            lo, hi = _BOUNDS[name]
            if params[name] >= hi - 1e-6:
                note(name, f"at its upper bound {hi:g}: the data want a steeper term than the law allows; unreliable")
            elif params[name] <= lo + 1e-9:
                note(name, "at its lower bound 0: no dependence on this variable in the fitted term")
    if params["E"] <= 1e-9 * scale:
        note("E", "at its lower bound 0: no loss floor beyond the other terms")
    # Flat directions and standard errors from the Jacobian at the optimum (internal parameters).
    J = res.jac  # (n, p): d residual / d (E, log B, log C, eta, beta, gamma), active ones only
    norms = np.linalg.norm(J, axis=0)
    if np.all(norms > 0):
        _, sv, vt = np.linalg.svd(J / norms, full_matrices=False)
        if sv[-1] < 1e-7 * sv[0]:
            flat = [active[i] for i in np.flatnonzero(np.abs(vt[-1]) > 0.3)]
            for name in flat:
                note(name, f"not separately determined from {', '.join(n for n in flat if n != name) or 'the rest'} "
                           "by these points (a flat direction of the fit)")
        elif len(y) > len(active):
            s2 = 2.0 * res.cost / (len(y) - len(active))  # residual variance
            Jn = J / norms  # unit columns keep the inverse well conditioned
            se = np.sqrt(np.maximum(np.diag(np.linalg.inv(Jn.T @ Jn)) * s2, 0.0)) / norms
            for name, err in zip(active, se):
                rel = err if name in _LOG else err / max(abs(params[name]), 1e-300)
                if rel > 0.5:
                    note(name, f"poorly determined by these points (1-sd uncertainty ~{100 * rel:.0f}%)")
    if len(y) == len(active):
        note("fit", "as many points as parameters: the law passes through every point, so rmse says nothing")
    return notes


def predict_dcpt(fit: DcptFit, D: Any, r: Any) -> Any:
    """Predicted loss (the fit's target) after D tokens at domain share r; broadcasts, a float for scalars."""
    D, r = np.asarray(D, dtype=float), np.asarray(r, dtype=float)
    if np.any(~(D > 0)):
        raise LawFitError("D must be positive (training tokens)")
    if np.any(~(r > 0) | (r > 1)):
        raise LawFitError("r must be in (0, 1] (the domain share of the mixture)")
    if fit.fixed_r is not None and not np.allclose(r, fit.fixed_r, rtol=0, atol=1e-9):
        raise LawFitError(f"the {fit.target} fit saw only r={fit.fixed_r:g} (eta, C, gamma not identifiable): "
                          "predict at that share, or measure several shares")
    if fit.fixed_D is not None and not np.allclose(D, fit.fixed_D, rtol=1e-9, atol=0):
        raise LawFitError(f"the {fit.target} fit saw only D={fit.fixed_D:g} (beta not identifiable): "
                          "predict at that budget, or measure several budgets")
    out = _law(fit.params(), _law_share(fit.target, r), D / fit.tokens_unit, fit.eps)
    out = np.asarray(out, dtype=float)
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- choosing the share
def _extrapolation(fit: DcptFit, D: float, r: float) -> list[str]:
    out = []
    lo, hi = fit.r_range
    if not lo - 1e-9 <= r <= hi + 1e-9:
        out.append(f"{fit.target} law: r={r:.3f} is outside the measured shares [{lo:g}, {hi:g}] (extrapolated)")
    lo, hi = fit.D_range
    if not lo * (1 - 1e-9) <= D <= hi * (1 + 1e-9):
        out.append(f"{fit.target} law: D={D:.3g} is outside the measured budgets [{lo:.3g}, {hi:.3g}] (extrapolated)")
    return out


def propose_share(domain_fit: DcptFit, D: float, general_fit: DcptFit | None = None,
                  max_general_increase: float = 0.05, grid: Sequence[float] | np.ndarray | None = None) -> dict[str, Any]:
    """The domain share r to train with at budget D, chosen on ``grid`` (default 0.001, 0.002, ..., 1).

    Domain fit only: the r minimising the predicted domain loss at D.

    With a general fit too, forgetting is bounded: let g_min be the lowest predicted general loss over
    the grid at D (usually at the smallest r: most replay). Admissible shares are those whose predicted
    general loss is at most (1 + max_general_increase) * g_min; among them, the one with the lowest
    predicted domain loss. The rule is relative to what is reachable at this budget, so it needs no
    measurement of the model before continued pretraining. The result reports the chosen share, both
    predicted losses there, the unconstrained domain optimum, the limit, whether it was binding, the
    reason in words and caveats (fit notes; extrapolation beyond the measured shares or budgets).
    """
    if domain_fit.target != "domain":
        raise LawFitError(f"the first fit must be a domain fit, got a {domain_fit.target} fit")
    if general_fit is not None and general_fit.target != "general":
        raise LawFitError(f"general_fit must be a general fit, got a {general_fit.target} fit")
    D = number("D", D)
    check(D > 0, f"the budget D must be positive, got {D:g}")
    check(max_general_increase >= 0, f"max_general_increase must be >= 0, got {max_general_increase}")
    grid = DEFAULT_GRID if grid is None else np.unique(np.asarray(grid, dtype=float))
    check(grid.size > 0 and bool(np.all((grid > 0) & (grid <= 1))), "the grid of shares must be non-empty, in (0, 1]")
    for fit in (domain_fit, general_fit):
        if fit is not None and fit.fixed_r is not None:
            raise LawFitError(f"the {fit.target} fit saw only r={fit.fixed_r:g}, so it cannot compare shares; "
                              "measure at least three shares" + (" (or propose without the general fit)"
                                                                 if fit is general_fit else ""))

    dom = predict_dcpt(domain_fit, D, grid)  # (G,) predicted domain loss per candidate share
    i_free = int(np.argmin(dom))
    out: dict[str, Any] = {"D": D, "unconstrained_share": float(grid[i_free]),
                           "unconstrained_domain_loss": float(dom[i_free]),
                           "max_general_increase": float(max_general_increase)}
    if general_fit is None:
        i = i_free
        reason = f"r = {grid[i]:.3f} minimises the predicted domain loss at D = {D:.3g}"
        out |= {"general_loss": None, "general_loss_min": None, "general_min_share": None,
                "general_loss_limit": None, "constraint_active": False}
    else:
        gen = predict_dcpt(general_fit, D, grid)
        i_gen = int(np.argmin(gen))
        limit = (1.0 + max_general_increase) * float(gen[i_gen])
        ok = gen <= limit * (1 + 1e-12)
        i = int(np.flatnonzero(ok)[np.argmin(dom[ok])])
        active = i != i_free
        pct = f"{100 * max_general_increase:g}%"
        if active:
            reason = (f"the domain optimum r = {grid[i_free]:.3f} would raise the predicted general loss to "
                      f"{gen[i_free]:.4f}, above the limit {limit:.4f} ({pct} over its minimum {gen[i_gen]:.4f} "
                      f"at r = {grid[i_gen]:.3f}); r = {grid[i]:.3f} is the lowest domain loss within the limit")
        else:
            reason = (f"the domain optimum r = {grid[i]:.3f} keeps the predicted general loss within {pct} of its "
                      f"minimum ({gen[i]:.4f} <= {limit:.4f})")
        out |= {"general_loss": float(gen[i]), "general_loss_min": float(gen[i_gen]),
                "general_min_share": float(grid[i_gen]), "general_loss_limit": limit, "constraint_active": active}
    r = float(grid[i])
    if i == grid.size - 1 and r == 1.0:
        reason += " (r = 1: at this budget the law gains nothing from replay)"
    elif i == 0:
        reason += " (the smallest share on the grid: check the fit, the law wants almost no domain data)"
    caveats = []
    for fit in (domain_fit, general_fit):
        if fit is not None:
            caveats += [f"{fit.target} fit: {k}: {v}" for k, v in fit.notes.items()]
            caveats += _extrapolation(fit, D, r)
    if general_fit is not None and out["general_min_share"] != r:
        lo, hi = general_fit.r_range
        if not lo - 1e-9 <= out["general_min_share"] <= hi + 1e-9:
            caveats.append(f"the general-loss minimum that sets the limit (r={out['general_min_share']:.3f}) is "
                           f"outside the measured shares [{lo:g}, {hi:g}] (extrapolated)")
    out |= {"share": r, "domain_loss": float(dom[i]), "reason": reason, "caveats": caveats,
            "grid": [float(grid[0]), float(grid[-1]), int(grid.size)]}
    return out


