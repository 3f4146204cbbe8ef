"""Exporters (GGUF, ONNX) with parity gates: lands with issue 5."""
