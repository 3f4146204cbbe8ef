"""Why the ONNX quantisation defaults are what they are: bits-per-byte of SmolLM2-135M per variant.

    .venv/bin/python benchmarks/onnx_quant_variants.py     # ~4 min on 2 cores

One fp32 export, then int8 and int4 variants, each scored against the torch source on the same
held-out `docs` text as the export gate. Writes results/onnx_quant_variants.json.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.config import EvalConfig  # noqa: E402
from edge_downscale.data import heldout_texts  # noqa: E402
from edge_downscale.eval import bits_per_byte, markdown_table  # noqa: E402
from edge_downscale.export import source_directory  # noqa: E402
from edge_downscale.export.onnx import export_onnx, onnx_bytes, quantize_onnx  # noqa: E402
from edge_downscale.models.torch_backend import TorchBackend  # noqa: E402
from edge_downscale.runtime.onnx import OnnxBackend  # noqa: E402


def int8_with_embedding(src: Path, dst: Path) -> None:
    """Plain dynamic int8 of every quantisable op (the embedding Gather included), down_proj float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edge_downscale.export.onnx import _float_nodes

    shutil.copytree(src, dst)
    (dst / "model.onnx").unlink()
    exclude = _float_nodes(onnx.load(str(src / "model.onnx"), load_external_data=False), ("down_proj",))
    quantize_dynamic(str(src / "model.onnx"), str(dst / "model.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True, nodes_to_exclude=exclude)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/onnx_quant_variants.json")
    texts, _ = heldout_texts("docs", EvalConfig(max_bytes=6000))
    src = source_directory("smollm2-135m")
    work = Path(tempfile.mkdtemp(prefix="onnx-variants-"))
    base = export_onnx(src, work / "fp32", validate=False)
    ref = bits_per_byte(TorchBackend.from_ref(str(src)), texts).bits_per_byte
    variants = {
        "fp32": lambda d: shutil.copytree(base, d),
        "int8 default (MatMul only, down_proj float, 7-bit weights)": lambda d: quantize_onnx(base, d, "int8"),
        "int8 full 8-bit weights (exact only on VNNI/AMX CPUs)": lambda d: quantize_onnx(base, d, "int8",
                                                                                         reduce_range=False),
        "int8 MatMul only, down_proj quantised too": lambda d: quantize_onnx(base, d, "int8", keep_float=()),
        "int8 embedding quantised too (down_proj float)": lambda d: int8_with_embedding(base, d),
        "int4 default (symmetric, block 32)": lambda d: quantize_onnx(base, d, "int4"),
        "int4 asymmetric, block 32": lambda d: quantize_onnx(base, d, "int4", symmetric=False),
        "int4 asymmetric, block 32, down_proj float": lambda d: quantize_onnx(base, d, "int4", symmetric=False,
                                                                                keep_float=("down_proj",)),
    }
    rows = []
    for i, (name, make) in enumerate(variants.items()):
        d = work / f"v{i}"
        make(d)
        with OnnxBackend(d) as backend:
            bpb = bits_per_byte(backend, texts).bits_per_byte
        rows.append({"variant": name, "bpb": bpb, "delta": (bpb - ref) / ref, "mb": onnx_bytes(d) / 1e6})
        print(f"{name}: {bpb:.4f} ({(bpb - ref) / ref:+.2%}), {onnx_bytes(d) / 1e6:.1f} MB", flush=True)
    print(f"\ntorch source: {ref:.4f} bits/byte on {sum(len(t.encode()) for t in texts)} held-out docs bytes\n")
    print(markdown_table([["variant", "bits/byte", "vs torch", "MB"]]
                         + [[r["variant"], f"{r['bpb']:.4f}", f"{r['delta']:+.2%}", f"{r['mb']:.1f}"] for r in rows]))
    write_result(out, {"source_bpb": ref, "rows": rows})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
