"""`build`: a recipe to a bundle in one command (options from BuildConfig)."""
from __future__ import annotations

import click

from ._options import config_option

BuildConfig = "edge_downscale.pipeline.build:BuildConfig"  # imports numpy: defaults read lazily


@click.command("build", short_help="Compress and export a recipe into a bundle (cached, resumable).")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--out", default="", type=click.Path(file_okay=False),
              help="The bundle directory to write (required unless --dry-run).")
@config_option(BuildConfig, "profile", type=str, show_default=False, help="A profile of the recipe (its `profiles:` section), e.g. quick.")
@config_option(BuildConfig, "work_dir", type=click.Path(file_okay=False), show_default=False,
               help="Where each task's output is cached by content  [default: ~/.cache/edge-downscale/build].")
@config_option(BuildConfig, "device", type=click.Choice(["auto", "cpu", "cuda"]), show_default=False,
               help="Device of the training stages (overrides the recipe's).")
@click.option("--dry-run", is_flag=True, help="Print the plan (tasks to run or reuse), estimated time, disk and "
                                              "the compression law's predicted quality; run nothing.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the summary (or the dry-run plan) as JSON here.")
@click.option("--quiet", is_flag=True, help="No per-stage progress bars.")
def build_cmd(recipe, out, profile, work_dir, device, dry_run, overwrite, json_path, quiet):
    """Build RECIPE (a YAML file, see `edge-downscale recipe schema`) into the bundle OUT.

    Runs corpus build -> data pruning -> teacher adaptation / pruning / recovery (in the recipe's
    order) -> export with the parity gate -> bundle (router, cascade calibration, held-out eval
    data). Each task's output is cached under --work-dir by a hash of its inputs and settings:
    a rerun reuses finished tasks, a changed setting reruns only what depends on it, and a killed
    build resumes where it stopped (training from its last checkpoint). Training runs on several
    GPUs with `accelerate launch -m edge_downscale.cli build ...`.
    """
    from .._io import write_result
    from ..pipeline import BuildConfig, build
    from ..pipeline.report import format_plan, format_summary

    config = BuildConfig(recipe=recipe, out=out, profile=profile, work_dir=work_dir, device=device, dry_run=dry_run,
                         overwrite=overwrite)
    result = build(config, echo=lambda m: click.echo(m, err=True), progress=not quiet)
    click.echo(format_plan(result) if dry_run else format_summary(result))
    if json_path:
        write_result(json_path, result)
