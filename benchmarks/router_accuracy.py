"""Accuracy and latency of the request routers on the demo domains (code, docs, legal).

    .venv/bin/python benchmarks/router_accuracy.py            # builds the demo corpora on first use

Each router kind is trained on the train splits of the built demo corpora and routes the test and
validation splits one request at a time, as whole documents (the router reads their first
``max_chars``) and as ~1000- and ~200-character chunks (prompt-sized requests). Prints a table and
writes results/router_accuracy.json. The issue's targets: accuracy >= 95% on held-out documents,
decision latency p50/p95 < 2 ms on CPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_downscale import __version__  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402
from edge_downscale.bundle import evaluate_router, texts_by_domain, train_router  # noqa: E402
from edge_downscale.runtime.router import load_router  # noqa: E402

GRANULARITIES: dict[str, int | None] = {"documents": None, "chunks-1000": 1000, "chunks-200": 200}


def measure(domains: Sequence[str] = ("code", "docs", "legal"), kinds: Sequence[str] = ("ngram-linear", "centroid"),
            *, splits: Sequence[str] = ("test", "validation"), max_per_label: int | None = 2000, seed: int = 0,
            **options: Any) -> dict[str, Any]:
    """Train every router kind on the domains' train splits and evaluate it on ``splits``.

    ``options`` go to :func:`train_router` (feature and classifier options). Each router is saved and
    reloaded before evaluation, so the figures are those of the pickle-free bundle state.
    """
    corpora = {d: d for d in domains}  # demo domain names: texts_by_domain builds/loads them via resolve_corpus
    train = texts_by_domain(corpora, "train")
    heldout = {s: texts_by_domain(corpora, s) for s in splits}
    data = {s: {d: {"documents": len(t), "chars": sum(map(len, t))} for d, t in texts.items()}
            for s, texts in {"train": train, **heldout}.items()}
    runs = []
    for kind in kinds:
        t0 = time.perf_counter()
        router = train_router(train, kind, seed=seed, **options)
        train_seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="router-") as tmp:
            spec = router.save(Path(tmp))
            state_bytes = (Path(tmp) / spec["file"]).stat().st_size
            router = load_router(Path(tmp), spec)
        for split, texts in heldout.items():
            for granularity, chunk_chars in GRANULARITIES.items():
                report = evaluate_router(router, texts, chunk_chars=chunk_chars, max_per_label=max_per_label,
                                         seed=seed)
                runs.append({"router": kind, "split": split, "items": granularity, "train_seconds": train_seconds,
                             "state_bytes": state_bytes, "fallback": spec["fallback"],
                             "features": spec["features"], **report})
    return {"domains": list(domains), "data": data, "options": options, "max_per_label": max_per_label,
            "seed": seed, "runs": runs}


def table(result: dict[str, Any]) -> str:
    domains = result["domains"]
    rows = [["router", "split", "items", "n", "accuracy"] + [f"{d} acc" for d in domains]
            + ["p50 ms", "p95 ms", "train s"]]
    for r in result["runs"]:
        rows.append([r["router"], r["split"], r["items"], str(r["n_items"]), f"{r['accuracy']:.4f}"]
                    + [f"{r['per_label'][d]['accuracy']:.4f}" for d in domains]
                    + [f"{r['latency_ms']['p50']:.3f}", f"{r['latency_ms']['p95']:.3f}", f"{r['train_seconds']:.1f}"])
    return markdown_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", default="code,docs,legal")
    ap.add_argument("--kinds", default="ngram-linear,centroid")
    ap.add_argument("--max-per-label", type=int, default=2000, help="held-out items per domain (a seeded sample)")
    ap.add_argument("--word-ngrams", default="", help="add a hashed word n-gram block, e.g. 1,2")
    ap.add_argument("--out", default="results/router_accuracy.json")
    args = ap.parse_args()

    options: dict[str, Any] = {}
    if args.word_ngrams:
        options["word_ngram_range"] = tuple(int(n) for n in args.word_ngrams.split(","))
    load_before = os.getloadavg()
    result = measure(args.domains.split(","), args.kinds.split(","), max_per_label=args.max_per_label, **options)
    # Latency percentiles are wall-clock: other processes on the machine inflate p95 (recorded here).
    result["load_average_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    print()
    print(markdown_table([["split", "domain", "documents", "chars"]]
                         + [[s, d, str(v["documents"]), str(v["chars"])]
                            for s, per in result["data"].items() for d, v in per.items()]))
    print()
    print(table(result))
    print(f"\n1-minute load average before/after: {result['load_average_1min']['before']:.2f}/"
          f"{result['load_average_1min']['after']:.2f} on {os.cpu_count()} CPUs")
    write_result(args.out, {"version": __version__, "machine": platform.machine(),
                                 "processor": platform.processor(), "python": platform.python_version(),
                                 "cpu_count": os.cpu_count(), **result})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
