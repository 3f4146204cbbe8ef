"""A recipe in a few human lines (``edge-downscale recipe check``)."""
from __future__ import annotations

from ..compress.prune.methods import REGISTRY
from ..data import DEMO_DOMAINS


def _train(t) -> str:
    return f"{t.token_budget} tokens (seq {t.seq_len} x batch {t.batch_size}), train {t.train}, device {t.device}"


def _data(r) -> str:
    c, p = r.data.corpus, r.data.prune
    docs = f"max_docs {c.max_docs}" if c.max_docs else "all documents"
    pruning = f"pruning {' -> '.join(p.steps)} keep {p.keep:g}" if p else "no data pruning"
    return f"{docs}, split {'/'.join(f'{x:g}' for x in c.split_fractions)}, {pruning}"


def _adapt(r) -> str:
    return _train(r.adapt.train) + (f", replay {r.adapt.replay} at share {r.adapt.train.domain_share:g}"
                                    if r.adapt.replay else "")


def _prune(r) -> str:
    p = r.prune
    learner = REGISTRY[p.method].learner
    extra = ""
    if learner is not None:
        cfg = getattr(p, learner.field)
        extra = f", policy {cfg.episodes if cfg else 'default'} episodes"
    if p.refit:
        extra += ", down_proj refitted"
    if p.method == "activation" or p.refit:
        extra += f" (calibration: {p.calib_domain or 'own train split'}, {p.calib_sequences} x 256 tokens)"
    return f"{p.method} ratio {p.ratio:g}, multiple {p.multiple}{extra}"


def _recover(r) -> str:
    rc = r.recover
    kd = f" from the {rc.teacher} teacher ({rc.distill.divergence} KL, tau {rc.distill.tau:g})" if rc.mode == "distill" else ""
    return f"{rc.mode}{kd}, {_train(rc.train)}"


def _flat(over: dict, prefix: str = "") -> str:
    """{train: {token_budget: 8}, ratio: 0.1} -> 'train.token_budget 8, ratio 0.1'"""
    return ", ".join(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k} {v}" for k, v in over.items())


_STAGE_LINES = {"adapt": _adapt, "prune": _prune, "recover": _recover}


def summary(r) -> str:
    e, x, ev = r.ensemble, r.export, r.eval
    lines = [
        f"recipe    {r.name}" + (f"  ({r.source})" if r.source else ""),
        f"teacher   {r.teacher}   device {r.device}",
        "domains   " + ", ".join(f"{d.name} ({'demo' if d.corpus in DEMO_DOMAINS else d.corpus})" for d in r.domains),
        f"data      {_data(r)}",
        *(f"  {d.name:<7} overrides " + "; ".join(f"{st} {_flat(getattr(d, st))}" for st in ("adapt", "prune", "recover")
                                                  if getattr(d, st)) for d in r.domains if d.adapt or d.prune or d.recover),
        f"stages    {' -> '.join(r.stages)}",
        *(f"{s:<9} {_STAGE_LINES[s](r)}" for s in r.stages),
        f"export    {x.format}{f' ({x.onnx_graph} graph)' if x.format == 'onnx' else ''} {', '.join(x.quants)} "
        f"(bundle: {x.bundle_quant}), parity on {x.max_bytes} bytes"
        + (", degraded allowed" if x.allow_degraded else ""),
        f"ensemble  {e.strategy}" + (f", router {e.router_kind}" if e.strategy == "route" else "")
        + (f", memory budget {e.memory_budget_mb:g} MB" if e.memory_budget_mb else ""),
        f"eval      {ev.split} split, {ev.max_bytes or 'all'} bytes per domain, {ev.mc_items} MC items",
        f"baselines {', '.join(r.baselines) or 'none'}",
    ]
    if r.law:
        lines.append(f"law       {r.law}")
    return "\n".join(lines)
