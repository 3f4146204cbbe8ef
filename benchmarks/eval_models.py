"""Bits-per-byte and multiple-choice accuracy of the registered real models on the demo domains.

    .venv/bin/python benchmarks/eval_models.py                      # smollm2-135m and gemma3-270m, llama.cpp
    .venv/bin/python benchmarks/eval_models.py --backends llamacpp,torch --models smollm2-135m

Prints a table and writes results/eval_models.json. All models are scored on the same held-out
bytes (tokenizer-independent), so rows compare directly.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_downscale import __version__  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.config import EvalConfig  # noqa: E402
from edge_downscale.data import heldout_by_domain  # noqa: E402
from edge_downscale.eval import evaluate, markdown_table  # noqa: E402
from edge_downscale.models import open_backend  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--backends", default="llamacpp", help="comma-separated: llamacpp, torch")
    ap.add_argument("--domains", default="code,docs,legal")
    ap.add_argument("--max-bytes", type=int, default=EvalConfig.max_bytes)
    ap.add_argument("--mc-items", type=int, default=EvalConfig.mc_items)
    ap.add_argument("--out", default="results/eval_models.json")
    args = ap.parse_args()

    config = EvalConfig(max_bytes=args.max_bytes, mc_items=args.mc_items)
    domains = args.domains.split(",")
    runs = []
    for model in args.models.split(","):
        for backend_name in args.backends.split(","):
            t0 = time.perf_counter()
            with open_backend(model, backend_name, context_length=config.max_length) as backend:
                load = time.perf_counter() - t0
                res = evaluate(backend, heldout_by_domain(domains, config), config, model_name=model)
            res["load_seconds"] = round(load, 2)
            res["total_seconds"] = round(time.perf_counter() - t0, 2)
            runs.append(res)

    header = ["model", "backend"] + [f"{d} bpb" for d in domains] + ["mixed bpb"] + [f"{d} MC" for d in domains] + ["s"]
    rows = [header]
    for r in runs:
        doms = r["domains"]
        rows.append([r["model"], r["backend"]]
                    + [f"{doms[d]['bpb']['bits_per_byte']:.4f}" for d in domains]
                    + [f"{r['mixed_bpb']:.4f}"]
                    + [f"{doms[d]['mc']['accuracy']:.3f}" if doms[d].get("mc") else "-" for d in domains]
                    + [f"{r['total_seconds']:.0f}"])
    print()
    print(markdown_table(rows))
    bytes_per_domain = {d: runs[0]["domains"][d]["bpb"]["n_bytes"] for d in domains} if runs else {}
    print(f"\nheld-out bytes per domain: {bytes_per_domain}; MC items per domain: {config.mc_items} (chance 0.25)")
    write_result(args.out, {"version": __version__, "machine": platform.machine(), "python": platform.python_version(),
                                 "cpu_count": os.cpu_count(), "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
