"""`bench`: measure bundles, their members and baseline models on this device (options from BenchConfig)."""
from __future__ import annotations

from pathlib import Path

import click

from ._options import config_option

_BENCH = "edge_downscale.bench:BenchConfig"  # the bench package imports numpy: defaults read lazily
DEFAULT_OUT = "bench-report"  # edge_downscale.bench.DEFAULT_OUT (a test keeps them equal)
# CLI parameter -> BenchConfig field, for the flags that set one
_FIELDS = ("rounds", "warmup", "n_prompts", "prompt_chars", "max_tokens", "max_bytes", "piece_chars", "mc_items",
           "threads", "timeout_s", "overwrite")


def resolve_baseline(ref: str) -> str | tuple[str, str]:
    """A path as given, or ``(name, cached path)`` for a registered model (pulled into the cache if needed)."""
    if Path(ref).exists():
        return ref
    from ..errors import BenchError
    from ..models.registry import REGISTRY, cached_path, pull

    spec = REGISTRY.get(ref)
    if spec is None or spec.test_only or spec.format != "gguf":
        names = ", ".join(sorted(n for n, s in REGISTRY.items() if not s.test_only))
        raise BenchError(f"baseline {ref!r}: no such file or directory, and not a registered model "
                         f"(registered: {names})")
    path = cached_path(ref)
    if path is None:
        click.echo(f"pulling {ref} into the model cache ...", err=True)
        path = pull(ref)
    return ref, str(path)


@click.command("bench", short_help="Measure bundles and models on this device (quality, speed, memory, energy).")
@click.argument("targets", nargs=-1, required=True, metavar="BUNDLE_OR_MODEL...")
@click.option("--baseline", "baselines", multiple=True, metavar="MODEL",
              help="A model to compare against: a .gguf, an export directory or a registered name "
                   "(e.g. smollm2-135m). The first is the reference of the ratios. Repeat.")
@click.option("--eval-data", type=click.Path(file_okay=False), default=None,
              help="A directory of <domain>.jsonl held-out files (default: the first bundle's eval/).")
@click.option("--out", default=DEFAULT_OUT, show_default=True, type=click.Path(), help="Report directory.")
@click.option("--quick", is_flag=True, help="The quick profile: fewer rounds, prompts, bytes and MC items "
                                            "(flags given explicitly still win).")
@config_option(_BENCH, "rounds", type=int, help="Timed rounds (one request per configuration each).")
@config_option(_BENCH, "warmup", type=int, help="Untimed rounds first.")
@config_option(_BENCH, "n_prompts", "--prompts", "n_prompts", type=int, help="Distinct held-out prompts.")
@config_option(_BENCH, "prompt_chars", type=int, help="Characters of each prompt.")
@config_option(_BENCH, "max_tokens", type=int, help="Greedy tokens per request.")
@config_option(_BENCH, "max_bytes", type=int, help="Held-out bytes scored per domain.")
@config_option(_BENCH, "piece_chars", type=int, help="Characters per scored piece (one window each).")
@config_option(_BENCH, "mc_items", type=int, help="Multiple-choice items per domain (0 = skip).")
@config_option(_BENCH, "threads", type=int, show_default=False, help="Backend threads (default: the backend's).")
@config_option(_BENCH, "timeout_s", type=float, help="Longest wait for one request of one configuration.")
@config_option(_BENCH, "overwrite", is_flag=True, show_default=False, help="Replace a non-empty --out.")
@click.option("--tune", is_flag=True,
              help="First tune the llama.cpp settings (threads, batch sizes, flash attention, mmap) of every "
                   "llama.cpp member of each BUNDLE on this device, over min(--rounds, 3) interleaved rounds of "
                   "--max-tokens greedy tokens, and write the fastest into its ensemble.json; the bench then "
                   "measures them. Every target must be a bundle. With --threads, n_threads stays at that value. "
                   "Writes tune.json into --out.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def bench_cmd(ctx, targets, baselines, eval_data, out, quick, tune, no_plots, quiet, **kw):
    """Measure each BUNDLE's members alone and under each strategy it supports, each baseline and each
    model, side by side and interleaved: bits-per-byte and multiple-choice accuracy on held-out data,
    TTFT, tokens/s, inter-token latency, peak RSS / VRAM, joules per token, file size.

    \b
    Example:
      edge-downscale bench bundle/ --baseline smollm2-135m --quick
    """
    from click.core import ParameterSource

    from ..bench import BenchConfig, run_bench
    from ..bench.report import table_rows
    from ..eval import markdown_table

    given = {k: kw[k] for k in _FIELDS if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}
    if no_plots:
        given["plots"] = False
    config = BenchConfig.quick(**given) if quick else BenchConfig.from_dict({**BenchConfig().to_dict(), **given})
    resolved = [resolve_baseline(b) for b in baselines]
    tunings = _tune(targets, config, out, quiet) if tune else None
    report = run_bench(list(targets), config, baselines=resolved, eval_data=eval_data, out=out, progress=not quiet)
    click.echo(markdown_table(table_rows(report["records"])))
    click.echo(f"wrote {Path(out) / 'report.md'} and report.json (reference: {report['bench']['reference']})", err=True)
    if tunings is not None:
        from .._io import write_result

        write_result(Path(out) / "tune.json", {"bundles": [t.to_dict() for t in tunings]})
        click.echo(f"wrote {Path(out) / 'tune.json'}", err=True)


def _tune(targets, config, out, quiet) -> list:
    """Tune every target bundle's llama.cpp members and write their options; print the table."""
    from ..bench.report import check_out
    from ..eval import markdown_table
    from ..runtime.tune import table_rows, tunable_members, tune_bundle

    for target in targets:  # every target a bundle with a llama.cpp member, before anything is measured
        tunable_members(target)
    check_out(Path(out), config.overwrite)  # the bench would refuse --out only after the tuning
    progress = None if quiet else (lambda m: click.echo(f"tune {m}", err=True))
    fixed = {"n_threads": config.threads} if config.threads is not None else {}
    tunings = [tune_bundle(t, fixed=fixed, n_new=config.max_tokens, rounds=min(config.rounds, 3), progress=progress)
               for t in targets]
    click.echo(markdown_table(table_rows(tunings)))
    for t in tunings:
        click.echo(f"wrote the tuned settings into {t.written}", err=True)
    return tunings
