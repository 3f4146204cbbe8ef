"""Ensemble part of the runtime benchmark: a real demo bundle, route accuracy, 8 concurrent threads.

    .venv/bin/python benchmarks/runtime_ensemble.py [--quick]   # also called by runtime_overhead.py

The bundle: SmolLM2-135M exported to GGUF (q8_0 for code, q6_k for docs, q4_k_m for legal: the
domain specialists of the recovery stage do not exist yet, so each domain gets a quantisation of the
teacher), a router trained on the demo corpora's train splits. Measured:

* route accuracy and decision latency p50/p95 on held-out *documents* of the demo domains (test
  split, whole documents as requests; the router reads their first 2000 characters);
* routing overhead inside a request: ``Ensemble.generate`` vs the member's own ``generate``;
* 8 threads sending held-out prompts at once: requests/s and tokens/s vs the same requests one at a
  time, and how many answers differ from the single-thread greedy answer (must be 0).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from edge_downscale._io import cache_dir, write_json_atomic, write_result  # noqa: E402
from edge_downscale.data import DEMO_DOMAINS  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402

QUANT_FOR = {"code": "q8_0", "docs": "q6_k", "legal": "q4_k_m"}


def smollm2_exports(quants: list[str], log=print) -> dict[str, Path]:
    """GGUF exports of SmolLM2-135M (parity-gated, with manifests), cached across runs."""
    from edge_downscale.export import ExportConfig, export_model, source_directory

    root = cache_dir("bench", "smollm2-gguf")
    missing = [q for q in quants if not (root / f"gguf-{q}" / "model.json").is_file()]
    if missing:
        tmp = root / "new"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        log(f"exporting SmolLM2-135M to GGUF {','.join(missing)} (once)")
        export_model(str(source_directory("smollm2-135m")), ExportConfig(out_dir=tmp, format="gguf", quants=missing),
                     log=log)
        for q in missing:
            os.replace(tmp / f"gguf-{q}", root / f"gguf-{q}")
        shutil.rmtree(tmp, ignore_errors=True)
    return {q: root / f"gguf-{q}" for q in quants}


def demo_bundle(out: Path, *, n_threads: int, log=print) -> Path:
    from edge_downscale.bundle import BundleConfig, build_bundle

    exports = smollm2_exports(sorted(set(QUANT_FOR.values())), log=log)
    members = [{"name": d, "path": exports[QUANT_FOR[d]], "domain": d, "options": {"n_ctx": 1024, "n_threads": n_threads}}
               for d in DEMO_DOMAINS]
    config = BundleConfig(out=str(out), members=members, strategy="route", router_corpora={d: d for d in DEMO_DOMAINS})
    return build_bundle(config, log=log)


def held_out_prompts(n_per_domain: int, chars: int = 300) -> list[tuple[str, str]]:
    from edge_downscale.bundle import texts_by_domain

    out = []
    for domain, docs in texts_by_domain({d: d for d in DEMO_DOMAINS}, "test").items():
        out += [(domain, d[:chars]) for d in docs if len(d) >= chars][:n_per_domain]
    return out


def route_accuracy(ens) -> dict:
    from edge_downscale.bundle import evaluate_router, texts_by_domain

    test = texts_by_domain({d: d for d in DEMO_DOMAINS}, "test")
    docs = evaluate_router(ens.router, test, chunk_chars=None)
    chunks = evaluate_router(ens.router, test, chunk_chars=1000)
    return {"documents": docs, "chunks_1000": chunks}


def routing_overhead(ens, prompts, max_tokens: int, reps: int) -> dict:
    """Median latency of the same greedy request through the ensemble and straight to its member."""
    via, direct = [], []
    for _ in range(reps):
        for domain, prompt in prompts:
            t0 = time.perf_counter()
            resp = ens.generate(prompt, max_tokens=max_tokens)
            via.append(time.perf_counter() - t0)
            with ens.use(resp.members[0]) as backend:
                t0 = time.perf_counter()
                backend.generate(prompt, max_tokens=max_tokens, meter=ens.meter)
                direct.append(time.perf_counter() - t0)
    return {"ensemble_s": statistics.median(via), "member_s": statistics.median(direct),
            "ratio": statistics.median(direct) / statistics.median(via)}


def concurrency(ens, prompts, max_tokens: int, threads: int = 8) -> dict:
    """The same requests one at a time, then from ``threads`` threads at once; answers must agree."""
    t0 = time.perf_counter()
    expected = [ens.generate(p, max_tokens=max_tokens) for _, p in prompts]
    seq_s = time.perf_counter() - t0
    results: list = [None] * len(prompts)
    errors: list[str] = []
    next_i = iter(range(len(prompts)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            try:
                results[i] = ens.generate(prompts[i][1], max_tokens=max_tokens)
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(e).__name__}: {e}")

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    par_s = time.perf_counter() - t0
    wrong = sum(1 for r, e in zip(results, expected) if r is None or r.text != e.text or r.members != e.members)
    tokens = sum(e.usage.completion_tokens for e in expected)
    return {"requests": len(prompts), "threads": threads, "sequential_s": seq_s, "concurrent_s": par_s,
            "sequential_req_s": len(prompts) / seq_s, "concurrent_req_s": len(prompts) / par_s,
            "sequential_tok_s": tokens / seq_s, "concurrent_tok_s": tokens / par_s,
            "wrong_answers": wrong, "errors": errors}


def mc_items(split: str, n_per_domain: int, seed: int = 0) -> list[tuple[str, list[str], int]]:
    from edge_downscale.eval.mc import build_items
    from edge_downscale.bundle import texts_by_domain

    out = []
    for docs in texts_by_domain({d: d for d in DEMO_DOMAINS}, split).values():
        out += [(it.context, it.choices, it.answer) for it in build_items(
            docs, n_items=n_per_domain, context_chars=320, continuation_chars=64, seed=seed)]
    return out


def strategies_on_choices(bundle: Path, quick: bool, log=print) -> dict:
    """Multiple choice on held-out text: each member alone, a calibrated cascade, and votes.

    The cascade (q4_k_m first, then q8_0) is calibrated on validation-split items for 50% acceptance
    at level 0 and measured on test-split items; every figure comes from the same run.
    """
    from edge_downscale.bundle import calibrate_cascade
    from edge_downscale.runtime import Ensemble

    n = 4 if quick else 12
    calib, test = mc_items("validation", n), mc_items("test", n)
    out: dict = {"n_test_items": len(test), "n_calibration_items": len(calib)}

    def accuracy(ens) -> tuple[float, float, dict]:
        t0 = time.perf_counter()
        right = sum(ens.choose(c, o).choice == a for c, o, a in test)
        return right / len(test), time.perf_counter() - t0, dict(ens.stats["levels"])

    spec_path = bundle / "ensemble.json"
    spec = json.loads(spec_path.read_text())
    for m in spec["members"]:  # one request at a time here: let each member use every core
        m["options"]["n_threads"] = os.cpu_count()
    spec_path.write_text(json.dumps(spec))
    for member in ("legal", "code"):  # q4_k_m, q8_0, each on its own
        with Ensemble.load(bundle) as ens, ens.use(member) as b:
            b.score("warm up")
            t0 = time.perf_counter()
            right = sum(int(np.argmax(b.option_logprobs(c, o))) == a for c, o, a in test)
            out[f"alone_{QUANT_FOR[member]}"] = {"accuracy": right / len(test), "seconds": time.perf_counter() - t0}
    for strategy, options in (("cascade", {"order": ["legal", "code"]}), ("vote", {"combine": "sum"})):
        spec.update(strategy=strategy, strategy_options=options)
        spec_path.write_text(json.dumps(spec))
        with Ensemble.load(bundle) as ens:
            if strategy == "cascade":
                calibrate_cascade(ens, choices=[(c, o) for c, o, _ in calib], target_acceptance=0.5)
            acc, secs, levels = accuracy(ens)
            key = strategy if strategy == "cascade" else f"vote_{options['combine']}"
            out[key] = {"accuracy": acc, "seconds": secs}
            if strategy == "cascade":
                out[key]["answered_by_level"] = {str(k): v for k, v in sorted(levels.items())}
                out[key]["threshold"] = ens.strategy.options.thresholds["choose"][0]
        log(f"{key}: {out[key]}")
    return out


def ensemble_section(results: dict, *, quick: bool = False, log=print) -> dict:
    """Adds ``results["ensemble"]``: route accuracy/latency, routing overhead, 8-thread concurrency."""
    import tempfile

    from edge_downscale.runtime import Ensemble

    # members run one llama.cpp thread each so that 8 request threads can use every core
    with tempfile.TemporaryDirectory() as tmp:
        bundle = demo_bundle(Path(tmp) / "bundle", n_threads=1, log=log)
        with Ensemble.load(bundle) as ens:
            section = {"members": {d: QUANT_FOR[d] for d in DEMO_DOMAINS}, "router": ens.spec.router,
                       "route": route_accuracy(ens)}
            prompts = held_out_prompts(2 if quick else 8)
            for name in ens.members:  # load (and hash-check) every member before timing anything
                with ens.use(name) as backend:
                    backend.generate("warm up", max_tokens=2, meter=None)
            section["overhead"] = routing_overhead(ens, prompts[:: max(len(prompts) // 3, 1)], 16, 1 if quick else 3)
            section["concurrency"] = concurrency(ens, prompts, 16 if quick else 32)
            section["stats"] = {k: v for k, v in ens.stats.items() if k != "levels"}
        section["choices"] = strategies_on_choices(bundle, quick, log=log)
    results["ensemble"] = section
    return section


def print_choices(ch: dict) -> None:
    rows = [["strategy", "MC accuracy", "seconds", "answered by level 0 / 1"]]
    for key in ("alone_q4_k_m", "alone_q8_0", "cascade", "vote_sum"):
        r = ch[key]
        levels = r.get("answered_by_level")
        rows.append([key, f"{r['accuracy']:.3f}", f"{r['seconds']:.1f}",
                     " / ".join(str(levels.get(k, 0)) for k in ("0", "1")) if levels else "-"])
    print(f"\nmultiple choice on {ch['n_test_items']} held-out items (cascade calibrated on "
          f"{ch['n_calibration_items']} validation items for 50% at level 0)")
    print(markdown_table(rows))


def print_section(section: dict) -> None:
    docs, chunks = section["route"]["documents"], section["route"]["chunks_1000"]
    rows = [["items", "accuracy", *[f"acc {d}" for d in DEMO_DOMAINS], "p50 ms", "p95 ms"]]
    for name, r in (("held-out documents", docs), ("1000-char chunks", chunks)):
        rows.append([f"{name} ({r['n_items']})", f"{r['accuracy']:.3f}",
                     *[f"{r['per_label'][d]['accuracy']:.3f}" for d in DEMO_DOMAINS],
                     f"{r['latency_ms']['p50']:.3f}", f"{r['latency_ms']['p95']:.3f}"])
    print(markdown_table(rows))
    o, c = section["overhead"], section["concurrency"]
    print(f"\nrouting overhead: ensemble {o['ensemble_s'] * 1e3:.1f} ms vs member {o['member_s'] * 1e3:.1f} ms "
          f"per request (member/ensemble = {o['ratio']:.3f})")
    print(markdown_table([
        ["mode", "requests", "seconds", "req/s", "tok/s", "wrong answers"],
        ["sequential", str(c["requests"]), f"{c['sequential_s']:.1f}", f"{c['sequential_req_s']:.2f}",
         f"{c['sequential_tok_s']:.1f}", "-"],
        [f"{c['threads']} threads", str(c["requests"]), f"{c['concurrent_s']:.1f}", f"{c['concurrent_req_s']:.2f}",
         f"{c['concurrent_tok_s']:.1f}", str(c["wrong_answers"]) + (f" ({len(c['errors'])} errors)" if c["errors"] else "")],
    ]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer prompts and tokens (smoke run)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "runtime_ensemble.json"))
    args = ap.parse_args()
    results: dict = {"cpu_count": os.cpu_count(), "quick": args.quick}
    section = ensemble_section(results, quick=args.quick)
    print_section(section)
    print_choices(section["choices"])
    write_result(args.out, results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
