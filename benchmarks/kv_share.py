"""The fused ONNX graph decoding in one shared KV buffer against copying the cache every step (issue 18).

    .venv/bin/python benchmarks/kv_share.py                  # fp32 and int4, 5 rounds, about 3 min on 2 cores

Both sides are our ``OnnxBackend`` on the same cached fused export; one has ``shares_kv_buffer`` off,
so it binds a fresh ``present.*`` each step (the loop optimum's graphs need). 128 greedy tokens after
a 145-token prompt, sides alternating round by round after a warm-up; the ratio is the median of
per-round ratios. Then one generation of each side under onnxruntime's profiler: the median time per
decode step, and what each operator type takes of it. Writes results/kv_share.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _exports import cached_exports  # noqa: E402
from runtime_overhead import fixed_prompt, interleave, ours, summarise  # noqa: E402

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402

MODEL = "smollm2-135m"


def op_profile(art: Path, shared: bool, prompt: str, n_new: int) -> dict:
    """Median ms per decode step (prompt pass excluded) and mean ms per step by operator type, from
    onnxruntime's own profile of one generation (profiling adds a little time to every node)."""
    import onnxruntime as ort

    from edge_downscale.runtime.onnx import OnnxBackend

    with tempfile.TemporaryDirectory(prefix="kv-profile-") as tmp, _profiled(ort, tmp):
        backend = OnnxBackend(art)
        backend.shares_kv_buffer = shared
        ours(backend, prompt, n_new)
        events = json.loads(Path(backend._session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    steps = runs[1:]  # the first run is the prompt
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > runs[0][1]:
            by_op[e["args"]["op_name"]] = by_op.get(e["args"]["op_name"], 0.0) + e["dur"] / 1000 / len(steps)
    return {"step_ms": statistics.median((b - a) / 1000 for a, b in steps),
            "op_ms_per_step": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}


@contextlib.contextmanager
def _profiled(ort, folder: str):
    """OnnxBackend sessions made inside profile into ``folder``."""
    from edge_downscale.runtime.onnx import OnnxBackend

    original = OnnxBackend._session_options

    def options(ort_, n_threads):
        opts = original(ort_, n_threads)
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(folder) / "ort")
        return opts

    OnnxBackend._session_options = staticmethod(options)
    try:
        yield
    finally:
        OnnxBackend._session_options = staticmethod(original)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quants", default="fp32,int4")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="results/kv_share.json")
    args = ap.parse_args()
    from edge_downscale.runtime.onnx import OnnxBackend

    t0 = time.perf_counter()
    quants = [q for q in args.quants.split(",") if q]
    arts = cached_exports(MODEL, "onnx", quants, onnx_graph="fused")
    prompt, result, table = fixed_prompt(), {}, [["quant", "side", "decode tok/s", "ratio", "same tokens"]]
    for q in quants:
        shared, copying = OnnxBackend(arts[q]), OnnxBackend(arts[q])
        copying.shares_kv_buffer = False
        runs = interleave({"shared buffer": lambda: ours(shared, prompt, args.tokens),
                           "copying": lambda: ours(copying, prompt, args.tokens)}, args.rounds)
        s = summarise(runs, base="copying")
        same = all(a["tokens"] == b["tokens"] for a, b in zip(runs["shared buffer"], runs["copying"]))
        result[q] = {**s, "same_tokens": same}
        for side, row in s.items():
            table.append([q, side, f"{row['decode_tok_s']:.1f}", f"{row.get('ratio', 1.0):.2f}", str(same)])
    print(markdown_table(table))
    profile = {q: {side: op_profile(arts[q], side == "shared buffer", prompt, args.tokens)
                   for side in ("shared buffer", "copying")} for q in quants}
    table = [["quant", "side", "ms / decode step (profiled)", "top operators, ms / step"]]
    for q, sides in profile.items():
        for side, p in sides.items():
            top = ", ".join(f"{op} {ms:.2f}" for op, ms in list(p["op_ms_per_step"].items())[:3])
            table.append([q, side, f"{p['step_ms']:.2f}", top])
    print(markdown_table(table))
    write_result(args.out, {"model": MODEL, "args": vars(args), "decode": result, "profile": profile,
                            "seconds": round(time.perf_counter() - t0, 1)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
