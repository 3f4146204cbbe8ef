"""From raw worker answers to one record per configuration, with ratios to the reference configuration.

Quality: bits-per-byte per domain and mixed (total nats / total bytes over the domains), multiple-choice
accuracy per domain and mixed (correct / items). Speed (medians over the timed rounds): TTFT, prefill
and decode tokens/s, end-to-end answer tokens/s, inter-token latency p50/p95 (all gaps pooled).
Energy: joules per answer token over all rounds. Roofline (per round, then the median): the weight
bytes read per decoded token, summed over the models that decoded that round's answer (a single
model; route's routed member; mixture's mixed members; every vote candidate's and cascade level's
author), the memory-bound ceiling ``bandwidth / bytes`` and ``decode_share`` = decode tokens/s over
that ceiling (:mod:`edge_downscale.runtime.roofline`). Ratios: a per-round figure (TTFT, tokens/s, J/token)
is the median of its per-round ratios to the reference in the same round (the pair ran back to back,
so slow drifts of the machine cancel); any other figure is a plain ratio. ``j_per_token_ratio_95``: a
bootstrap interval of the J/token column's ratio (total joules over total answer tokens, each side).
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

import numpy as np

from ..runtime.roofline import roofline_tok_s
from .targets import Configuration

MB = 2**20
# metrics with a value per round: their ratio is the median of the per-round ratios
PER_ROUND = ("ttft_s", "prefill_tok_s", "decode_tok_s", "throughput_tok_s", "j_per_token")
RATIO_METRICS = ("bpb_mixed", "mc_acc_mixed") + PER_ROUND + ("itl_p50_ms", "itl_p95_ms", "peak_rss_mb",
                                                             "vram_peak_mb", "size_mb")


def _median(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(statistics.median(xs)) if xs else None


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; None for no data."""
    xs = sorted(xs)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a / b


def round_metrics(r: dict[str, Any], streams: bool) -> dict[str, float | None]:
    """Per-request figures. Decode tokens/s comes from the runtime's usage; the rest from the worker's clock."""
    n = r["answer_tokens"]
    ttft = r["ttft_s"]
    decode = r["usage_tokens_per_s"]
    if decode is None and streams and len(r["gaps_s"]) >= 1:  # usage has none: chunk arrivals
        decode = len(r["gaps_s"]) / sum(r["gaps_s"]) if sum(r["gaps_s"]) > 0 else None
    return {
        "ttft_s": ttft,
        "prefill_tok_s": r["prompt_tokens"] / ttft if streams and ttft > 0 else None,
        "decode_tok_s": decode if streams else None,
        "throughput_tok_s": n / r["latency_s"] if r["latency_s"] > 0 and n else None,
        "j_per_token": r["joules"] / n if r["joules"] is not None and n else None,
    }


def round_bytes(r: dict[str, Any], weight_bytes: dict[str, int | None]) -> int | None:
    """Weight bytes per token of one round: summed over the models that decoded it (None if one is unknown)."""
    sizes = [weight_bytes.get(n) for n in (r.get("decoders") or list(weight_bytes))]
    return sum(sizes) if sizes and None not in sizes else None


def roofline_metrics(decode_tok_s: float | None, bytes_per_token: int | None,
                     bandwidth: float | None) -> dict[str, float | None]:
    """The round's memory-bound ceiling (tokens/s) and the share of it its decode speed reached."""
    roof = roofline_tok_s(bytes_per_token, bandwidth) if bytes_per_token and bandwidth else None
    return {"bytes_per_token": bytes_per_token, "roofline_tok_s": roof, "decode_share": _ratio(decode_tok_s, roof)}


def quality_summary(quality: dict[str, dict[str, Any]]) -> dict[str, Any]:
    domains = {}
    for d, q in quality.items():
        domains[d] = {"bpb": q["nll_nats"] / math.log(2) / q["n_bytes"] if q["n_bytes"] else None,
                      "n_bytes": q["n_bytes"], "mc_acc": q["mc_correct"] / q["mc_items"] if q["mc_items"] else None,
                      "mc_items": q["mc_items"], "mc_item_correct": q.get("mc_item_correct", [])}
    nll = sum(q["nll_nats"] for q in quality.values())
    n_bytes = sum(q["n_bytes"] for q in quality.values())
    items = sum(q["mc_items"] for q in quality.values())
    return {"domains": domains, "bpb_mixed": nll / math.log(2) / n_bytes if n_bytes else None,
            "mc_acc_mixed": sum(q["mc_correct"] for q in quality.values()) / items if items else None,
            "quality_fallbacks": sum(q["fallbacks"] for q in quality.values())}


def record(config: Configuration, quality: dict, rounds: list[dict], memory: dict, started: dict,
           bandwidth: float | None = None) -> dict[str, Any]:
    """One configuration's record (the raw rounds kept under ``rounds``); ``bandwidth``: bytes/s of the roofline."""
    per_round = [round_metrics(r, config.streams) for r in rounds]
    for m, r in zip(per_round, rounds):
        m.update(roofline_metrics(m["decode_tok_s"], round_bytes(r, config.weight_bytes), bandwidth))
    bytes_per_token = _median([m["bytes_per_token"] for m in per_round])
    gaps_ms = [g * 1e3 for r in rounds for g in r["gaps_s"]] if config.streams else []
    joules = [r["joules"] for r in rounds]
    tokens = sum(r["answer_tokens"] for r in rounds)
    sources = sorted({r["energy_source"] for r in rounds if r["energy_source"]})
    usage_joules = [r["usage_joules"] for r in rounds]
    rec = {
        **config.to_dict(), "streams": config.streams, "size_mb": config.size_bytes / MB,
        **quality_summary(quality),
        **{k: _median([m[k] for m in per_round]) for k in PER_ROUND if k != "j_per_token"},
        "itl_p50_ms": percentile(gaps_ms, 0.5), "itl_p95_ms": percentile(gaps_ms, 0.95),
        "bytes_per_token": None if bytes_per_token is None else round(bytes_per_token),
        **{k: _median([m[k] for m in per_round]) for k in ("roofline_tok_s", "decode_share")},
        "j_per_token": sum(joules) / tokens if tokens and None not in joules else None,
        "usage_j_per_token": sum(usage_joules) / tokens if tokens and None not in usage_joules else None,
        "energy_source": "+".join(sources) or None,
        "answer_tokens": tokens, "truncated_prompt_tokens": sum(r["truncated_tokens"] for r in rounds),
        "generation_fallbacks": sum(r["fallbacks"] for r in rounds),
        "peak_rss_mb": memory.get("peak_rss_mb"), "rss_before_load_mb": started.get("rss_before_load_mb"),
        "rss_after_load_mb": started.get("rss_after_load_mb"), "load_s": started.get("load_s"),
        "vram_peak_mb": memory.get("vram_peak_mb"),
        "per_round": per_round, "rounds": rounds,
    }
    return rec


def energy_ratio_interval(rounds: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]], *,
                          level: float = 0.95, draws: int = 4000, seed: int = 0) -> list[float] | None:
    """Bootstrap interval of ``rounds``' joules per answer token over ``reference``'s, each the total joules over
    the total tokens of its rounds (what the J/token column is). Each side's rounds are resampled within each
    prompt, so every draw keeps the run's mix of prompts. None when a round has no energy reading."""
    def per_prompt(rs: Sequence[dict[str, Any]]) -> list[np.ndarray]:  # one (rounds, 2) array a prompt
        out: dict[Any, list] = {}
        for r in rs:
            out.setdefault(r["prompt"], []).append((r["joules"], r["answer_tokens"]))
        return [np.asarray(v, dtype=float) for v in out.values()]

    if not rounds or not reference or any(r["joules"] is None for r in [*rounds, *reference]):
        return None
    rng = np.random.default_rng(seed)
    per_token = []
    for side in (per_prompt(rounds), per_prompt(reference)):
        totals = np.zeros((draws, 2))  # resampled (joules, tokens) of each draw
        for v in side:
            totals += v[rng.integers(0, len(v), size=(draws, len(v)))].sum(axis=1)
        per_token.append(totals[:, 0] / np.maximum(totals[:, 1], 1))
    ratio = per_token[0] / per_token[1]
    return [float(np.quantile(ratio, (1 - level) / 2)), float(np.quantile(ratio, (1 + level) / 2))]


def add_ratios(records: list[dict[str, Any]], reference: str) -> None:
    """``record["ratios"][metric]`` = the record's figure over the reference's (1 for the reference itself), and
    ``record["j_per_token_ratio_95"]``: :func:`energy_ratio_interval` of the record against the reference."""
    ref = next(r for r in records if r["name"] == reference)
    for rec in records:
        rec["j_per_token_ratio_95"] = energy_ratio_interval(rec["rounds"], ref["rounds"])
        ratios: dict[str, float | None] = {}
        for k in RATIO_METRICS:
            if k in PER_ROUND:
                ratios[k] = _median([_ratio(a[k], b[k]) for a, b in zip(rec["per_round"], ref["per_round"])])
            else:
                ratios[k] = _ratio(rec[k], ref[k])
        rec["ratios"] = ratios
