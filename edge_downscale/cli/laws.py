"""`laws fit/dcpt`: compression laws and the D-CPT mixture law fitted to measured results."""
from __future__ import annotations

import click

from ._options import _Group


@click.group(cls=_Group, short_help="Fit compression laws to measured results.")
def laws():
    """Fit compression laws (quality and runtime vs compression ratio) to measured results."""


@laws.command("fit", short_help="Fit quality and runtime laws to a RESULTS file.")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--method", default=None, help="Fit only the points of this method (required when several).")
@click.option("--target", type=float, default=None,
              help="Recovery target sigma: quality at most sigma x dense (default 1.1; 0.9 for accuracy).")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the fits.")
@click.option("--holdout", type=float, multiple=True,
              help="Refit without the points at this ratio and report the prediction error (repeatable).")
@click.option("--tokens-unit", type=float, default=None, help="Tokens per unit of D (default: the file's, else 1).")
@click.option("--no-dense", is_flag=True, help="Do not add each dense model as a measured point at r = 0.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the fit as JSON.")
def laws_fit(results, method, target, plot_out, holdout, tokens_unit, no_dense, json_out):
    """Fit the quality and runtime compression laws to RESULTS (a JSON file).

    Quality L = L0^alpha (1+r)^beta (1+1/(D+1))^gamma; runtime T = T0 (1+r)^delta. RESULTS:
    {"metric": "bpb", "points": [{"method": "prunenet", "ratio": 0.2, "tokens": 0, "dense": 0.95,
    "value": 1.05, "dense_time": 0.010, "time": 0.008}, ...]}; other top-level keys are ignored.
    """
    from .._io import write_result
    from ..compress.laws import LawsConfig, analyse, format_report, load_results, plot_fit

    config = LawsConfig(method=method, target_ratio=target, holdout=tuple(holdout), tokens_unit=tokens_unit,
                        include_dense=not no_dense)
    report = analyse(load_results(results), config)
    click.echo(format_report(report))
    if plot_out:
        plot_fit(report.points, report.quality, report.runtime, plot_out,
                 critical=report.critical[0] if len(report.critical) == 1 else None)
        click.echo(f"wrote {plot_out}", err=True)
    if json_out:
        write_result(json_out, report.to_dict())
        click.echo(f"wrote {json_out}", err=True)


@laws.command("dcpt", short_help="Fit the D-CPT mixture law and propose a domain share.")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--budget", type=float, default=None, metavar="TOKENS",
              help="Training tokens D to propose the share for (default: the largest D measured).")
@click.option("--max-general-increase", type=float, default=0.05, show_default=True,
              help="Tolerated relative rise of the predicted general loss over its best share "
                   "(0.05 = 5%; used when general losses exist).")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the fits.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the fits as JSON.")
def laws_dcpt(sources, budget, max_general_increase, plot_out, json_out):
    """Fit the D-CPT law to continual-pretraining runs and propose the domain share r for a budget.

    The D-CPT law (Que et al. 2024) predicts the domain validation loss after D training tokens of a
    mixture with domain share r (the rest general replay text): L(D, r) = E + B r^eta / D^beta +
    C / (r + eps)^gamma, with eps fixed at 0.01. The share term falls as r grows, the budget term falls
    with D, so the best r depends on the budget. The same form, with the general share 1 - r in place
    of r, is fitted to the general (replay) loss when it is measured; the proposal then keeps the
    predicted general loss within --max-general-increase of its best value at that budget.

    SOURCES are points files ({"points": [{"tokens": D, "share": r, "loss": L, "general_loss": G}, ...]})
    or training-run directories (run.json with "domain_share", train_log.jsonl with eval lines).
    """
    from .._io import write_result
    from ..compress.laws import analyse_dcpt, format_dcpt, load_dcpt_points, plot_dcpt

    report = analyse_dcpt(load_dcpt_points(sources), budget, max_general_increase)
    click.echo(format_dcpt(report))
    if plot_out:
        plot_dcpt(report.points, report.domain, plot_out, general_fit=report.general)
        click.echo(f"wrote {plot_out}", err=True)
    if json_out:
        write_result(json_out, report.to_dict())
        click.echo(f"wrote {json_out}", err=True)
