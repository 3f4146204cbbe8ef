"""Why ONNX int8 is not dynamic quantisation: full-range int8 weights saturate on x86 CPUs without VNNI.

    .venv/bin/python benchmarks/int8_saturation.py       # ~5 min on 2 cores; needs qemu-user (apt-get install qemu-user)

onnxruntime's uint8 x int8 MatMul kernels for AVX2 and AVX-512F (no VNNI) add pairs of byte products
with VPMADDUBSW into 16 bits, which saturate when activations and weights are both large; VNNI and
AMX kernels accumulate in 32 bits. The same int8 file can therefore score well on one machine and
badly on another. This script exports SmolLM2-135M once, quantises it with dynamic int8 (full-range
and 7-bit weights) and with the exporter's int8 (weight-only MatMulNBits, int8 compute), and scores
every file on the same held-out tokens twice: on this CPU, and under ``qemu-x86_64 -cpu max`` (an
emulated CPU with AVX2 but no AVX-512 and no VNNI), where onnxruntime picks its AVX2 kernels.
Writes results/int8_saturation.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _exports import dynamic_int8  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402

EMULATOR = ("qemu-x86_64", "-cpu", "max")


def score(dirs: list[str], text: str, n_tokens: int) -> dict[str, float]:
    """Mean next-token NLL (nats) of each ONNX directory on the first ``n_tokens`` tokens of ``text``."""
    import numpy as np

    from edge_downscale.runtime.base import log_softmax
    from edge_downscale.runtime.onnx import OnnxBackend

    out = {}
    for d in dirs:
        with OnnxBackend(d) as backend:
            ids = (backend.prefix_ids + backend.tokenize(text))[:n_tokens]
            logp = log_softmax(backend.logits(ids))  # (T, V)
        target = np.asarray(ids[1:])
        out[d] = float(-logp[np.arange(len(target)), target].mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", default="results/int8_saturation.json")
    ap.add_argument("--score", nargs="+", help=argparse.SUPPRESS)  # child mode: score these dirs, print JSON
    ap.add_argument("--text-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.score:
        print(json.dumps(score(args.score, Path(args.text_file).read_text(encoding="utf-8"), args.tokens)))
        return

    from edge_downscale.config import EvalConfig
    from edge_downscale.data import heldout_texts
    from edge_downscale.eval import markdown_table
    from edge_downscale.export import source_directory
    from edge_downscale.export.onnx import export_onnx, quantize_onnx

    if shutil.which(EMULATOR[0]) is None:
        sys.exit(f"error: {EMULATOR[0]} not found: apt-get install qemu-user (it emulates a CPU without VNNI)")
    texts, _ = heldout_texts("docs", EvalConfig(max_bytes=6000))
    work = Path(tempfile.mkdtemp(prefix="int8-saturation-"))
    try:
        text_file = work / "text.txt"
        text_file.write_text("\n\n".join(texts), encoding="utf-8")
        base = export_onnx(source_directory("smollm2-135m"), work / "fp32")
        variants = {"fp32": base,
                    "dynamic int8, full 8-bit weights": dynamic_int8(base, work / "dyn-full", reduce_range=False),
                    "dynamic int8, 7-bit weights": dynamic_int8(base, work / "dyn-7bit", reduce_range=True),
                    "int8 (exporter default: weight-only, int8 compute)": quantize_onnx(base, work / "int8", "int8")}
        dirs = [str(d) for d in variants.values()]
        native = score(dirs, text_file.read_text(encoding="utf-8"), args.tokens)
        t0 = time.perf_counter()
        child = subprocess.run([*EMULATOR, sys.executable, __file__, "--tokens", str(args.tokens),
                                "--text-file", str(text_file), "--score", *dirs],
                               capture_output=True, text=True, check=True)
        emulated = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"emulated run: {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    from edge_downscale._env import cpu_info

    rows = [{"variant": name, "native_nll": native[str(d)], "emulated_nll": emulated[str(d)]}
            for name, d in variants.items()]
    flags = ",".join(f for f in cpu_info()["flags"] if "vnni" in f or "amx" in f) or "no VNNI/AMX"
    print(markdown_table([["variant", f"this CPU ({flags}) nats/token", "emulated AVX2, no VNNI", "ratio"]]
                         + [[r["variant"], f"{r['native_nll']:.4f}", f"{r['emulated_nll']:.4f}",
                             f"{r['emulated_nll'] / r['native_nll']:.2f}x"] for r in rows]))
    write_result(args.out, {"tokens": args.tokens, "emulator": " ".join(EMULATOR), "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
