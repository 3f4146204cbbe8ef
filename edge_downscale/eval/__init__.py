"""Evaluation on any backend that scores tokens: bits-per-byte and multiple-choice accuracy."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Sequence

from .._io import write_result
from ..config import EvalConfig
from ..errors import ConfigError, EvalError
from ..runtime.base import Backend
from .bpb import BpbResult, bits_per_byte, windows
from .mc import MCItem, MCResult, build_items, score_items

__all__ = [
    "BpbResult", "MCItem", "MCResult", "EvalConfig", "bits_per_byte", "build_items", "evaluate",
    "corpus_dir", "heldout_texts", "open_backend", "score_items", "windows", "format_table", "markdown_table",
]


def open_backend(model: str, backend: str = "torch", *, context_length: int = 2048, device: str = "cpu",
                 n_threads: int | None = None, batch_size: int = 4) -> Backend:
    """Load ``model`` (name or path) with the named backend for scoring."""
    from ..models import resolve

    ref = resolve(model)
    if backend == "torch":
        from ..models.torch_backend import TorchBackend

        return TorchBackend.from_ref(ref, device=device, context_length=context_length, batch_size=batch_size)
    if backend == "llamacpp":
        if ref.format != "gguf":
            raise ConfigError(f"the llamacpp backend needs a .gguf model; {model} is {ref.format}")
        from ..runtime.llamacpp import LlamaCppBackend

        return LlamaCppBackend(ref.path, n_ctx=context_length, n_threads=n_threads)
    raise ConfigError(f"unknown backend {backend!r}; available: torch, llamacpp")


def corpus_dir(domain: str) -> Path:
    from ..data import DEMO_DOMAINS, demo_corpus

    if domain in DEMO_DOMAINS:
        return demo_corpus(domain)
    path = Path(domain)
    if path.is_dir():
        return path
    raise ConfigError(
        f"unknown domain {domain!r}: use a demo domain ({', '.join(DEMO_DOMAINS)}) or a directory "
        "written by `edge-downscale data build`"
    )


def heldout_texts(domain: str, config: EvalConfig) -> tuple[list[str], list[str]]:
    """(texts for bits-per-byte capped at ``max_bytes``, all split texts for multiple choice).

    Documents are visited in a seeded random order; each contributes at most an eighth of the budget
    (or 1/n of it when the split has n < 8 documents; cut at a line end) so one long file cannot
    dominate a domain's figure.
    """
    from ..data import load_corpus

    split = load_corpus(corpus_dir(domain))[config.split]
    texts = [t for t in split["text"] if t]
    if not texts:
        raise EvalError(f"domain {domain!r}: the {config.split} split is empty")
    order = list(range(len(texts)))
    random.Random(f"{config.seed}:{domain}").shuffle(order)
    budget = config.max_bytes
    picked: list[str] = []
    per_doc = max(budget // min(8, len(texts)), 2000) if budget else None
    for i in order:
        text = texts[i]
        if budget is not None:
            if budget <= 0:
                break
            cap = min(per_doc, budget)
            if len(text.encode("utf-8")) > cap:
                text = text.encode("utf-8")[:cap].decode("utf-8", "ignore")
                nl = text.rfind("\n")
                text = text[: nl + 1] if nl > len(text) // 2 else text
            budget -= len(text.encode("utf-8"))
        picked.append(text)
    return picked, texts


def evaluate(backend: Backend, domains: Sequence[str], config: EvalConfig | None = None, *,
             progress: bool = True, model_name: str = "") -> dict[str, Any]:
    """Bits-per-byte and multiple-choice accuracy per domain, plus bits-per-byte over all domains."""
    from tqdm.auto import tqdm

    config = config or EvalConfig()
    results: dict[str, Any] = {"model": model_name, "backend": backend.name, "config": config.to_dict(),
                               "domains": {}}
    total_nll = 0.0
    total_bytes = 0
    for domain in domains:
        t0 = time.perf_counter()
        texts, all_texts = heldout_texts(domain, config)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        with tqdm(total=n_bytes, unit="B", unit_scale=True, desc=f"{domain} bpb", disable=not progress,
                  leave=False) as bar:
            bpb = bits_per_byte(backend, texts, max_length=config.max_length, stride=config.stride, progress=bar)
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
