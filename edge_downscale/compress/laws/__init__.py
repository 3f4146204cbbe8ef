"""Scaling laws fitted to measured runs: the compression law (``compression``: quality and runtime vs
compression ratio, Sengupta et al. 2025) and the D-CPT law (``dcpt``: continual-pretraining loss vs
budget and domain share, Que et al. 2024). ``common`` holds what both share (points, fit helpers);
``report`` what the ``laws fit`` / ``laws dcpt`` commands print and draw.
"""
from .compression import (
    CriticalRatio, HoldoutResult, LawPoint, QualityLawFit, Results, RuntimeLawFit, critical_ratio,
    fit_quality_law, fit_runtime_law, holdout_check, load_results, predict, predict_runtime, save_results,
    select_method, with_dense_points,
)
from .dcpt import (
    DEFAULT_GRID, DcptFit, DcptPoint, fit_dcpt, load_dcpt_points, predict_dcpt, propose_share, save_dcpt_points,
)
from .report import (
    DcptReport, LawsConfig, LawsReport, analyse, analyse_dcpt, format_dcpt, format_report, plot_dcpt, plot_fit,
)

__all__ = [
    "LawPoint", "Results", "load_results", "save_results", "select_method", "with_dense_points",
    "QualityLawFit", "fit_quality_law", "predict",
    "RuntimeLawFit", "fit_runtime_law", "predict_runtime",
    "CriticalRatio", "critical_ratio", "HoldoutResult", "holdout_check",
    "LawsConfig", "LawsReport", "analyse", "format_report", "plot_fit",
    "DcptPoint", "load_dcpt_points", "save_dcpt_points",
    "DcptFit", "fit_dcpt", "predict_dcpt", "propose_share", "DEFAULT_GRID",
    "DcptReport", "analyse_dcpt", "format_dcpt", "plot_dcpt",
]
