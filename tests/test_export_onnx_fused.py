"""The fused ONNX export (onnxruntime-genai's model builder), run by the plain-onnxruntime OnnxBackend."""
import json
from collections import Counter

import numpy as np
import onnx
import pytest

from edge_downscale.export.errors import ExportError
from edge_downscale.export.onnx import INFO_FILE, MODEL_FILE, export_onnx_fused
from edge_downscale.runtime.onnx import OnnxBackend

pytest.importorskip("onnxruntime_genai")

TEXT = "Assignment statements are used to (re)bind names to values and to modify attributes of mutable objects."
# Max |delta log p| of each export's token log-probs from the torch source (tiny random model).
TOL = {"fp32": 1e-4, "int8": 0.05, "int4": 0.3}


@pytest.fixture(scope="module")
def fused(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    return {q: export_onnx_fused(tiny_model_dir, root / q, q) for q in TOL}


def _ops(path):
    return Counter(n.op_type for n in onnx.load(str(path / MODEL_FILE), load_external_data=False).graph.node)


def _ids(backend, n=20):
    return (backend.prefix_ids + backend.tokenize(TEXT))[:n]


def test_the_graph_is_fused(fused):
    ops = _ops(fused["fp32"])
    assert ops["GroupQueryAttention"] == 2 and ops["SkipSimplifiedLayerNormalization"] >= 2  # 2 layers
    assert "Softmax" not in ops and "RotaryEmbedding" not in ops  # attention and rotary are inside GQA
    q4 = onnx.load(str(fused["int4"] / MODEL_FILE), load_external_data=False)
    bits = {n.name: a.i for n in q4.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert len(bits) == 2 * 5 + 1  # qkv, o, gate, up, down of each layer and the LM head
    assert set(bits.values()) <= {4, 8}
    assert [v for k, v in bits.items() if "lm_head" in k] == [8]  # the LM head at 8 bits
    assert not any(n.op_type == "MatMul" for n in q4.graph.node)


@pytest.mark.parametrize("quant", list(TOL))
def test_scores_like_the_torch_source(quant, fused, tiny_backend, tiny_model_dir):
    out = fused[quant]
    backend = OnnxBackend(out)
    assert backend.tokenize(TEXT) == tiny_backend.tokenize(TEXT)
    ids = _ids(backend)
    diff = np.abs(backend.token_logprobs([ids])[0] - tiny_backend.token_logprobs([ids])[0]).max()
    assert diff < TOL[quant] and (quant == "fp32" or diff > 0)  # quantised weights really changed
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):  # the source's files, verbatim
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    assert not (out / "tokenizer.model").exists() and (out / "genai_config.json").is_file()
    info = json.loads((out / INFO_FILE).read_text())
    assert info["graph"] == "fused" and info["quantization"] == quant and info["builder"] == "onnxruntime-genai"
    assert info["model_bytes"] == sum(f.stat().st_size for f in out.iterdir() if f.name.startswith(MODEL_FILE))


def test_greedy_decoding_with_the_kv_cache_matches_torch(fused, tiny_greedy):
    prompt, ref = tiny_greedy
    backend = OnnxBackend(fused["fp32"])
    assert backend.shares_kv_buffer  # GroupQueryAttention writes the cache in place
    assert backend.greedy(prompt, 12, stop_at_eos=False) == ref


@pytest.mark.parametrize("capacity", [1, 4, 7])
def test_a_shared_kv_buffer_that_grows_mid_generation_decodes_the_same(fused, tiny_greedy, monkeypatch, capacity):
    from edge_downscale.runtime.onnx import _BoundDecoder

    prompt, ref = tiny_greedy
    monkeypatch.setattr(_BoundDecoder, "capacity", capacity)  # smaller than the prompt, or reached mid-decode
    assert OnnxBackend(fused["fp32"]).greedy(prompt, 12, stop_at_eos=False) == ref
    copying = OnnxBackend(fused["fp32"])
    copying.shares_kv_buffer = False  # the past -> present loop of optimum's graphs
    assert copying.greedy(prompt, 12, stop_at_eos=False) == ref


def test_a_pruned_width_exports(tiny_model_dir, tmp_path):
    from edge_downscale.compress.prune import prune_, save_pruned
    from edge_downscale.models import load_torch
    from edge_downscale.models.torch_backend import TorchBackend

    model, tok, _ = load_torch(str(tiny_model_dir))
    pruned = save_pruned(model, tok, tmp_path / "pruned", prune_(model, "magnitude", 0.5))
    out = export_onnx_fused(pruned, tmp_path / "pruned-fused", "fp32")
    shapes = {tuple(t.dims) for t in onnx.load(str(out / MODEL_FILE)).graph.initializer}
    assert (128, 64) in shapes and (256, 64) not in shapes  # down_proj at the pruned width (K x N)
    backend, ref = OnnxBackend(out), TorchBackend.from_ref(str(pruned))
    ids = _ids(backend)
    np.testing.assert_allclose(backend.token_logprobs([ids])[0], ref.token_logprobs([ids])[0], atol=1e-4, rtol=0)


def test_builder_failure_is_one_line_and_leaves_nothing(tiny_model_dir, tmp_path):
    import shutil

    src = tmp_path / "odd"
    shutil.copytree(tiny_model_dir, src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(ExportError, match="model builder could not export") as e:
        export_onnx_fused(src, tmp_path / "out", "fp32")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    with pytest.raises(ExportError, match="unknown ONNX quantisation"):
        export_onnx_fused(tiny_model_dir, tmp_path / "x", "int3")


def test_export_model_gates_the_fused_graph(tiny_model_dir, tmp_path):
    from edge_downscale.export import ExportConfig, export_model

    out = tmp_path / "out"
    (manifest,) = export_model(str(tiny_model_dir), ExportConfig(out_dir=out, format="onnx", quants="int8"),
                               log=lambda m: None)
    assert manifest["parity"]["passed"] and manifest["onnx_graph"] == "fused"
    assert _ops(out / "onnx-int8")["GroupQueryAttention"] == 2
