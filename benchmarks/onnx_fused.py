"""The fused ONNX graph against optimum's and against llama.cpp, on SmolLM2-135M (CPU; issue 18).

    .venv/bin/python benchmarks/onnx_fused.py            # about 15 min on 2 cores
    .venv/bin/python benchmarks/onnx_fused.py --quick    # smoke run: int8 only, 32 tokens, 2 rounds, no variants

In one run:

1. Quality. Every ONNX artifact is scored by the export's own parity gate (bits-per-byte delta and
   mean KL against the torch source on held-out ``docs`` text): optimum's graph at fp32/int8/int4
   (onnxruntime's quantiser), the fused graph (onnxruntime-genai's model builder) at fp32/int8/int4,
   and the int4/int8 variants of ``VARIANTS`` and ``GPTQ_VARIANTS`` (block size, accuracy level, rounding, which
   matrices stay at 8 bits).
2. Decode. Per quantisation, four sides interleaved round by round (after a warm-up): our runtime on
   the fused graph, our runtime on optimum's graph, optimum's ``ORTModelForCausalLM.generate`` on
   optimum's graph, and llama.cpp (our runtime) on the GGUF of comparable bits (fp32 ~ F32, int8 ~
   Q8_0, int4 ~ Q4_0). Medians; ratios are medians of per-round ratios.
3. Roofline. Bytes of weights read per decoded token over the machine's measured read bandwidth
   (edge_downscale.runtime.roofline) bound decode tokens/s; each side's share of its bound.

Writes results/onnx_fused.json and prints the tables and the issue's targets.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _exports import artifact_bytes, cached_exports  # noqa: E402
from runtime_overhead import fixed_prompt, interleave, optimum_generate, ours, summarise  # noqa: E402

from edge_downscale import __version__  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402

MODEL = "smollm2-135m"
GGUF_PEER = {"fp32": "f32", "int8": "q8_0", "int4": "q4_0"}
# The first fused int4 default: round-to-nearest, the LM head at 8 bits. Variants spell out every option the
# defaults set, so a variant means the same thing whatever FUSED_OPTIONS becomes.
RTN = {"block_size": "32", "accuracy_level": "4", "algo_config": "rtn", "matmul_mixed_precision": "last_matmul:int8",
       "shared_embeddings": "false"}
KQ_MIXED = {**RTN, "algo_config": "k_quant", "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"}
# name -> (quant, builder options over FUSED_OPTIONS); the fused defaults are the rows "fused <quant>"
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "int8 float compute": ("int8", {"accuracy_level": "1"}),
    "int4 RTN, head 8-bit": ("int4", RTN),
    "int4 RTN, float compute": ("int4", {**RTN, "accuracy_level": "1"}),
    "int4 RTN, all 4-bit (head too)": ("int4", {**RTN, "matmul_mixed_precision": "", "shared_embeddings": "true"}),
    "int4 RTN, block 16": ("int4", {**RTN, "block_size": "16"}),
    "int4 k-quant, head 8-bit": ("int4", {**RTN, "algo_config": "k_quant"}),
    "int4 k-quant, head and mixed layers 8-bit, no GPTQ": ("int4", KQ_MIXED),
    "int4 k-quant, head and mixed layers 8-bit, block 16": ("int4", {**KQ_MIXED, "block_size": "16"}),
    "int4 k-quant, head and mixed layers 8-bit, asymmetric": ("int4", {**KQ_MIXED, "is_symmetric": "false"}),
}
# name -> (quant, builder options): the builder's layout, then its 4-bit weights refit by GPTQ (as the default is)
GPTQ_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "int4 GPTQ, head 8-bit only (k-quant layout)": ("int4", {**RTN, "algo_config": "k_quant"}),
}
TARGETS = {"vs_optimum_generate": 2.0, "vs_llamacpp": 0.8, "int8_bpb": 0.02, "int8_kl": 0.05, "int4_bpb": 0.04}


def parity_rows(arts: dict[str, tuple[str, Path]], src: Path, max_bytes: int) -> list[dict]:
    """The parity gate's numbers for every ONNX artifact, against one torch source."""
    from edge_downscale.config import EvalConfig
    from edge_downscale.data import heldout_texts
    from edge_downscale.export import check_parity
    from edge_downscale.models.torch_backend import TorchBackend
    from edge_downscale.runtime import open_artifact

    texts, _ = heldout_texts("docs", EvalConfig(max_bytes=max_bytes))
    source = TorchBackend.from_ref(str(src), context_length=512)
    rows = []
    for name, (quant, art) in arts.items():
        with open_artifact(art) as exported:
            r = check_parity(source, exported, texts, quant)
        rows.append({"artifact": name, "quant": quant, "mb": artifact_bytes(art) / 1e6, **r.to_dict()})
        print(f"  {name}: {r.summary()}", flush=True)
    return rows


def decode_rows(quants, fused, optimum, gguf, prompt, n_new, rounds, bandwidth) -> dict:
    from optimum.onnxruntime import ORTModelForCausalLM

    from edge_downscale.artifacts import model_file
    from edge_downscale.runtime import open_artifact
    from edge_downscale.runtime.roofline import roofline_tok_s, weight_bytes_per_token

    out = {}
    for q in quants:
        backends = {"fused": open_artifact(fused[q]), "optimum graph": open_artifact(optimum[q]),
                    f"llama.cpp {GGUF_PEER[q]}": open_artifact(gguf[GGUF_PEER[q]], n_ctx=2048)}
        opt = ORTModelForCausalLM.from_pretrained(optimum[q], file_name=model_file(optimum[q]).name, use_cache=True,
                                                  provider="CPUExecutionProvider")
        first = ours(backends["fused"], prompt, n_new)
        n = len(first["tokens"])
        prompt_ids = backends["fused"].prompt_ids(prompt, n_new)[0]
        sides = {name: (lambda b=b: ours(b, prompt, n_new)) for name, b in backends.items()}
        sides["optimum generate"] = lambda: optimum_generate(opt, prompt_ids, n)
        print(f"decode {q}: {', '.join(sides)}; {n_new} tokens x {rounds} rounds", flush=True)
        s = summarise(interleave(sides, rounds), base="optimum generate")
        paths = {"fused": fused[q], "optimum graph": optimum[q], f"llama.cpp {GGUF_PEER[q]}": gguf[GGUF_PEER[q]],
                 "optimum generate": optimum[q]}
        for name, row in s.items():
            row["bytes_per_token"] = weight_bytes_per_token(paths[name])  # an export directory of either format
            row["roofline_tok_s"] = roofline_tok_s(row["bytes_per_token"], bandwidth)
            row["roofline_share"] = row["decode_tok_s"] / row["roofline_tok_s"]
        gg = f"llama.cpp {GGUF_PEER[q]}"
        s["fused"]["vs_llamacpp"] = s["fused"]["decode_tok_s"] / s[gg]["decode_tok_s"]
        s["same_tokens"] = first["tokens"] == optimum_generate(opt, prompt_ids, n)["tokens"]
        out[q] = s
        for b in backends.values():
            b.close()
        del opt
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quants", default="fp32,int8,int4")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per generation (greedy)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per quantisation (after 1 warm-up)")
    ap.add_argument("--max-bytes", type=int, default=6000, help="held-out docs bytes the parity gate scores")
    ap.add_argument("--no-variants", action="store_true", help="skip the int4/int8 variants")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="results/onnx_fused.json")
    args = ap.parse_args()
    if args.quick:
        args.quants, args.tokens, args.rounds, args.no_variants, args.max_bytes = "int8", 32, 2, True, 2000
    quants = [q for q in args.quants.split(",") if q]
    bad = [q for q in quants if q not in GGUF_PEER]
    if bad:
        ap.error(f"unknown quantisation {', '.join(bad)}; choose from {', '.join(GGUF_PEER)}")

    from edge_downscale.export import source_directory
    from edge_downscale.export.onnx import export_onnx_fused
    from edge_downscale.runtime.roofline import memory_bandwidth

    t0 = time.perf_counter()
    src = source_directory(MODEL)
    fused = cached_exports(MODEL, "onnx", quants, onnx_graph="fused")
    optimum = cached_exports(MODEL, "onnx", quants, onnx_graph="optimum")
    gguf = cached_exports(MODEL, "gguf", [GGUF_PEER[q] for q in quants])
    arts = {**{f"optimum {q}": (q, optimum[q]) for q in quants}, **{f"fused {q}": (q, fused[q]) for q in quants}}
    work = Path(tempfile.mkdtemp(prefix="onnx_fused-"))
    try:
        if not args.no_variants:
            from edge_downscale.export import ExportConfig
            from edge_downscale.export.api import calibration_texts

            calibration = calibration_texts(ExportConfig(out_dir="-", format="onnx", quants="int4"))  # export_model's
            for name, (q, options) in {**VARIANTS, **GPTQ_VARIANTS}.items():
                print(f"exporting the variant {name}", flush=True)
                texts = calibration if name in GPTQ_VARIANTS else None
                arts[name] = (q, export_onnx_fused(src, work / name.replace(" ", "_").replace(",", ""), q, options=options,
                                                   gptq_texts=texts, log=lambda m: None))
        print("parity against the torch source", flush=True)
        quality = parity_rows(arts, src, args.max_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    threads = os.cpu_count() or 1
    bandwidth = {"1": memory_bandwidth(1), str(threads): memory_bandwidth(threads)}
    print(f"read bandwidth: {bandwidth['1'] / 1e9:.1f} GB/s (1 thread), {bandwidth[str(threads)] / 1e9:.1f} GB/s "
          f"({threads} threads)", flush=True)
    decode = decode_rows(quants, fused, optimum, gguf, fixed_prompt(), args.tokens, args.rounds,
                         bandwidth[str(threads)])

    targets = {}
    for q, s in decode.items():
        targets[f"{q} fused vs optimum generate >= {TARGETS['vs_optimum_generate']}x"] = s["fused"]["ratio"] >= TARGETS["vs_optimum_generate"]
        if q != "fp32":
            targets[f"{q} fused vs llama.cpp {GGUF_PEER[q]} >= {TARGETS['vs_llamacpp']}x"] = s["fused"]["vs_llamacpp"] >= TARGETS["vs_llamacpp"]
    by_name = {r["artifact"]: r for r in quality}
    if "fused int8" in by_name:
        r = by_name["fused int8"]
        targets["fused int8 bpb <= 2% and KL <= 0.05"] = r["bpb_rel_delta"] <= TARGETS["int8_bpb"] and r["mean_kl"] <= TARGETS["int8_kl"]
    if "fused int4" in by_name:
        targets["fused int4 bpb <= 4%"] = by_name["fused int4"]["bpb_rel_delta"] <= TARGETS["int4_bpb"]

    result = {"version": __version__, "model": MODEL, "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "args": vars(args), "read_bandwidth_bytes_s": bandwidth,
              "quality": quality, "decode": decode, "targets": targets, "seconds": round(time.perf_counter() - t0, 1)}
    print()
    table = [["artifact", "MB", "bpb", "vs torch", "KL", "gate"]]
    for r in quality:
        table.append([r["artifact"], f"{r['mb']:.1f}", f"{r['export_bpb']:.4f}", f"{r['bpb_rel_delta']:+.2%}",
                      f"{r['mean_kl']:.4f}", "pass" if r["passed"] else "FAIL"])
    print(markdown_table(table))
    table = [["quant", "side", "decode tok/s", "x optimum generate", "MB read / token", "roofline tok/s", "% of roofline"]]
    for q, s in decode.items():
        for name, row in s.items():
            if not isinstance(row, dict):
                continue
            table.append([q, name, f"{row['decode_tok_s']:.1f}", f"{row.get('ratio', 1.0):.2f}",
                          f"{row['bytes_per_token'] / 1e6:.1f}", f"{row['roofline_tok_s']:.1f}",
                          f"{row['roofline_share']:.0%}"])
    print()
    print(markdown_table(table))
    print(f"\ntargets: {targets}")
    write_result(args.out, result)
    print(f"{result['seconds'] / 60:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
