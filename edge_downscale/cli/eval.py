"""`eval`: bits-per-byte and multiple-choice accuracy per domain (options from EvalConfig)."""
from __future__ import annotations

import click

from ..config import EvalConfig
from ._options import config_option


@click.command("eval", short_help="Bits-per-byte and multiple choice per domain.")
@click.argument("model")
@click.option("--domains", default="code,docs,legal", show_default=True,
              help="Comma-separated demo domains or corpus directories.")
@click.option("--backend", type=click.Choice(["torch", "llamacpp"]), default="torch", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write results as JSON.")
@config_option(EvalConfig, "max_bytes", help="Held-out bytes scored per domain.")
@config_option(EvalConfig, "mc_items", help="Multiple-choice items per domain (0 = skip).")
@config_option(EvalConfig, "max_length", help="Window length in tokens.")
@config_option(EvalConfig, "stride", help="Window stride in tokens.")
@config_option(EvalConfig, "split", choices=["test", "validation"])
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(model, domains, backend, json_out, max_bytes, mc_items, max_length, stride, split, device, quiet):
    """Score MODEL: bits-per-byte and multiple-choice accuracy per domain.

    MODEL is a registered name (see `models list`) or a path; held-out text is the test split.
    """
    from ..data import heldout_by_domain
    from ..eval import evaluate, format_table, save_results
    from ..models import open_backend

    config = EvalConfig(max_bytes=max_bytes, mc_items=mc_items, max_length=max_length, stride=stride, split=split)
    names = [d.strip() for d in domains.split(",") if d.strip()]
    if not names:
        raise click.BadParameter("give at least one domain", param_hint="--domains")
    with open_backend(model, backend, context_length=max(config.max_length, 512), device=device) as b:
        results = evaluate(b, heldout_by_domain(names, config), config, progress=not quiet, model_name=model)
    click.echo(f"{model} ({backend})")
    click.echo(format_table(results))
    if json_out:
        save_results(results, json_out)
        click.echo(f"wrote {json_out}", err=True)
