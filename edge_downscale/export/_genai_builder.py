"""Run onnxruntime-genai's model builder under the transformers release this project pins.

    python -m edge_downscale.export._genai_builder -i HF_DIR -o OUT -p int4 -e cpu -c CACHE [--extra_options k=v ...]

The builder (``onnxruntime_genai.models.builder``, its command line) is written against transformers 5:
it imports two model classes that transformers 4.57 lacks (multimodal Qwen 3.5, never used for a
decoder-only LLM) and reads ``config.rope_parameters``, which 4.57 spells ``rope_scaling`` (None for
plain RoPE) next to ``rope_theta``. This module fills exactly those two gaps and then runs the
builder's own ``__main__``; it runs in a child process so neither the patch nor the builder's prints
reach the caller (:func:`edge_downscale.export.onnx.export_onnx_fused`).
"""
from __future__ import annotations

import runpy
import sys

MISSING_CLASSES = ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")


def _patch_transformers() -> None:
    import transformers

    for name in MISSING_CLASSES:  # referenced only in isinstance/dispatch checks for other architectures
        if not hasattr(transformers, name):
            setattr(transformers, name, type(name, (), {}))
    original = transformers.AutoConfig.from_pretrained

    def from_pretrained(*args, **kwargs):
        config = original(*args, **kwargs)
        if getattr(config, "rope_scaling", False) is None and hasattr(config, "rope_theta"):
            config.rope_scaling = {"rope_type": "default", "rope_theta": config.rope_theta}
        return config

    transformers.AutoConfig.from_pretrained = from_pretrained


def main(argv: list[str]) -> None:
    _patch_transformers()
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
