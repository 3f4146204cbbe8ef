"""`bundle build/info`: exported specialists plus ensemble.json (options from BundleConfig)."""
from __future__ import annotations

import click

from ._options import _echo_json, _Group, _key_values, _option_value, config_option

_BUNDLE = "edge_downscale.bundle:BundleConfig"  # imports numpy: its defaults are read lazily
# edge_downscale.runtime.STRATEGIES, spelled out so the CLI starts without numpy (a test keeps them equal)
STRATEGY_NAMES = ("route", "cascade", "vote", "mixture")


@click.group(cls=_Group, short_help="Build and inspect ensemble bundles.")
def bundle():
    """Ensemble bundles: exported specialists + ensemble.json (strategy, router, thresholds)."""


@bundle.command("build", short_help="Bundle exports into an ensemble (route, cascade, vote or mixture).")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--member", "member_args", multiple=True, required=True, metavar="NAME=EXPORT_DIR[:DOMAIN]",
              help="A member: an export directory (with model.json) and the domain it serves. Repeat.")
@config_option(_BUNDLE, "strategy", choices=STRATEGY_NAMES)
@click.option("--router-corpus", "router_corpora", multiple=True, metavar="DOMAIN=CORPUS",
              help="Router training text: a corpus from `data build` (or a demo domain name). Route only; repeat.")
@config_option(_BUNDLE, "router_kind", choices=["ngram-linear", "centroid"])
@click.option("--min-confidence", type=float, default=0.0, show_default=True,
              help="Below this router confidence the fallback member answers.")
@click.option("--fallback", default=None, help="Member (domain) that answers when the router is unsure.")
@click.option("--calibrate-corpus", "calibrate_corpora", multiple=True, metavar="CORPUS",
              help="Held-out text (validation split) that calibrates cascade thresholds. Repeat.")
@config_option(_BUNDLE, "target_acceptance", type=float,
               help="Cascade: share of requests each level but the last should answer.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A strategy option (JSON value), e.g. combine=\"mean_prob\" for vote. Repeat.")
@click.option("--member-option", "member_options", multiple=True, metavar="NAME.KEY=VALUE",
              help="A backend option for one member, e.g. code.n_threads=4 or code.n_gpu_layers=-1. Repeat.")
@config_option(_BUNDLE, "memory_budget_mb", type=float, show_default=False,
               help="Keep at most this much loaded (LRU eviction).")
@config_option(_BUNDLE, "grid_g_per_kwh", "--grid", "grid_g_per_kwh", type=float,
               help="Grid carbon intensity in g CO2 per kWh, for usage.grams_co2.")
def bundle_build(out, member_args, strategy, router_corpora, router_kind, min_confidence, fallback, calibrate_corpora,
                 target_acceptance, options, member_options, memory_budget_mb, grid_g_per_kwh):
    """Copy finished exports into OUT with an ensemble.json, train the router / calibrate the cascade.

    \b
    Example:
      edge-downscale bundle build bundle/ --member code=exports/code/gguf-q4_k_m:code \
          --member legal=exports/legal/gguf-q4_k_m:legal --router-corpus code=code --router-corpus legal=legal
    """
    from ..bundle import BundleConfig, build_bundle

    members = []
    for name, rest in _key_values(member_args, "NAME=EXPORT_DIR[:DOMAIN]").items():
        path, _, domain = rest.rpartition(":") if ":" in rest else (rest, "", "")
        members.append({"name": name, "path": path or rest, "domain": domain or None})
    for key, value in _key_values(member_options, "NAME.KEY=VALUE").items():
        name, _, opt = key.partition(".")
        target = next((m for m in members if m["name"] == name), None)
        if target is None or not opt:
            raise click.BadParameter(f"--member-option {key!r}: expected NAME.KEY with NAME a member")
        target.setdefault("options", {})[opt] = _option_value(value)
    config = BundleConfig(
        out=out, members=members, strategy=strategy,
        strategy_options={k: _option_value(v) for k, v in _key_values(options, "KEY=VALUE").items()},
        router_corpora=_key_values(router_corpora, "DOMAIN=CORPUS"), router_kind=router_kind,
        router_options={"min_confidence": min_confidence, "fallback": fallback},
        calibrate_corpora=tuple(calibrate_corpora), target_acceptance=target_acceptance,
        memory_budget_mb=memory_budget_mb, grid_g_per_kwh=grid_g_per_kwh)
    path = build_bundle(config, log=lambda m: click.echo(m, err=True))
    click.echo(str(path))


@bundle.command("info", short_help="Show a bundle's members, strategy and router.")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bundle_info(path, as_json):
    """Check a bundle's manifests and print what it holds (members are not loaded)."""
    from ..runtime import Ensemble

    with Ensemble.load(path) as ens:
        info = {"strategy": ens.spec.strategy, "strategy_options": ens.spec.strategy_options,
                "router": ens.spec.router, "memory_budget_mb": ens.memory_budget_mb,
                "members": [{"name": m.name, "domain": m.domain, "backend": m.spec.backend,
                             "format": m.manifest.get("format"), "quantization": m.manifest.get("quantization"),
                             "memory_mb": round(m.memory_mb, 1), "cost": round(m.cost, 1)} for m in ens.members.values()]}
    if as_json:
        return _echo_json(info)
    click.echo(f"strategy: {info['strategy']}")
    for m in info["members"]:
        click.echo(f"  {m['name']:<12} {m['domain'] or '-':<10} {m['backend']:<9} {m['quantization'] or '-':<8} {m['memory_mb']} MB")
    if info["router"]:
        click.echo(f"router: {info['router'].get('type')}")
