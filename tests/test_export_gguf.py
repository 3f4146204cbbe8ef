"""GGUF export: the tiny Llama (and a pruned copy) written with gguf-py must run in llama.cpp like in torch."""
import contextlib
import json
import shutil

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from edge_downscale.compress.prune import prune_, save_pruned
from edge_downscale.export import gguf as gguf_export
from edge_downscale.export.errors import ExportError
from edge_downscale.export.gguf import (
    GGUF_ARCHITECTURES, GGUF_QUANTS, export_gguf, gguf_bits_per_weight, quantize_gguf,
)
from edge_downscale.models import load_torch
from edge_downscale.runtime.gguf_file import check_gguf

TEXTS = [
    "Hello world",
    "  def f(x):\n\treturn x**2  # 123 4567",
    "naïve café — ünïcode ✓ 日本語, and the with-statement's __enter__()",
]
SENTENCE = "The with statement wraps a block. Python's object model: every value is an object, and"
F32_ATOL = 1e-3  # measured 1.1e-4 on logits up to ~1.2 (llama.cpp keeps its KV cache in f16)


@contextlib.contextmanager
def llama(path):
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, verbose=False)
    try:
        yield llm
    finally:
        llm.close()


def llama_logits(path, ids) -> np.ndarray:
    with llama(path) as llm:
        llm.eval(ids)
        return np.asarray(llm.scores[: len(ids)], dtype=np.float32)  # (T, V)


def torch_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()  # (T, V)


def gguf_field(path, key):
    return gguf.GGUFReader(str(path)).fields[key].contents()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok, _ = load_torch(str(tiny_model_dir))
    ids = tok(SENTENCE, add_special_tokens=False)["input_ids"][:20]
    assert len(ids) == 20
    return model, tok, ids


@pytest.fixture(scope="module")
def f32_gguf(tiny_model_dir, tmp_path_factory):
    return export_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


def copy_with_weights(src, dst, edit):
    """Copy an HF dir, passing its safetensors dict through ``edit`` (in place)."""
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    edit(weights)
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_f32_header_hparams_and_tokenizer_keys(f32_gguf, tiny_model_dir):
    info = check_gguf(f32_gguf)
    md = info.metadata
    assert info.architecture == "llama" and info.file_type == "ALL_F32"
    assert md["llama.block_count"] == 2 and md["llama.embedding_length"] == 64
    assert md["llama.feed_forward_length"] == 256 and md["llama.context_length"] == 512
    assert md["llama.attention.head_count"] == 4 and md["llama.attention.head_count_kv"] == 2
    assert md["llama.rope.dimension_count"] == 16 and md["llama.vocab_size"] == 1024
    # tied embeddings: token_embd only (2 globals + 9 per block), all float32
    assert info.n_tensors == 2 + 2 * 9 and info.tensor_types == {"F32": 20}
    assert gguf_field(f32_gguf, "tokenizer.ggml.model") == "gpt2"
    assert gguf_field(f32_gguf, "tokenizer.ggml.pre") == "gpt-2"
    assert gguf_field(f32_gguf, "tokenizer.ggml.add_bos_token") is False
    assert gguf_field(f32_gguf, "tokenizer.ggml.bos_token_id") == 0
    assert "<|im_start|>" in gguf_field(f32_gguf, "tokenizer.chat_template")
    hf = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    assert len(gguf_field(f32_gguf, "tokenizer.ggml.merges")) == len(hf["model"]["merges"])
    types = gguf_field(f32_gguf, "tokenizer.ggml.token_type")
    assert list(types[:4]) == [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL]


def test_f32_tokenizes_exactly_like_hf(f32_gguf, tiny):
    _, tok, _ = tiny
    with llama(f32_gguf) as llm:
        for text in TEXTS:
            ours = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            assert ours == tok(text, add_special_tokens=False)["input_ids"], text
        assert llm.token_bos() == tok.bos_token_id and llm.token_eos() == tok.eos_token_id


def test_f32_logits_match_torch(f32_gguf, tiny):
    model, _, ids = tiny
    ours, ref = llama_logits(f32_gguf, ids), torch_logits(model, ids)
    assert ours.shape == ref.shape == (20, 1024)
    np.testing.assert_allclose(ours, ref, atol=F32_ATOL, rtol=0)


def test_unpermute_inverts_hf_rotary_layout():
    """HF's converter permutes llama.cpp-order rows with view(h, d/2, 2, in).transpose(1, 2); we undo it."""
    n_head, head_dim, d_in = 3, 8, 5
    original = np.arange(n_head * head_dim * d_in, dtype=np.float32).reshape(n_head * head_dim, d_in)
    hf = torch.from_numpy(original).view(n_head, head_dim // 2, 2, d_in).transpose(1, 2).reshape(-1, d_in).numpy()
    assert not np.array_equal(hf, original)
    np.testing.assert_array_equal(gguf_export._unpermute_rotary(hf, n_head), original)


def test_rotary_permutation_is_needed_on_a_sharp_model(tiny_model_dir, tiny, tmp_path, monkeypatch):
    """Random Q/K are near zero (uniform attention); scale them so a wrong row order shows in the logits."""
    def sharpen(w):
        for name in w:
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                w[name] = w[name] * 12.0
    sharp = copy_with_weights(tiny_model_dir, tmp_path / "sharp", sharpen)
    model, _, _ = load_torch(str(sharp))
    ids = tiny[2]
    ref = torch_logits(model, ids)
    good = llama_logits(export_gguf(sharp, tmp_path / "good.gguf"), ids)
    monkeypatch.setattr(gguf_export, "_unpermute_rotary", lambda w, n_head: w)
    bad = llama_logits(export_gguf(sharp, tmp_path / "bad.gguf"), ids)
    err_good, err_bad = np.abs(good - ref).max(), np.abs(bad - ref).max()
    assert err_good < 2e-3 < 10 * err_good < err_bad, (err_good, err_bad)


def test_f16_and_q8_0_load_and_stay_close(tiny_model_dir, f32_gguf, tiny, tmp_path):
    model, _, ids = tiny
    ref = torch_logits(model, ids)
    f16 = export_gguf(tiny_model_dir, tmp_path / "tiny-f16.gguf", outtype="f16")
    q8 = quantize_gguf(f32_gguf, tmp_path / "tiny-q8_0.gguf", "q8_0")
    assert check_gguf(f16).file_type == "F16" and check_gguf(f16).tensor_types == {"F16": 15, "F32": 5}
    assert check_gguf(q8).file_type == "Q8_0" and "Q8_0" in check_gguf(q8).tensor_types
    assert gguf_bits_per_weight(f32_gguf) > gguf_bits_per_weight(f16) > gguf_bits_per_weight(q8)
    for path, atol in ((f16, 2e-3), (q8, 2e-2)):  # measured 3.2e-4 and 9.1e-3
        err = np.abs(llama_logits(path, ids) - ref).max()
        assert err < atol, (path.name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-f16.gguf", "tiny-q8_0.gguf"]


def test_k_quant_falls_back_on_short_rows_and_reports_real_bits(f32_gguf, tmp_path):
    """Rows of 64 are not a multiple of 256: llama.cpp stores those tensors in another type."""
    q4 = quantize_gguf(f32_gguf, tmp_path / "tiny-q4_k_m.gguf", "Q4_K_m")
    info = check_gguf(q4)
    assert info.file_type == "Q4_K_M" and info.tensor_types["Q5_0"] >= 10  # fallback for the 64-wide rows
    assert "Q4_K" in info.tensor_types  # ffn_down's rows are 256 wide: a real K-quant
    assert gguf_bits_per_weight(q4) > 4.5
    with llama(q4) as llm:
        assert llm.n_vocab() == 1024


def test_pruned_model_exports_with_its_width_and_matches(tiny_model_dir, tmp_path):
    model, tok, _ = load_torch(str(tiny_model_dir))
    report = prune_(model, "magnitude", 0.5)
    pruned = save_pruned(model, tok, tmp_path / "pruned", report)
    path = export_gguf(pruned, tmp_path / "pruned.gguf")
    assert check_gguf(path).metadata["llama.feed_forward_length"] == 128
    ids = tok(SENTENCE, add_special_tokens=False)["input_ids"][:20]
    np.testing.assert_allclose(llama_logits(path, ids), torch_logits(model, ids), atol=F32_ATOL, rtol=0)


def test_unknown_quant_and_outtype_are_refused(f32_gguf, tiny_model_dir, tmp_path):
    with pytest.raises(ExportError, match="Q4_K_M") as e:
        quantize_gguf(f32_gguf, tmp_path / "x.gguf", "q3_xyz")
    assert all(name in str(e.value) for name in GGUF_QUANTS)
    with pytest.raises(ExportError, match="f16"):
        export_gguf(tiny_model_dir, tmp_path / "y.gguf", outtype="bf16")
    assert list(tmp_path.iterdir()) == []


def test_nan_weight_is_refused_naming_the_tensor(tiny_model_dir, tmp_path):
    def poison(w):
        w["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    bad = copy_with_weights(tiny_model_dir, tmp_path / "bad", poison)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*NaN"):
        export_gguf(bad, out / "bad.gguf")
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    ("model.layers.0.self_attn.extra_gate.weight", "no GGUF name"),
    ("layers.0.attention.wq.weight", "both map to 'blk.0.attn_q.weight'"),  # llama-pth name of q_proj
])
def test_unmapped_or_duplicated_tensor_is_refused(tiny_model_dir, tmp_path, extra, message):
    def add(w):
        w[extra] = np.ones((64, 64), dtype=np.float32)
    bad = copy_with_weights(tiny_model_dir, tmp_path / "bad", add)
    with pytest.raises(ExportError, match=message):
        export_gguf(bad, tmp_path / "out" / "bad.gguf")


def test_missing_tokenizer_is_refused(tiny_model_dir, tmp_path):
    src = tmp_path / "no-tok"
    shutil.copytree(tiny_model_dir, src)
    (src / "tokenizer.json").unlink()
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="tokenizer.json"):
        export_gguf(src, out / "m.gguf")
    assert not out.exists() or list(out.iterdir()) == []


def test_unsupported_architecture_lists_the_supported(tmp_path):
    import transformers

    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128, n_positions=64)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2", safe_serialization=True)
    with pytest.raises(ExportError, match="'gpt2'.*supported: llama") as e:
        export_gguf(tmp_path / "gpt2", tmp_path / "out" / "gpt2.gguf")
    assert all(name in str(e.value) for name in GGUF_ARCHITECTURES)


def test_interrupted_write_leaves_nothing_that_looks_finished(tiny_model_dir, tmp_path, monkeypatch):
    def crash(self, **kw):
        raise OSError("disk full")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", crash)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tiny_model_dir, out / "m.gguf")
    assert list(out.iterdir()) == []


def test_untied_model_writes_its_own_output_tensor(tiny_model_dir, tiny, tmp_path):
    rng = np.random.default_rng(0)

    def add_head(w):
        w["lm_head.weight"] = rng.normal(0, 0.05, size=(1024, 64)).astype(np.float32)
    untied = copy_with_weights(tiny_model_dir, tmp_path / "untied", add_head)
    cfg = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    model, _, _ = load_torch(str(untied))
    path = export_gguf(untied, tmp_path / "untied.gguf")
    assert check_gguf(path).n_tensors == 21  # + output.weight
    ids = tiny[2]
    np.testing.assert_allclose(llama_logits(path, ids), torch_logits(model, ids), atol=F32_ATOL, rtol=0)
    # the same config without its lm_head is incomplete, not silently tied
    weights = load_file(untied / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, untied / "model.safetensors")
    with pytest.raises(ExportError, match="output.weight"):
        export_gguf(untied, tmp_path / "untied2.gguf")


def test_pre_tokenizer_without_llama_cpp_equivalent_is_refused(tiny_model_dir, tmp_path):
    src = tmp_path / "prefix-space"
    shutil.copytree(tiny_model_dir, src)
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["pre_tokenizer"]["add_prefix_space"] = True  # llama.cpp's gpt-2 pre-tokenizer adds no space
    (src / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ExportError, match="pre-tokenizer.*supported: gpt-2, smollm"):
        export_gguf(src, tmp_path / "out.gguf")


def test_pre_tokenizer_sequences_map_by_their_steps(tmp_path):
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": True}
    name = gguf_export._pre_tokenizer_name
    assert name(byte_level, tmp_path) == "gpt-2"
    assert name({"type": "Sequence", "pretokenizers": [digits, byte_level]}, tmp_path) == "smollm"
    with pytest.raises(ExportError, match="pre-tokenizer"):
        name({"type": "Sequence", "pretokenizers": [{**digits, "individual_digits": False}, byte_level]}, tmp_path)
    with pytest.raises(ExportError, match="pre-tokenizer"):
        name(None, tmp_path)


def test_quantiser_failure_is_an_export_error_and_leaves_nothing(f32_gguf, tmp_path):
    q8 = quantize_gguf(f32_gguf, tmp_path / "q8.gguf", "Q8_0")
    with pytest.raises(ExportError, match="could not quantise"):
        quantize_gguf(q8, tmp_path / "requant.gguf", "Q4_0")  # llama.cpp refuses to requantise q8_0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8.gguf"]
