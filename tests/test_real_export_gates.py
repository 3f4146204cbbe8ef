"""Every quantisation the README recommends passes its parity gate on the real model. CI runs these.

The exports are the user's own commands (``edge-downscale export ...``) with the default gate on:
a quantiser or kernel change that breaks an artifact fails here, not in a user's hands.
"""
import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.real, pytest.mark.slow]

# (format, ONNX graph) -> the quantisations the README recommends (GGUF: 8-bit and the default 4-bit type;
# ONNX: fp32, int8 on the default fused graph and on optimum's, and the fused graph's GPTQ int4)
RECOMMENDED = {("gguf", None): ("q8_0", "q4_k_m"), ("onnx", "fused"): ("fp32", "int8", "int4"),
               ("onnx", "optimum"): ("fp32", "int8")}


@pytest.mark.parametrize("fmt,graph", sorted(RECOMMENDED, key=str))
def test_recommended_exports_of_smollm2_pass_their_parity_gates(tmp_path, smollm2_gguf, fmt, graph):
    from edge_downscale.artifacts import verify_manifest
    from edge_downscale.cli import cli
    from edge_downscale.export.parity import DEFAULT_GATES

    quants = RECOMMENDED[fmt, graph]
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["export", "smollm2-135m", "--format", fmt, "--quant", ",".join(quants),
                                   "--out", str(out), *(["--onnx-graph", graph] if graph else [])])
    assert res.exit_code == 0, res.output  # a failed gate exits 2 with the gate's numbers
    assert "FAILED" not in res.output
    for q in quants:
        manifest = verify_manifest(out / f"{fmt}-{q}")
        parity = manifest["parity"]
        max_delta, max_kl = DEFAULT_GATES[q]
        assert parity["passed"], parity
        assert parity["bpb_rel_delta"] <= max_delta and parity["mean_kl"] <= max_kl, parity
        assert parity["n_bytes"] >= 5000 and parity["kl_tokens"] >= 1000, parity  # measured on real text
        assert manifest["versions"]["edge-downscale"], manifest["versions"]
    if fmt == "onnx":  # int8 is weight-only 8-bit MatMulNBits (no per-tensor activation scales to saturate)
        import onnx

        model = onnx.load(str(out / "onnx-int8" / "model.onnx"))
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        # every projection of the 30 blocks, down_proj included (fused: packed QKV, and the LM head too)
        assert len(nbits) == (30 * 5 + 1 if graph == "fused" else 30 * 7), len(nbits)
        assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {8}
        assert manifest["onnx_graph"] == graph

