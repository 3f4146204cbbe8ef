"""`export`: GGUF or ONNX, each quantisation gated (options from ExportConfig)."""
from __future__ import annotations

import click

from ._options import config_option

_EXPORT = "edge_downscale.export:ExportConfig"  # imports numpy: its defaults are read lazily


@click.command("export", short_help="Export to GGUF or ONNX, each quant gated.")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["gguf", "onnx"]), required=True)
@click.option("--quant", "quants", required=True,
              help="Comma-separated. gguf: f32,f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0; onnx: fp32,int8,int4,fp16.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@config_option(_EXPORT, "onnx_graph", type=click.Choice(["fused", "optimum"]),
               help="ONNX only: fused = onnxruntime-genai's decoder graph (GroupQueryAttention, fused norms, "
                    "MatMulNBits), optimum = optimum-onnx's op-by-op graph.")
@config_option(_EXPORT, "domain", help="Held-out text the parity gate scores on.")
@config_option(_EXPORT, "int4_method", type=click.Choice(["gptq", "k_quant"]),
               help="Fused ONNX int4: gptq = re-quantise the 4-bit weights by GPTQ on calibration text, "
                    "k_quant = the model builder's own rounding.")
@config_option(_EXPORT, "calibration", help="GPTQ calibration corpus (its train split); default: --domain's.")
@click.option("--no-verify", is_flag=True, help="Skip the parity gate (not recommended).")
@click.option("--allow-degraded", is_flag=True, help="Keep exports that miss their parity gate (numbers still recorded).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(model, fmt, quants, out_dir, onnx_graph, domain, int4_method, calibration, no_verify, allow_degraded,
               overwrite):
    """Export MODEL (an HF directory or a registered model) to GGUF or ONNX, each quantisation gated.

    Every artifact is scored against the source on held-out text (bits-per-byte and KL divergence)
    and gets a model.json manifest with the sha256 of every file. Nothing is left behind on failure.
    """
    from ..export import ExportConfig, export_model

    config = ExportConfig(out_dir=out_dir, format=fmt, quants=quants, verify=not no_verify,
                          allow_degraded=allow_degraded, overwrite=overwrite, domain=domain, onnx_graph=onnx_graph,
                          int4_method=int4_method, calibration=calibration)
    manifests = export_model(model, config, log=lambda m: click.echo(m, err=True))
    for m in manifests:
        click.echo(f"{out_dir}/{m['format']}-{m['quantization']}: {m['total_bytes'] / 1e6:.1f} MB")
