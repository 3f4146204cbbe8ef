"""ONNX export (optimum-onnx) + onnxruntime quantisation + the torch-free OnnxBackend, on the tiny Llama."""
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_downscale.export.errors import ExportError
from edge_downscale.export.onnx import INFO_FILE, MODEL_FILE, ONNX_QUANTS, export_onnx, quantize_onnx
from edge_downscale.runtime import backend_class
from edge_downscale.runtime.onnx import OnnxBackend

TEXT = "Assignment statements are used to (re)bind names to values and to modify attributes of mutable objects."
# Max |delta log p| of a quantised model's token log-probs from the fp32 export (tiny random model).
QUANT_TOL = {"int8": 0.05, "int4": 0.2, "fp16": 5e-3}


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tmp_path_factory):
    return export_onnx(tiny_model_dir, tmp_path_factory.mktemp("onnx") / "tiny-onnx")


@pytest.fixture(scope="module")
def pruned_dir(tiny_model_dir, tmp_path_factory):
    from edge_downscale.compress.prune import prune_, save_pruned
    from edge_downscale.models import load_torch

    model, tok, _ = load_torch(str(tiny_model_dir))
    report = prune_(model, "magnitude", 0.5)
    return save_pruned(model, tok, tmp_path_factory.mktemp("pruned") / "tiny-pruned", report)


@pytest.fixture(scope="module")
def quantized(onnx_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    return {q: quantize_onnx(onnx_dir, root / q, q) for q in ONNX_QUANTS}


def _sequence(backend, n=20):
    ids = backend.prefix_ids + backend.tokenize(TEXT)
    assert len(ids) >= n
    return ids[:n]


def _listing(path):
    return sorted(p.name for p in path.iterdir())


def test_export_runs_in_a_plain_session_and_passes_the_full_checker(onnx_dir, tiny_model_dir):
    onnx.checker.check_model(str(onnx_dir / MODEL_FILE), full_check=True)
    sess = ort.InferenceSession(str(onnx_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    assert {"input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.1.value"} <= names
    ids = np.array([[0, 5, 17, 300]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(4)[None]}
    feed.update({n: np.zeros((1, 2, 0, 16), np.float32) for n in names if n.startswith("past_key_values.")})
    logits, present0 = sess.run(["logits", "present.0.key"], feed)
    assert logits.shape == (1, 4, 1024) and present0.shape == (1, 2, 4, 16)  # KV cache: 2 KV heads x 16
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):  # source bytes, verbatim
        assert (onnx_dir / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    info = json.loads((onnx_dir / INFO_FILE).read_text())
    assert info["quantization"] == "fp32" and info["opset"] and info["versions"]
    assert info["model_bytes"] == (onnx_dir / MODEL_FILE).stat().st_size
    assert "parity_vs_torch" not in info  # the one quality gate is export_model's, in model.json


def test_onnx_backend_matches_torch(onnx_dir, tiny_backend):
    backend = backend_class("onnx")(onnx_dir)
    assert isinstance(backend, OnnxBackend) and backend.capabilities >= {"logprobs", "logits", "gpu"}
    assert backend.tokenize(TEXT) == tiny_backend.tokenize(TEXT)
    assert backend.prefix_ids == tiny_backend.prefix_ids == [0]
    assert backend.context_length == 512
    ids = _sequence(backend, 20)
    (got,), (want,) = backend.token_logprobs([ids]), tiny_backend.token_logprobs([ids])
    assert got.shape == want.shape == (19,)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    logits = backend.logits(ids)
    assert logits.shape == (20, 1024) and logits.dtype == np.float32
    with pytest.raises(Exception, match="context length"):
        backend.logits([1] * 513)


def test_pruned_model_exports_and_matches(pruned_dir, tmp_path):
    from edge_downscale.models.torch_backend import TorchBackend

    assert json.loads((pruned_dir / "config.json").read_text())["intermediate_size"] == 128
    (pruned_dir / "tokenizer.model").write_bytes(b"slow tokenizer")  # redundant with tokenizer.json: dropped
    out = export_onnx(pruned_dir, tmp_path / "pruned-onnx")
    assert not (out / "tokenizer.model").exists() and (out / "tokenizer.json").is_file()
    weights = {tuple(t.dims) for t in onnx.load(str(out / MODEL_FILE)).graph.initializer}
    assert (64, 128) in weights and (64, 256) not in weights  # gate/up projections at the pruned width
    backend, ref = OnnxBackend(out), TorchBackend.from_ref(str(pruned_dir))
    ids = _sequence(backend, 20)
    np.testing.assert_allclose(backend.token_logprobs([ids])[0], ref.token_logprobs([ids])[0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("quant", ONNX_QUANTS)
def test_quantized_models_load_and_stay_close(quant, quantized, onnx_dir):
    out = quantized[quant]
    onnx.checker.check_model(str(out / MODEL_FILE), full_check=True)
    model = onnx.load(str(out / MODEL_FILE))
    ops = {n.op_type for n in model.graph.node}
    if quant == "int8":  # weight-only 8-bit on every projection, down_proj included; no dynamic quantisation
        assert "MatMulInteger" not in ops and "DynamicQuantizeLinear" not in ops
        assert not {n.name for n in model.graph.node if n.op_type == "MatMul" and "/mlp/" in n.name}
        assert {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"} == {8}
    elif quant == "int4":
        blocks = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
        assert blocks == {32}
    else:
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert (out / MODEL_FILE).stat().st_size < (onnx_dir / MODEL_FILE).stat().st_size
    assert (out / "tokenizer.json").read_bytes() == (onnx_dir / "tokenizer.json").read_bytes()

    fp32, q = OnnxBackend(onnx_dir), OnnxBackend(out)
    ids = _sequence(fp32, 20)
    diff = np.abs(q.token_logprobs([ids])[0] - fp32.token_logprobs([ids])[0]).max()
    print(f"{quant}: max |delta log p| vs fp32 export over 19 tokens = {diff:.2e}")
    assert 0 < diff < QUANT_TOL[quant]  # > 0: the weights really changed
    info = json.loads((out / INFO_FILE).read_text())
    assert info["quantization"] == quant and info["quant_options"] is not None and info["quantized_from"]
    assert not {"drift_vs_source", "source_parity_vs_torch", "parity_vs_torch"} & set(info)


def test_quant_options_are_honoured_and_logging_untouched(onnx_dir, tmp_path):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = quantize_onnx(onnx_dir, tmp_path / "int4-b16", "int4", block_size=16)
    assert (root.handlers, root.level) == (handlers, level)  # onnxruntime's basicConfig(INFO) did not leak
    model = onnx.load(str(out / MODEL_FILE))
    assert {a.i for n in model.graph.node for a in n.attribute if a.name == "block_size"} == {16}
    kept = quantize_onnx(onnx_dir, tmp_path / "int8-down", "int8", keep_float=("down_proj",))
    nodes = onnx.load(str(kept / MODEL_FILE)).graph.node
    assert all(n.op_type == "MatMul" for n in nodes if "/mlp/down_proj/" in n.name)  # kept float
    assert {a.i for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"} == {8}
    info = json.loads((kept / INFO_FILE).read_text())
    assert info["float_matmuls_kept"] == 2 and info["quant_options"]["accuracy_level"] == 4  # the tiny model: 2 blocks
    for quant, bad in (("int4", 8), ("int4", 48), ("int8", 24)):
        with pytest.raises(ExportError, match="power of two"):
            quantize_onnx(onnx_dir, tmp_path / f"{quant}-b{bad}", quant, block_size=bad)
        assert not (tmp_path / f"{quant}-b{bad}").exists()


def test_runtime_onnx_import_is_torch_free():
    code = ("import sys, edge_downscale.runtime.onnx\n"
            "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"edge_downscale.runtime.onnx imported: {out.stdout.strip()}"


def test_refuses_source_without_tokenizer(tiny_model_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    (src / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="tokenizer.json"):
        export_onnx(src, tmp_path / "out")
    assert _listing(tmp_path) == ["src"]


def test_refuses_nan_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"][3, 7] = float("nan")
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match="down_proj.*NaN"):
        export_onnx(src, tmp_path / "out")
    assert _listing(tmp_path) == ["src"]


def test_refuses_existing_dir_unless_overwrite(onnx_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(tiny_model_dir, out)
    with pytest.raises(ExportError, match="already exists"):
        quantize_onnx(onnx_dir, out, "int8")
    assert _listing(out) == ["keep.txt"] and _listing(tmp_path) == ["out"]
    quantize_onnx(onnx_dir, out, "int8", overwrite=True)
    assert MODEL_FILE in _listing(out) and "keep.txt" not in _listing(out)


def test_unknown_quant_lists_the_choices(onnx_dir, tmp_path):
    with pytest.raises(ExportError, match="int8, int4, fp16"):
        quantize_onnx(onnx_dir, tmp_path / "q", "int3")
    with pytest.raises(ExportError, match="export the model first"):
        quantize_onnx(tmp_path, tmp_path / "q", "int8")
    assert _listing(tmp_path) == []


def test_export_model_gates_onnx_in_model_json_and_keeps_the_facts(tiny_model_dir, tmp_path, monkeypatch):
    """The bits-per-byte + KL gate (model.json) is the only quality check; export_info.json keeps the options."""
    from edge_downscale.artifacts import verify_manifest
    from edge_downscale.export import ExportConfig, ParityError, export_model, parity

    out = tmp_path / "out"
    (manifest,) = export_model(str(tiny_model_dir), ExportConfig(out_dir=out, format="onnx", quants="int8",
                                                                 onnx_graph="optimum"), log=lambda m: None)
    assert manifest["parity"]["passed"] and manifest["parity"]["kl_tokens"] > 0 and manifest["onnx_graph"] == "optimum"
    assert verify_manifest(out / "onnx-int8")["parity"] == manifest["parity"]
    info = json.loads((out / "onnx-int8" / INFO_FILE).read_text())
    assert info["quant_options"]["bits"] == 8 and "drift_vs_source" not in info
    monkeypatch.setitem(parity.DEFAULT_GATES, "fp32", (-1.0, -1.0))  # no export can pass a negative gate
    with pytest.raises(ParityError, match="parity gate failed: fp32"):
        export_model(str(tiny_model_dir), ExportConfig(out_dir=tmp_path / "strict", format="onnx", quants="fp32",
                                                       onnx_graph="optimum"), log=lambda m: None)
    assert not (tmp_path / "strict").exists()


def test_greedy_decoding_with_the_kv_cache_matches_torch(onnx_dir, tiny_greedy):
    prompt, ref = tiny_greedy
    got = OnnxBackend(onnx_dir).greedy(prompt, 12, stop_at_eos=False)
    assert got == ref and len(got) == 12
