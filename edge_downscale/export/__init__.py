"""Exporters: GGUF (gguf-py + llama.cpp quantiser) and ONNX (optimum-onnx + onnxruntime quantisation).

Every export is checked against its source (parity gate) and gets a ``model.json`` manifest.
"""
from .api import EXPORT_FORMATS, ExportConfig, export_model, parse_quants, source_directory
from .errors import ExportError
from .manifest import MANIFEST, verify_manifest, write_manifest
from .parity import DEFAULT_GATES, ParityError, ParityResult, check_parity, enforce, mean_kl

__all__ = [
    "DEFAULT_GATES", "EXPORT_FORMATS", "ExportConfig", "ExportError", "MANIFEST", "ParityError", "ParityResult", "check_parity",
    "enforce", "export_model", "mean_kl", "parse_quants", "source_directory", "verify_manifest", "write_manifest",
]
