"""Cached exports for benchmarks that time artifacts (shared by the benchmark scripts).

Exporting SmolLM2-135M to ONNX and quantising it takes minutes on 2 cores; benchmarks that only
*time* the artifacts reuse one export per (source, format, quantisation), kept in the user cache
(``~/.cache/edge-downscale/benchmark-exports/<source>/<format>-<quant>/``, a standard
``export_model`` artifact with its ``model.json`` manifest). A cached artifact is reused only if
its manifest's source hash matches the source directory, so a changed source re-exports.

Not for parity numbers: scripts that report bits-per-byte export afresh (``export_matrix.py``).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence


def cached_exports(model: str, fmt: str, quants: Sequence[str] | str, *, verify: bool = False,
                   onnx_graph: str = "optimum", log=print) -> dict[str, Path]:
    """{quant: artifact dir} for ``model`` exported to ``fmt``; only missing quantisations are exported.

    ``verify=False`` skips the parity gate (the artifacts are for timing); the manifest then has
    ``parity: null``. ONNX: ``onnx_graph`` (``optimum`` keeps the directory names ``onnx-<quant>``
    of earlier runs; ``fused`` artifacts are ``onnx-fused-<quant>``).
    """
    from edge_downscale._io import cache_dir
    from edge_downscale.export import ExportConfig, export_model, source_directory
    from edge_downscale.export.api import parse_quants
    from edge_downscale.export.manifest import source_hash
    from edge_downscale.export.onnx import FUSED_OPTIONS

    names = parse_quants(fmt, quants)
    src = source_directory(model)
    src_hash = source_hash(src)
    root = cache_dir("benchmark-exports", src.name)
    graph = onnx_graph if fmt == "onnx" else None
    prefix = f"{fmt}-fused" if graph == "fused" else fmt
    out, missing = {}, []
    for q in names:
        art = root / f"{prefix}-{q}"
        manifest = art / "model.json"
        info = json.loads(manifest.read_text()) if manifest.is_file() else {}
        if (info.get("source", {}).get("sha256") == src_hash
                and info.get("onnx_graph", "optimum" if graph else None) == graph
                and (graph != "fused" or _fused_recipe(art) == (FUSED_OPTIONS[q], ExportConfig.int4_method if q == "int4"
                                                                 else None))):
            out[q] = art
        else:
            missing.append(q)
    if missing:
        log(f"exporting {model} to {fmt} {','.join(missing)} into {root} (cached for later runs)")
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
        try:
            config = ExportConfig(out_dir=work / "out", format=fmt, quants=missing, verify=verify, allow_degraded=True,
                                  **({"onnx_graph": graph} if graph else {}))
            export_model(str(src), config, log=log)
            for q in missing:
                art = root / f"{prefix}-{q}"
                if art.exists():
                    shutil.rmtree(art)
                (work / "out" / f"{fmt}-{q}").rename(art)
                out[q] = art
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {q: out[q] for q in names}


def _fused_recipe(art: Path) -> tuple[dict | None, str | None]:
    """(the model builder's options, the int4 refit method) a fused artifact was made with (export_info.json)."""
    info = json.loads((art / "export_info.json").read_text()) if (art / "export_info.json").is_file() else {}
    return info.get("builder_options"), (info.get("int4_refit") or {}).get("method")


def artifact_bytes(art: Path) -> int:
    """Bytes of the model's weights file(s), without tokenizer and configs."""
    return sum(p.stat().st_size for p in art.iterdir() if p.suffix == ".gguf" or p.name.startswith("model.onnx"))


def dynamic_int8(src: Path, dst: Path, *, reduce_range: bool, keep_float: Sequence[str] = ("down_proj",),
                 op_types: Sequence[str] | None = ("MatMul",)) -> Path:
    """The int8 recipe the exporter no longer uses, for comparison: onnxruntime's dynamic quantisation.

    int8 per-channel weights (7-bit with ``reduce_range``), uint8 activations quantised per tensor at
    run time (MatMulInteger); ``op_types=None`` quantises every op it can (the embedding Gather too).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edge_downscale.export.onnx import MODEL_FILE, float_matmuls

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(f"{MODEL_FILE}*"))
    exclude = float_matmuls(onnx.load(str(src / MODEL_FILE), load_external_data=False), keep_float)
    quantize_dynamic(str(src / MODEL_FILE), str(dst / MODEL_FILE), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=reduce_range, nodes_to_exclude=exclude,
                     **({} if op_types is None else {"op_types_to_quantize": list(op_types)}))
    return dst
