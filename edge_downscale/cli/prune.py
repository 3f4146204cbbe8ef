"""`prune`: structured FFN pruning, one model per ratio (options from PruneConfig / PruneNetConfig / FFNPolicyConfig)."""
from __future__ import annotations

import click

from ..compress.prune import METHODS, FFNPolicyConfig, PruneConfig, PruneNetConfig
from ..compress.prune.prunenet import GRADIENTS
from ..compress.prune.refit import REFIT_MODES
from ._options import config_option


def _ratios(value: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 0.2,0.3,0.5, got {value!r}") from None


@click.command("prune", short_help="Structured FFN pruning, one model per ratio.")
@click.argument("model")
@config_option(PruneConfig, "ratios", type=str, default=",".join(f"{r:g}" for r in PruneConfig.ratios),
               help="Fractions of each FFN's width to remove, comma-separated; one model per ratio.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory: r0.20/ ... (HF model dirs), policy/, summary.json.")
@config_option(PruneConfig, "method", choices=METHODS,
               help="prunenet/ffn-policy/random/magnitude need no data; activation calibrates on --calib-domain.")
@click.option("--policy", "policy_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Reuse a learned policy directory (of --method) at every ratio instead of learning one.")
@config_option(PruneNetConfig, "train_ratio",
               help="Learn the policy once at this ratio and reuse it at every ratio (default: learn at each ratio).")
@config_option(PruneNetConfig, "episodes", help="Policy-gradient episodes (prunenet, ffn-policy).")
@config_option(PruneNetConfig, "gradient", choices=GRADIENTS,
               help="prunenet: reinforce (the authors' code) or baselined (several draws, standardised advantages).")
@config_option(PruneConfig, "multiple", help="Round kept FFN widths to this.")
@config_option(PruneConfig, "calib_domain", help="Calibration text for --method activation and --refit.")
@config_option(PruneConfig, "calib_sequences", help="256-token calibration sequences.")
@config_option(PruneConfig, "refit", "--refit/--no-refit",
               help="Refit each down_proj by least squares over its kept rows (calibrates on --calib-domain).")
@config_option(PruneConfig, "refit_mode", choices=REFIT_MODES,
               help="sequential: block by block on the pruned model's own activations, towards the dense output; "
                    "layer: every layer independently from the dense activations.")
@config_option(PruneConfig, "seed")
@config_option(PruneNetConfig, "device", help="Policy learning device: auto, cpu, cuda.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def prune_cmd(model, ratios, out_dir, method, policy_dir, train_ratio, episodes, gradient, multiple, calib_domain,
              calib_sequences, refit, refit_mode, seed, device, overwrite, quiet):
    """Structured FFN pruning of MODEL: learn (or load) the policy, write one pruned model per ratio.

    The outputs are standard HF directories (safetensors + tokenizer) that transformers loads
    without this library, each with a pruning_report.json.
    """
    from ..compress.prune import prune_to_dirs

    common = dict(train_ratio=train_ratio, episodes=episodes, multiple=multiple, seed=seed, device=device)
    config = PruneConfig(out_dir=out_dir, ratios=tuple(_ratios(ratios)), method=method, policy_dir=policy_dir,
                         prunenet=PruneNetConfig(gradient=gradient, **common), ffn_policy=FFNPolicyConfig(**common),
                         calib_domain=calib_domain, calib_sequences=calib_sequences, refit=refit,
                         refit_mode=refit_mode,
                         multiple=multiple, seed=seed, overwrite=overwrite)
    summary = prune_to_dirs(model, config, progress=not quiet)
    for name, o in summary["outputs"].items():
        click.echo(f"{out_dir}/{name}: FFN width {o['kept_width']}, {o['params_after']:,} parameters "
                   f"(-{o['param_reduction']:.1%}), mean spectrum KS {o['mean_ks']:.3f}")
