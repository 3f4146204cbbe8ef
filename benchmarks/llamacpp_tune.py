"""llama.cpp settings on this device: llama-cpp-python's defaults, ours, and tuned, against the roofline (issue 18).

    .venv/bin/python benchmarks/llamacpp_tune.py              # SmolLM2-135M Q8_0 and Q4_0; ~6 min on 2 cores
    .venv/bin/python benchmarks/llamacpp_tune.py --quants q8_0 --rounds 2

Per GGUF: ``runtime.tune.tune_llamacpp`` searches threads, batch sizes, flash attention and mmap from
the backend's ``DEFAULTS`` (what ``bench --tune`` does for a bundle); then three sides decode the same
prompt in interleaved rounds: plain ``llama_cpp.Llama`` with llama-cpp-python's own defaults (only
``model_path`` and ``n_ctx`` given), our backend at ``DEFAULTS``, and our backend at the tuned
settings. Each side's decode tokens/s is also given as a share of the roofline: the measured read
bandwidth (all CPUs) over the bytes of weights read per token. Writes results/llamacpp_tune.json.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _exports import cached_exports  # noqa: E402
from runtime_overhead import fixed_prompt, interleave, ours, raw_llama, summarise  # noqa: E402

from edge_downscale import __version__  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402

MODEL = "smollm2-135m"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quants", default="q8_0,q4_0")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per timed generation")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the final comparison")
    ap.add_argument("--tune-rounds", type=int, default=3, help="rounds per candidate while tuning")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--out", default="results/llamacpp_tune.json")
    args = ap.parse_args()

    import llama_cpp

    from edge_downscale.artifacts import model_file
    from edge_downscale.runtime.llamacpp import DEFAULTS, LlamaCppBackend
    from edge_downscale.runtime.roofline import memory_bandwidth, roofline_tok_s, weight_bytes_per_token
    from edge_downscale.runtime.tune import tune_llamacpp

    t0 = time.perf_counter()
    from edge_downscale.export import EXPORT_FORMATS

    quants = [q for q in args.quants.split(",") if q]
    bad = [q for q in quants if q not in EXPORT_FORMATS["gguf"]]
    if bad or not quants:
        ap.error(f"unknown GGUF type(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(EXPORT_FORMATS['gguf'])}")
    arts = cached_exports(MODEL, "gguf", quants)
    threads = os.cpu_count() or 1
    bandwidth = memory_bandwidth(threads)
    print(f"read bandwidth ({threads} threads): {bandwidth / 1e9:.1f} GB/s", flush=True)
    prompt = fixed_prompt()
    out = {}
    for q in quants:
        path = model_file(arts[q])
        print(f"tuning {q}", flush=True)
        tuned = tune_llamacpp(path, options={"n_ctx": args.n_ctx}, rounds=args.tune_rounds,
                              progress=lambda m: print(f"  {m}", flush=True))
        plain = llama_cpp.Llama(model_path=str(path), n_ctx=args.n_ctx, verbose=False)
        ours_default = LlamaCppBackend(path, n_ctx=args.n_ctx)
        ours_tuned = LlamaCppBackend(path, **{**tuned.fixed_options, **tuned.best_options})
        first = ours(ours_default, prompt, args.tokens)
        n = len(first["tokens"])
        prompt_ids = ours_default.prompt_ids(prompt, args.tokens)[0]
        sides = {"llama-cpp-python defaults": lambda: raw_llama(plain, prompt_ids, n),
                 "ours, DEFAULTS": lambda: ours(ours_default, prompt, args.tokens),
                 "ours, tuned": lambda: ours(ours_tuned, prompt, args.tokens)}
        print(f"comparing {', '.join(sides)}: {args.tokens} tokens x {args.rounds} rounds", flush=True)
        s = summarise(interleave(sides, args.rounds), base="llama-cpp-python defaults")
        bytes_per_token = weight_bytes_per_token(path)
        bound = roofline_tok_s(bytes_per_token, bandwidth)
        for row in s.values():
            row["roofline_share"] = row["decode_tok_s"] / bound
        out[q] = {"tune": tuned.to_dict(), "compare": s, "bytes_per_token": bytes_per_token, "roofline_tok_s": bound,
                  "llama_cpp_python_defaults": {"n_threads": plain.context_params.n_threads,
                                                "n_batch": plain.context_params.n_batch,
                                                "n_ubatch": plain.context_params.n_ubatch}}
        for b in (ours_default, ours_tuned):
            b.close()
        plain.close()

    table = [["GGUF", "side", "settings", "decode tok/s", "x llama-cpp-python defaults", "% of roofline"]]
    for q, r in out.items():
        settings = {"llama-cpp-python defaults": r["llama_cpp_python_defaults"],
                    "ours, DEFAULTS": {k: v for k, v in r["tune"]["default_options"].items()},
                    "ours, tuned": r["tune"]["changed"] or "as DEFAULTS"}
        for name, row in r["compare"].items():
            table.append([q, name, str(settings[name]), f"{row['decode_tok_s']:.1f}", f"{row.get('ratio', 1.0):.2f}",
                          f"{row['roofline_share']:.0%}"])
    print()
    print(markdown_table(table))
    for q, r in out.items():
        print(f"{q}: {r['bytes_per_token'] / 1e6:.1f} MB read per token, roofline {r['roofline_tok_s']:.0f} tok/s; "
              f"tuning took {r['tune']['seconds']:.0f} s and changed {r['tune']['changed'] or 'nothing'}")
    result = {"version": __version__, "model": MODEL, "machine": platform.processor() or platform.machine(),
              "cpu_count": threads, "defaults": DEFAULTS, "read_bandwidth_bytes_s": bandwidth, "args": vars(args),
              "results": out, "seconds": round(time.perf_counter() - t0, 1)}
    write_result(args.out, result)
    print(f"{result['seconds'] / 60:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
