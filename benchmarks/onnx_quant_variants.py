"""Why the ONNX quantisation defaults are what they are: the parity gate's numbers per variant.

    .venv/bin/python benchmarks/onnx_quant_variants.py     # ~15 min on 2 cores

One fp32 export of SmolLM2-135M, then int8 and int4 variants (the exporter's, and onnxruntime's
dynamic int8 it no longer uses), each scored against the torch source on the same held-out `docs`
text as the export gate: bits-per-byte, mean KL, whether the gate passes; plus greedy decode
tokens/s (64 tokens, best of 2, variants interleaved). Writes results/onnx_quant_variants.json.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _exports import dynamic_int8  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.config import EvalConfig  # noqa: E402
from edge_downscale.data import heldout_texts  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402
from edge_downscale.export import source_directory  # noqa: E402
from edge_downscale.export.onnx import export_onnx, onnx_bytes, quantize_onnx  # noqa: E402
from edge_downscale.export.parity import check_parity  # noqa: E402
from edge_downscale.models.torch_backend import TorchBackend  # noqa: E402
from edge_downscale.runtime.onnx import OnnxBackend  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/onnx_quant_variants.json")
    texts, _ = heldout_texts("docs", EvalConfig(max_bytes=6000))
    src = source_directory("smollm2-135m")
    work = Path(tempfile.mkdtemp(prefix="onnx-variants-"))
    base = export_onnx(src, work / "fp32")
    source = TorchBackend.from_ref(str(src), context_length=512)
    variants = {  # name -> (gate type, how to make it)
        "fp32": ("fp32", lambda d: shutil.copytree(base, d)),
        "int8 default (weight-only 8-bit, block 32, int8 compute)": ("int8", lambda d: quantize_onnx(base, d, "int8")),
        "int8 weight-only 8-bit, float compute": ("int8", lambda d: quantize_onnx(base, d, "int8", accuracy_level=0)),
        "dynamic int8, full-range weights, down_proj float (the old default)":
            ("int8", lambda d: dynamic_int8(base, d, reduce_range=False)),
        "dynamic int8, 7-bit weights, down_proj float": ("int8", lambda d: dynamic_int8(base, d, reduce_range=True)),
        "dynamic int8, 7-bit weights, down_proj quantised too":
            ("int8", lambda d: dynamic_int8(base, d, reduce_range=True, keep_float=())),
        "dynamic int8, 7-bit weights, embedding quantised too":
            ("int8", lambda d: dynamic_int8(base, d, reduce_range=True, op_types=None)),
        "int4 default (symmetric, block 32)": ("int4", lambda d: quantize_onnx(base, d, "int4")),
        "int4 asymmetric, block 32": ("int4", lambda d: quantize_onnx(base, d, "int4", symmetric=False)),
        "int4 asymmetric, block 32, down_proj float":
            ("int4", lambda d: quantize_onnx(base, d, "int4", symmetric=False, keep_float=("down_proj",))),
    }
    rows, dirs = [], {}
    for i, (name, (gate, make)) in enumerate(variants.items()):
        d = dirs[name] = work / f"v{i}"
        make(d)
        with OnnxBackend(d) as backend:
            r = check_parity(source, backend, texts, gate)
        rows.append({"variant": name, "gate": gate, "bpb": r.export_bpb, "delta": r.bpb_rel_delta, "kl": r.mean_kl,
                     "passed": r.passed, "mb": onnx_bytes(d) / 1e6, "source_bpb": r.source_bpb})
        print(f"{name}: {r.summary()}, {onnx_bytes(d) / 1e6:.1f} MB", flush=True)
    ids = OnnxBackend(base).tokenize(texts[0])[:32]
    speed = {name: 0.0 for name in variants}
    for _ in range(2):  # interleaved rounds: machine noise hits every variant alike
        for name, d in dirs.items():
            with OnnxBackend(d) as backend:
                t0 = time.perf_counter()
                backend.greedy(ids, 64)
                speed[name] = max(speed[name], 64 / (time.perf_counter() - t0))
    for r in rows:
        r["decode_tok_s"] = speed[r["variant"]]
    ref = rows[0]["source_bpb"]
    print(f"\ntorch source: {ref:.4f} bits/byte on {sum(len(t.encode()) for t in texts)} held-out docs bytes\n")
    print(markdown_table([["variant", "bits/byte", "vs torch", "KL", "gate", "MB", "decode tok/s"]]
                         + [[r["variant"], f"{r['bpb']:.4f}", f"{r['delta']:+.2%}", f"{r['kl']:.4f}",
                             "pass" if r["passed"] else "FAIL", f"{r['mb']:.1f}", f"{r['decode_tok_s']:.1f}"]
                            for r in rows]))
    write_result(out, {"source_bpb": ref, "rows": rows})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
