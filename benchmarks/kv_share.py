"""The fused ONNX graph decoding in one shared KV buffer against copying the cache every step (issue 18).

    .venv/bin/python benchmarks/kv_share.py                  # fp32 and int4, 5 rounds, about 3 min on 2 cores

Both sides are our ``OnnxBackend`` on the same cached fused export; one has ``shares_kv_buffer`` off,
so it binds a fresh ``present.*`` each step (the loop optimum's graphs need). 128 greedy tokens after
a 145-token prompt, sides alternating round by round after a warm-up; the ratio is the median of
per-round ratios. Writes results/kv_share.json.
"""
from __future__ import annotations

import argparse
import os
import sys
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
    write_result(args.out, {"model": MODEL, "args": vars(args), "decode": result,
                            "seconds": round(time.perf_counter() - t0, 1)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
