"""What ``laws fit`` and ``laws dcpt`` compute, print and draw: one report per law, its text form, its PNG."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from ...config import StageConfig, check
from ...errors import LawFitError, require
from .common import fmt, save_figure
from .compression import (
    CriticalRatio, HoldoutResult, LawPoint, QualityLawFit, Results, RuntimeLawFit, as_points, critical_ratio,
    fit_quality_law, fit_runtime_law, holdout_check, predict, select_method, with_dense_points,
)
from .dcpt import DEFAULT_EPS, PARAMS, DcptFit, DcptPoint, loss_of, fit_dcpt, predict_dcpt, propose_share


# ----------------------------------------------------------------------------- compression laws
@dataclasses.dataclass
class LawsConfig(StageConfig):
    """Settings of ``laws fit``.

    ``target_ratio``: the recovery target sigma (quality at most sigma x dense; at least, for accuracy);
    None = 1.1 for loss-like metrics, 0.9 for higher-is-better ones. ``holdout``: ratios to refit
    without and predict. ``tokens_unit``: tokens per unit of D (None = the results file's, else 1).
    """

    stage: ClassVar[str] = "laws"
    method: str | None = None
    target_ratio: float | None = None
    holdout: tuple[float, ...] = ()
    tokens_unit: float | None = None
    include_dense: bool = True  # add each dense model as a measured point at r = 0 (L = L0, T = T0)

    def validate(self) -> None:
        check(self.target_ratio is None or self.target_ratio > 0,
              f"target_ratio must be positive, got {self.target_ratio}")
        check(all(0 <= h < 1 for h in self.holdout), f"holdout ratios must be in [0, 1), got {list(self.holdout)}")
        check(self.tokens_unit is None or self.tokens_unit > 0, f"tokens_unit must be positive, got {self.tokens_unit}")


@dataclasses.dataclass
class LawsReport:
    """Everything ``laws fit`` computes for one method."""

    method: str | None
    points: list[LawPoint]
    quality: QualityLawFit
    runtime: RuntimeLawFit | None
    critical: list[CriticalRatio]
    holdout: list[HoldoutResult]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "n_points": len(self.points),
                "quality": self.quality.to_dict(),
                "runtime": self.runtime.to_dict() if self.runtime else None,
                "critical": [c.to_dict() for c in self.critical],
                "holdout": [h.to_dict() for h in self.holdout],
                "points": [p.to_dict() for p in self.points]}



def analyse(results: Results, config: LawsConfig | None = None) -> LawsReport:
    """Fit both laws to one method's points; critical ratio for each dense value; holdout checks."""
    config = config or LawsConfig()
    points = select_method(as_points(results.points), config.method)
    if config.include_dense:
        points = with_dense_points(points)
    unit = config.tokens_unit or results.tokens_unit
    quality = fit_quality_law(points, results.metric, results.higher_is_better, tokens_unit=unit)
    runtime = None
    if any(p.T is not None for p in points):
        runtime = fit_runtime_law(points, results.time_metric, results.time_higher_is_better)
    sigma = config.target_ratio or (0.9 if quality.higher_is_better else 1.1)
    critical = [critical_ratio(quality, sigma, L0) for L0 in sorted({p.L0 for p in points})]
    holdout = [holdout_check(points, h, tokens_unit=unit) for h in config.holdout]
    method = config.method or next((p.method for p in points if p.method), None)
    return LawsReport(method, points, quality, runtime, critical, holdout)


def format_report(report: LawsReport) -> str:
    """A short human-readable summary of a :class:`LawsReport`."""
    q, rt = report.quality, report.runtime
    better = {True: "higher is better", False: "lower is better", None: "direction unknown"}
    unit = "" if q.tokens_unit == 1 else f", D in units of {q.tokens_unit:g} tokens"
    lines = [f"compression laws{f' for {report.method}' if report.method else ''}: {q.n_points} points, "
             f"{q.metric} ({better[q.higher_is_better]}{unit})",
             "quality  L = L0^alpha (1+r)^beta (1+1/(D+1))^gamma"]
    for name in ("alpha", "beta", "gamma"):
        note = q.notes.get(name, "")
        lines.append(f"  {name:<6} {fmt(getattr(q, name)):>9}   {note}".rstrip())
    lines.append(f"  R^2    {fmt(q.r2_log)} (log)  {fmt(q.r2)} (raw), {q.n_params} free parameters")
    if rt is not None:
        lines.append(f"runtime  T = T0 (1+r)^delta   ({rt.metric}, {better[rt.higher_is_better]})")
        speed = rt.speedup(0.3)
        lines.append(f"  delta  {rt.delta:>9.4f}   speed-up at r=0.3: {fmt(speed, '.2f')}x")
        lines.append(f"  R^2    {fmt(rt.r2_log)} (log)  {fmt(rt.r2)} (raw), {rt.n_points} timed points")
    for c in report.critical:
        value = "n/a" if c.r_crit is None else f"{c.r_crit:.3f}"
        lines.append(f"critical ratio (L0={c.L0:.4g}, sigma={c.sigma:g}): r_crit = {value}  ({c.note})")
    for h in report.holdout:
        rt_err = "" if h.runtime_max_rel_error is None else f", runtime {100 * h.runtime_max_rel_error:.2f}%"
        lines.append(f"holdout r={h.ratio:g}: max relative error {100 * h.max_rel_error:.2f}% "
                     f"over {len(h.quality)} point(s){rt_err}")
    return "\n".join(lines)



def plot_fit(points: Iterable[LawPoint], fit: QualityLawFit, runtime_fit: RuntimeLawFit | None,
             path: str | Path, *, critical: CriticalRatio | None = None) -> Path:
    """PNG of measured points and fitted curves vs r: quality (left), runtime T/T0 (right, if timed)."""
    require("matplotlib", "compress")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure

    pts = as_points(points)
    timed = [p for p in pts if p.T is not None]
    ncols = 2 if runtime_fit is not None and timed else 1
    fig = Figure(figsize=(5.5 * ncols, 4.2))
    FigureCanvasAgg(fig)
    r_max = min(0.99, max(p.r for p in pts) * 1.15 + 0.02)
    if critical is not None and critical.r_crit is not None and critical.r_crit < 1:
        r_max = max(r_max, min(0.99, critical.r_crit * 1.1))
    grid = np.linspace(0.0, r_max, 120)

    ax = fig.add_subplot(1, ncols, 1)
    groups = sorted({(p.L0, p.D) for p in pts})
    colors = [f"C{i % 10}" for i in range(len(groups))]
    for (L0, D), color in zip(groups, colors):
        sel = [p for p in pts if (p.L0, p.D) == (L0, D)]
        label = f"L0={L0:.3g}, D={D / fit.tokens_unit:g}" if len(groups) <= 10 else None
        ax.scatter([p.r for p in sel], [p.L for p in sel], color=color, s=18, label=label)
        ax.plot(grid, predict(fit, grid, D, L0), color=color, lw=1.2)
    if fit.gamma is not None:
        for L0 in sorted({p.L0 for p in pts})[:3]:
            ax.plot(grid, predict(fit, grid, math.inf, L0), color="gray", ls="--", lw=1,
                    label=f"D -> inf, L0={L0:.3g}")
    if critical is not None:
        ax.axhline(critical.sigma * critical.L0, color="red", lw=0.8, ls=":", label=f"{critical.sigma:g} x L0")
        if critical.r_crit is not None and critical.r_crit < 1:
            ax.axvline(critical.r_crit, color="red", lw=0.8, label=f"r_crit={critical.r_crit:.3f}")
    ax.set_xlabel("compression ratio r")
    ax.set_ylabel(fit.metric)
    ax.set_title(f"quality law (R^2 log {fmt(fit.r2_log, '.3f')})", fontsize=10)
    ax.legend(fontsize=7)

    if ncols == 2:
        ax = fig.add_subplot(1, ncols, 2)
        ax.scatter([p.r for p in timed], [p.T / p.T0 for p in timed], s=18, color="C0", label="measured")
        ax.plot(grid, (1.0 + grid) ** runtime_fit.delta, color="C0", lw=1.2,
                label=f"(1+r)^{runtime_fit.delta:.3f}")
        ax.set_xlabel("compression ratio r")
        ax.set_ylabel(f"{runtime_fit.metric} / dense")
        ax.set_title(f"runtime law (R^2 log {fmt(runtime_fit.r2_log, '.3f')})", fontsize=10)
        ax.legend(fontsize=7)

    return save_figure(fig, path)


# ----------------------------------------------------------------------------- D-CPT law
@dataclasses.dataclass
class DcptReport:
    """What ``laws dcpt`` computes: both fits (general when measured and fittable) and the proposal."""

    points: list[DcptPoint]
    domain: DcptFit
    general: DcptFit | None
    general_skipped: str | None  # why there is no general fit, or why it does not constrain the proposal
    proposal: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain.to_dict(), "general": self.general.to_dict() if self.general else None,
                "general_skipped": self.general_skipped, "proposal": self.proposal,
                "points": [p.to_dict() for p in self.points]}


def analyse_dcpt(points: Sequence[DcptPoint], budget: float | None = None, max_general_increase: float = 0.05,
                 *, eps: float = DEFAULT_EPS) -> DcptReport:
    """Fit the domain law (and the general law when general losses are there), propose r at ``budget``.

    ``budget`` defaults to the largest D measured. A general fit that cannot be made (too few points
    with a general loss) or cannot compare shares (one share only) is reported, not used.
    """
    points = list(points)
    domain = fit_dcpt(points, "domain", eps=eps)
    general, skipped = None, None
    n_general = sum(p.general_loss is not None for p in points)
    if n_general == 0:
        skipped = "no general (replay) losses measured"
    else:
        try:
            general = fit_dcpt(points, "general", eps=eps, tokens_unit=domain.tokens_unit)
        except LawFitError as e:
            skipped = f"not fitted: {e}"
        else:
            if general.fixed_r is not None:
                skipped = f"measured at one share only (r={general.fixed_r:g}): it cannot constrain the share"
    budget = max(p.D for p in points) if budget is None else budget
    usable = general if general is not None and general.fixed_r is None else None
    proposal = propose_share(domain, budget, usable, max_general_increase)
    return DcptReport(points, domain, general, skipped, proposal)


def format_dcpt(report: DcptReport) -> str:
    """A short table of the fitted parameters, the fit quality and the proposed share."""
    dom, gen, prop = report.domain, report.general, report.proposal
    shares = sorted({p.r for p in report.points})
    lines = [f"D-CPT law: {len(report.points)} points, {len(shares)} share(s) in [{shares[0]:g}, {shares[-1]:g}], "
             f"D in [{dom.D_range[0]:.3g}, {dom.D_range[1]:.3g}] tokens",
             f"L(D, r) = E + B r^eta / D^beta + C / (r + eps)^gamma   (D in units of {dom.tokens_unit:g} tokens, "
             f"eps = {dom.eps:g} fixed; the general law uses 1 - r)",
             f"{'':9}" + "".join(f"{name:>10}" for name in (*PARAMS, "rmse", "R^2")) + f"{'points':>8}"]
    for fit in (dom, gen):
        if fit is None:
            continue
        values = [fmt(getattr(fit, n), ".4g") for n in PARAMS] + [fmt(fit.rmse, ".4g"), fmt(fit.r2, ".4f")]
        lines.append(f"{fit.target:<9}" + "".join(f"{v:>10}" for v in values) + f"{fit.n_points:>8}")
    for fit in (dom, gen):
        grouped: dict[str, list[str]] = {}  # one line per distinct note, naming every parameter it is about
        for name, text in (fit.notes.items() if fit is not None else ()):
            grouped.setdefault(text, []).append(name)
        lines += [f"  {fit.target} {', '.join(names)}: {text}" for text, names in grouped.items()]
    if report.general_skipped:
        lines.append(f"  general: {report.general_skipped}")
    general = "" if prop["general_loss"] is None else f", general loss {prop['general_loss']:.4f}"
    lines.append(f"proposed domain share at D = {prop['D']:.3g} tokens: r = {prop['share']:.3f} "
                 f"(predicted domain loss {prop['domain_loss']:.4f}{general})")
    lines.append(f"  {prop['reason']}")
    lines += [f"  caveat: {c}" for c in prop["caveats"] if not c.startswith(("domain fit:", "general fit:"))]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plot
def plot_dcpt(points: Iterable[DcptPoint], fit: DcptFit, path: str | Path, *,
              general_fit: DcptFit | None = None) -> Path:
    """PNG of loss vs D (log scale), measured points and one fitted curve per share; a general panel if given."""
    require("matplotlib", "compress")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure

    pts = list(points)
    fits = [f for f in (fit, general_fit) if f is not None]
    fig = Figure(figsize=(5.5 * len(fits), 4.2))
    FigureCanvasAgg(fig)
    for k, f in enumerate(fits, 1):
        ax = fig.add_subplot(1, len(fits), k)
        mine = [p for p in pts if loss_of(p, f.target) is not None]
        shares = sorted({p.r for p in mine})
        lo, hi = f.D_range
        grid = np.geomspace(lo / 1.5, hi * 1.5, 100) if f.fixed_D is None else np.array([f.fixed_D])
        for i, r in enumerate(shares):
            color = f"C{i % 10}"
            sel = [p for p in mine if p.r == r]
            ax.scatter([p.D for p in sel], [loss_of(p, f.target) for p in sel], color=color, s=16,
                       label=f"r={r:g}" if len(shares) <= 12 else None)
            ax.plot(grid, np.broadcast_to(predict_dcpt(f, grid, r), grid.shape), color=color, lw=1.2,
                    marker="x" if grid.size == 1 else None)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens D")
        ax.set_ylabel(f"{f.target} validation loss")
        ax.set_title(f"D-CPT law, {f.target} loss (R^2 {fmt(f.r2, '.3f')})", fontsize=10)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
