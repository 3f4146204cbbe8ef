"""Export matrix: SmolLM2-135M dense and its 30% PruneNet student, each format x quantisation.

    .venv/bin/python benchmarks/export_matrix.py             # ~15 min on 2 cores
    .venv/bin/python benchmarks/export_matrix.py --quick     # dense only, GGUF f32/q8_0, ONNX int8

Per artifact: file size, bits-per-byte delta vs the torch source and mean KL (the parity gate's
numbers, on held-out `docs` text), load time, prefill and decode tokens/s on CPU (llama.cpp for
GGUF, onnxruntime for ONNX), all in one run. Writes results/export_matrix.json.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402
from edge_downscale.artifacts import model_file  # noqa: E402
from edge_downscale.export import ExportConfig, export_model, source_directory  # noqa: E402

PROMPT = open(Path(__file__).resolve().parents[1] / "edge_downscale" / "eval" / "bpb.py").read()


def gguf_speed(path: Path, n_prompt: int = 256, n_new: int = 64) -> dict:
    """llama.cpp: load seconds, prefill tok/s over n_prompt tokens, greedy decode tok/s over n_new."""
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_prompt + n_new + 8, n_batch=512,
                          n_threads=os.cpu_count(), verbose=False)
    load = time.perf_counter() - t0
    ids = llm.tokenize(PROMPT.encode(), add_bos=False)[:n_prompt]
    prefill = []
    for _ in range(2):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        prefill.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    n = 0
    for _ in llm.generate(ids[:16], temp=0.0, reset=True):
        n += 1
        if n == n_new:
            break
    decode = time.perf_counter() - t0  # includes a 16-token prefill, negligible
    llm.close()
    return {"load_s": load, "prefill_tok_s": n_prompt / min(prefill), "decode_tok_s": n_new / decode}


def onnx_speed(model_dir: Path, n_prompt: int = 256, n_new: int = 64) -> dict:
    """onnxruntime: load seconds, prefill tok/s, greedy decode tok/s with the KV cache."""
    from edge_downscale.runtime.onnx import OnnxBackend

    t0 = time.perf_counter()
    backend = OnnxBackend(model_dir)
    load = time.perf_counter() - t0
    ids = backend.tokenize(PROMPT)[:n_prompt]
    prefill = []
    for _ in range(2):
        t0 = time.perf_counter()
        backend.logits(ids)
        prefill.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    backend.greedy(ids[:16], n_new)
    decode = time.perf_counter() - t0
    return {"load_s": load, "prefill_tok_s": n_prompt / min(prefill), "decode_tok_s": n_new / decode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--gguf", default="f32,q8_0,q6_k,q4_k_m,q4_0")
    ap.add_argument("--onnx", default="fp32,int8,int4")
    ap.add_argument("--student-ratio", type=float, default=0.3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="results/export_matrix.json")
    args = ap.parse_args()
    if args.quick:
        args.gguf, args.onnx = "f32,q8_0", "int8"

    from edge_downscale.compress.prune import PruneNetConfig, learn_policy, prune_, save_pruned
    from edge_downscale.models import load_torch

    work = Path(tempfile.mkdtemp(prefix="export-matrix-"))
    sources = {"dense": source_directory(args.model)}
    if not args.quick:
        model, tok, _ = load_torch(args.model)
        policy = learn_policy(model, PruneNetConfig(seed=0), ratio=args.student_ratio, progress=False)
        student = copy.deepcopy(model)
        prune_(student, policy, args.student_ratio)
        sources[f"prunenet-{args.student_ratio:.0%}"] = save_pruned(student, tok, work / "student", {})
        del model, student

    rows = []
    for name, src in sources.items():
        for fmt, quants in (("gguf", args.gguf), ("onnx", args.onnx)):
            if not quants:
                continue
            out = work / f"{name}-{fmt}"
            manifests = export_model(str(src), ExportConfig(out_dir=out, format=fmt, quants=quants, allow_degraded=True))
            for m in manifests:
                art = out / f"{fmt}-{m['quantization']}"
                speed = gguf_speed(model_file(art)) if fmt == "gguf" else onnx_speed(art)
                p = m["parity"]
                rows.append({"model": name, "format": fmt, "quant": m["quantization"], "bytes": m["total_bytes"],
                             "source_bpb": p["source_bpb"], "bpb": p["export_bpb"], "bpb_delta": p["bpb_rel_delta"],
                             "kl": p["mean_kl"], "gate": [p["max_bpb_rel_delta"], p["max_kl"]], "passed": p["passed"],
                             **speed})
                print(f"{name} {fmt} {m['quantization']}: {m['total_bytes'] / 1e6:.1f} MB, bpb {p['bpb_rel_delta']:+.2%}, "
                      f"KL {p['mean_kl']:.4f}, decode {speed['decode_tok_s']:.1f} tok/s", flush=True)

    f32 = {r["model"]: r["bytes"] for r in rows if r["quant"] == "f32"}
    table = [["model", "format", "quant", "MB", "x F32 size", "bpb", "bpb delta", "KL", "gate", "load s", "prefill tok/s", "decode tok/s"]]
    for r in rows:
        table.append([r["model"], r["format"], r["quant"], f"{r['bytes'] / 1e6:.1f}",
                      f"{r['bytes'] / f32[r['model']]:.2f}" if r["model"] in f32 else "-", f"{r['bpb']:.4f}",
                      f"{r['bpb_delta']:+.2%}", f"{r['kl']:.4f}", "pass" if r["passed"] else "FAIL",
                      f"{r['load_s']:.2f}", f"{r['prefill_tok_s']:.0f}", f"{r['decode_tok_s']:.1f}"])
    print()
    print(markdown_table(table))
    names = list(sources)
    speedups = {}
    if len(names) > 1:
        # Dedicated student-vs-dense decode comparison: alternate the two models, best of 5 each,
        # so machine noise hits both alike (single 64-token runs above vary by +-20% here).
        for q in [q for q in ("q8_0", "q4_k_m", "q4_0") if q in args.gguf.split(",")]:
            paths = [model_file(work / f"{n}-gguf" / f"gguf-{q}") for n in names[:2]]
            best = [0.0, 0.0]
            for _ in range(5):
                for i, path in enumerate(paths):
                    best[i] = max(best[i], gguf_speed(path, n_prompt=32, n_new=128)["decode_tok_s"])
            speedups[q] = {"dense_tok_s": best[0], "student_tok_s": best[1], "speedup": best[1] / best[0]}
            print(f"{names[1]} vs {names[0]} greedy decode, GGUF {q}, best of 5 alternating: "
                  f"{best[1]:.1f} vs {best[0]:.1f} tok/s = {best[1] / best[0]:.2f}x", flush=True)
    write_result(args.out, {"rows": rows, "student_decode_speedup": speedups})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
