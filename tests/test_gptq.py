"""GPTQ for the fused graph's 4-bit weights: the algorithm, MatMulNBits packing, and the export that uses them."""
import json

import numpy as np
import onnx
import pytest
import torch

from edge_downscale.export.gptq import block_grid, dequantise, gptq, pack_matmulnbits

pytest.importorskip("onnxruntime_genai")


def _layer(n_out=48, k=128, tokens=512, seed=0):
    """A weight and inputs whose features are correlated, as a transformer's hidden states are."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, k, generator=g, dtype=torch.float64) * 0.05
    x = torch.randn(tokens, k // 4, generator=g, dtype=torch.float64) @ torch.randn(k // 4, k, generator=g,
                                                                                     dtype=torch.float64)
    x += 0.1 * torch.randn(tokens, k, generator=g, dtype=torch.float64)
    return w, x, 2 * x.T @ x / tokens


def _round_to_nearest(w, h, block=32):
    """The same per-block grids, each weight rounded alone (no error feedback)."""
    out = torch.empty_like(w)
    for b in range(0, w.shape[1], block):
        s, z = block_grid(w[:, b:b + block], torch.diag(h)[b:b + block])
        q = torch.clamp(torch.round(w[:, b:b + block] / s[:, None]) + z[:, None], 0, 15)
        out[:, b:b + block] = (q - z[:, None]) * s[:, None]
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_moves_the_layer_outputs_less_than_rounding_to_nearest(seed):
    w, x, h = _layer(seed=seed)
    codes, scale, zero = gptq(w, h)
    assert codes.min() >= 0 and codes.max() <= 15 and scale.shape == zero.shape == (48, 4)
    assert torch.equal(zero, torch.round(zero)) and zero.min() >= 0 and zero.max() <= 15
    wq = dequantise(codes, scale, zero)
    err_gptq = torch.linalg.norm(x @ (w - wq).T)
    err_rtn = torch.linalg.norm(x @ (w - _round_to_nearest(w, h)).T)
    assert err_gptq < 0.8 * err_rtn
    assert torch.linalg.norm(w - wq) / torch.linalg.norm(w) < 0.25  # still a 4-bit copy of w, not another matrix


def test_a_width_that_is_not_whole_blocks_is_padded_with_inactive_inputs():
    w, x, h = _layer(k=80)  # 2.5 blocks of 32
    codes, scale, zero = gptq(w, h)
    assert codes.shape == (48, 96) and scale.shape == (48, 3)
    wq = dequantise(codes, scale, zero)[:, :80]
    assert torch.linalg.norm(x @ (w - wq).T) / torch.linalg.norm(x @ w.T) < 0.1


@pytest.mark.parametrize("k", [64, 96, 80])  # an even and an odd number of blocks (zero points padded), part blocks
def test_packed_tensors_compute_what_they_dequantise_to_in_onnxruntime(k):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(k)
    n, blocks = 24, -(-k // 32)
    codes = rng.integers(0, 16, (n, blocks * 32))
    scale = rng.random((n, blocks)) * 0.01 + 1e-3
    zero = rng.integers(0, 16, (n, blocks)).astype(np.float64)
    packed, scales, zps = pack_matmulnbits(codes, scale, zero)
    inits = [onnx.numpy_helper.from_array(a, name) for a, name in ((packed, "b"), (scales, "s"), (zps, "z"))]
    node = helper.make_node("MatMulNBits", ["x", "b", "s", "z"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=32)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, k)).astype(np.float32)
    want = x @ dequantise(torch.from_numpy(codes), torch.from_numpy(scale), torch.from_numpy(zero)).numpy()[:, :k].T
    np.testing.assert_allclose(session.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-5)


def test_the_int4_export_is_refit_by_gptq_from_the_right_source_weights(tiny_model_dir, tmp_path):
    from edge_downscale.export import ExportConfig, export_model
    from edge_downscale.export.gptq import _four_bit_nodes
    from edge_downscale.models import load_torch

    out = tmp_path / "out"
    (manifest,) = export_model(str(tiny_model_dir), ExportConfig(out_dir=out, format="onnx", quants="int4",
                                                                  calibration_tokens=1024), log=lambda m: None)
    art = out / "onnx-int4"
    refit = json.loads((art / "export_info.json").read_text())["int4_refit"]
    graph = onnx.load(str(art / "model.onnx")).graph
    nodes = _four_bit_nodes(graph)
    assert manifest["int4_method"] == "gptq" and refit["matrices"] == len(nodes) > 0
    assert manifest["parity"]["passed"]
    model, _, _ = load_torch(str(tiny_model_dir))
    modules = dict(model.named_modules())
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for node, sources, _ in nodes:  # each refit weight is a 4-bit copy of the linears the map names
        w = torch.cat([modules[s].weight for s in sources]).double()
        n, k = w.shape
        packed, scales, zps = (inits[name] for name in node.input[1:4])
        blocks = -(-k // 32)
        codes = np.stack([packed & 15, packed >> 4], -1).reshape(n, blocks * 32)
        zero = np.stack([zps & 15, zps >> 4], -1).reshape(n, -1)[:, :blocks]
        wq = dequantise(torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(scales.reshape(n, -1).astype(np.float64)),
                        torch.from_numpy(zero.astype(np.float64)))[:, :k]
        assert torch.linalg.norm(w - wq) / torch.linalg.norm(w) < 0.25, node.name


def test_bad_int4_settings_are_refused():
    from edge_downscale.errors import ConfigError
    from edge_downscale.export import ExportConfig

    with pytest.raises(ConfigError, match="int4_method"):
        ExportConfig(out_dir="x", format="onnx", quants="int4", int4_method="awq")
    with pytest.raises(ConfigError, match="calibration_tokens"):
        ExportConfig(out_dir="x", format="onnx", quants="int4", calibration_tokens=0)
