"""Why llama.cpp decode stays far under the memory roofline on few cores: thread scaling, and two builds (issue 18).

    .venv/bin/python benchmarks/llamacpp_threads.py                                   # about 3 min on 2 cores
    .venv/bin/python benchmarks/llamacpp_threads.py --compare-wheel OTHER.whl         # + another llama-cpp-python build

1. Thread scaling. Per GGUF type, our LlamaCppBackend with 1 thread and with a thread per CPU,
   interleaved round by round: 128 greedy tokens after a 145-token prompt. A decode bound by memory
   gains little from a second thread (both share the bandwidth); one bound by arithmetic (dequantising,
   dot products) speeds up almost linearly. llama.cpp's own eval time per token (llama_perf_context) is
   reported next to the tokens/s our loop sees, so Python's share is visible. Each side's share of the
   memory roofline uses the read bandwidth measured here.
2. Builds (``--compare-wheel``). The installed llama-cpp-python against another wheel (say, built with
   other CMake flags), each in its own child process (one library per process), alternating
   installed / other ``--alternations`` times; the ratio is the median of per-alternation ratios.

Writes results/llamacpp_threads.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _exports import cached_exports  # noqa: E402
from runtime_overhead import fixed_prompt, interleave, ours  # noqa: E402

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402

MODEL = "smollm2-135m"


def timed(backend, prompt: str, n_new: int) -> dict:
    """``ours`` plus llama.cpp's own eval milliseconds per decoded token."""
    import llama_cpp

    ctx = backend._llm._ctx.ctx
    llama_cpp.llama_perf_context_reset(ctx)
    out = ours(backend, prompt, n_new)
    perf = llama_cpp.llama_perf_context(ctx)
    out["eval_ms_per_token"] = perf.t_eval_ms / max(perf.n_eval, 1)
    return out


def measure(quants: list[str], n_new: int, rounds: int) -> dict:
    """{quant: {threads: {decode_tok_s, eval_ms_per_token}}}, 1 thread against all, interleaved."""
    import llama_cpp

    from edge_downscale.runtime import open_artifact

    threads = sorted({1, os.cpu_count() or 1})
    arts = cached_exports(MODEL, "gguf", quants, log=lambda m: print(m, file=sys.stderr))
    prompt, out = fixed_prompt(), {"system_info": llama_cpp.llama_print_system_info().decode().strip()}
    for q in quants:
        backends = {t: open_artifact(arts[q], n_ctx=2048, n_threads=t) for t in threads}
        runs = interleave({str(t): (lambda b=b: timed(b, prompt, n_new)) for t, b in backends.items()}, rounds)
        out[q] = {t: {"decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
                      "eval_ms_per_token": statistics.median(r["eval_ms_per_token"] for r in rs),
                      "decode_tok_s_runs": [round(r["decode_tok_s"], 2) for r in rs]} for t, rs in runs.items()}
        for b in backends.values():
            b.close()
    return out


def child(args, pythonpath: str | None) -> dict:
    """``measure`` in a fresh interpreter (with ``pythonpath`` first on the import path, if given)."""
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    cmd = [sys.executable, __file__, "--child", "--quants", args.quants, "--tokens", str(args.tokens),
           "--rounds", str(args.rounds)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"llamacpp_threads: the measuring child failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quants", default="q8_0,q4_0,f32")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (after a warm-up)")
    ap.add_argument("--compare-wheel", type=Path, help="another llama-cpp-python wheel to time against the installed one")
    ap.add_argument("--alternations", type=int, default=3, help="installed/other child pairs with --compare-wheel")
    ap.add_argument("--out", default="results/llamacpp_threads.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    quants = [q for q in args.quants.split(",") if q]
    if args.child:
        print(json.dumps(measure(quants, args.tokens, args.rounds)))
        return
    if args.compare_wheel and not args.compare_wheel.is_file():
        ap.error(f"{args.compare_wheel}: no such wheel")

    from edge_downscale.runtime.roofline import memory_bandwidth, roofline_tok_s, weight_bytes_per_token

    t0 = time.perf_counter()
    threads = os.cpu_count() or 1
    bandwidth = memory_bandwidth(threads)
    arts = cached_exports(MODEL, "gguf", quants)
    result = {"model": MODEL, "args": {k: str(v) for k, v in vars(args).items()}, "read_bandwidth_bytes_s": bandwidth}
    runs = {"installed": [], "other": []}
    with tempfile.TemporaryDirectory(prefix="llama-wheel-") as other:
        if args.compare_wheel:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", other,
                            str(args.compare_wheel)], check=True)
        for _ in range(args.alternations if args.compare_wheel else 1):
            runs["installed"].append(child(args, None))
            if args.compare_wheel:
                runs["other"].append(child(args, other))
    table = [["build", "GGUF", "threads", "decode tok/s", "llama.cpp eval ms/token", "x 1 thread", "% of roofline"]]
    for build, rs in runs.items():
        if not rs:
            continue
        result[build] = {"system_info": rs[0]["system_info"], "runs": rs}
        for q in quants:
            bound = roofline_tok_s(weight_bytes_per_token(arts[q]), bandwidth)
            for t in rs[0][q]:
                tok_s = statistics.median(r[q][t]["decode_tok_s"] for r in rs)
                scale = statistics.median(r[q][t]["decode_tok_s"] / r[q]["1"]["decode_tok_s"] for r in rs)
                eval_ms = statistics.median(r[q][t]["eval_ms_per_token"] for r in rs)
                result[build].setdefault("summary", {}).setdefault(q, {})[t] = {
                    "decode_tok_s": tok_s, "eval_ms_per_token": eval_ms, "vs_1_thread": scale,
                    "roofline_tok_s": bound, "roofline_share": tok_s / bound}
                table.append([build, q, t, f"{tok_s:.1f}", f"{eval_ms:.2f}", f"{scale:.2f}", f"{tok_s / bound:.0%}"])
    if runs["other"]:
        result["other_vs_installed"] = {q: statistics.median(
            o[q][str(threads)]["decode_tok_s"] / i[q][str(threads)]["decode_tok_s"]
            for i, o in zip(runs["installed"], runs["other"])) for q in quants}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s ({threads} threads)")
    for build, rs in runs.items():
        if rs:
            print(f"{build}: {rs[0]['system_info']}")
    print(markdown_table(table))
    if "other_vs_installed" in result:
        print("other build / installed, decode at", threads, "threads:",
              {q: round(v, 3) for q, v in result["other_vs_installed"].items()})
    write_result(args.out, result)
    print(f"{result['seconds'] / 60:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
