"""Evaluation on any backend that scores tokens: bits-per-byte and multiple-choice accuracy."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._io import write_result
from ..config import EvalConfig
from ..errors import ConfigError
from ..runtime.base import Backend
from .bpb import BpbResult, bits_per_byte, windows
from .datafile import EVAL_DIR, read_eval_data, read_eval_file, write_eval_data, write_eval_file
from .mc import MCItem, MCResult, build_items, paired_mc_test, score_items

__all__ = [
    "BpbResult", "MCItem", "MCResult", "EvalConfig", "bits_per_byte", "build_items", "evaluate",
    "score_items", "paired_mc_test", "windows", "format_table", "markdown_table", "save_results",
    "EVAL_DIR", "read_eval_data", "read_eval_file", "write_eval_data", "write_eval_file",
]


def evaluate(backend: Backend, texts: Mapping[str, tuple[Sequence[str], Sequence[str]]],
             config: EvalConfig | None = None, *, progress: bool = True, model_name: str = "") -> dict[str, Any]:
    """Bits-per-byte and multiple-choice accuracy per domain, plus bits-per-byte over all domains.

    ``texts``: ``{domain: (texts scored for bits-per-byte, all texts multiple choice is built from)}``,
    e.g. ``edge_downscale.data.heldout_by_domain(domains, config)``.
    """
    from tqdm.auto import tqdm

    if not isinstance(texts, Mapping):
        raise ConfigError("evaluate takes {domain: (texts, all_texts)}, not domain names: load them with "
                          "edge_downscale.data.heldout_by_domain(domains, config)")
    config = config or EvalConfig()
    results: dict[str, Any] = {"model": model_name, "backend": backend.name, "config": config.to_dict(),
                               "domains": {}}
    total_nll = 0.0
    total_bytes = 0
    for domain, (scored, all_texts) in texts.items():
        t0 = time.perf_counter()
        n_bytes = sum(len(t.encode("utf-8")) for t in scored)
        with tqdm(total=n_bytes, unit="B", unit_scale=True, desc=f"{domain} bpb", disable=not progress,
                  leave=False) as bar:
            bpb = bits_per_byte(backend, scored, max_length=config.max_length, stride=config.stride, progress=bar)
        items = build_items(all_texts, n_items=config.mc_items, context_chars=config.mc_context_chars,
                            continuation_chars=config.mc_continuation_chars, n_choices=config.mc_choices,
                            seed=config.seed)
        entry: dict[str, Any] = {"bpb": bpb.to_dict()}
        if config.mc_items:
            with tqdm(total=len(items), unit="item", desc=f"{domain} MC", disable=not progress, leave=False) as bar:
                mc = score_items(backend, items, max_length=config.max_length, progress=bar) if items else None
            entry["mc"] = mc.to_dict() if mc else None
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        results["domains"][domain] = entry
        total_nll += bpb.nll_nats
        total_bytes += bpb.n_bytes
    results["mixed_bpb"] = total_nll / math.log(2) / total_bytes if total_bytes else None
    return results


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (first row = header) with aligned columns, readable as plain text too."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]])


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate` result."""
    rows = [("domain", "bits/byte", "MC acc", "MC acc(norm)", "items", "bytes", "seconds")]
    for name, r in results["domains"].items():
        mc = r.get("mc") or {}
        rows.append((name, f"{r['bpb']['bits_per_byte']:.4f}",
                     f"{mc['accuracy']:.3f}" if mc else "-", f"{mc['accuracy_norm']:.3f}" if mc else "-",
                     str(mc.get("n_items", "-")), str(r["bpb"]["n_bytes"]), f"{r['seconds']:.1f}"))
    if results.get("mixed_bpb") is not None:
        rows.append(("mixed", f"{results['mixed_bpb']:.4f}", "", "", "", "", ""))
    return markdown_table(rows)


def save_results(results: dict[str, Any], path: str | Path) -> None:
    write_result(path, results)
