"""Export orchestration on the tiny model: parity gate, manifests, CLI errors (GGUF path; ONNX in its own file)."""
import shutil

import pytest
import torch
from click.testing import CliRunner

from edge_downscale.artifacts import model_file
from edge_downscale.cli import cli
from edge_downscale.errors import ConfigError
from edge_downscale.export import (ExportConfig, ExportError, ParityError, check_parity, enforce, export_model,
                                   verify_manifest)
from edge_downscale.models import load_torch
from edge_downscale.models.torch_backend import TorchBackend

TEXTS = ["Return the hash value of the object (if it has one). Hash values are integers. " * 6,
         "def f(x):\n    return [i * i for i in range(x)]  # squares\n" * 5]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    manifests = export_model(str(tiny_model_dir), ExportConfig(out_dir=out, format="gguf", quants="f32,q8_0"),
                             log=lambda m: None)
    return out, manifests


def test_export_config_validates_and_round_trips(tmp_path):
    cfg = ExportConfig(out_dir=tmp_path / "o", format="onnx", quants="int8, fp32")
    assert cfg.quants == ("int8", "fp32") and cfg.domain == "docs" and cfg.verify
    assert ExportConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="unknown onnx quantisation q8_0"):
        ExportConfig(out_dir="o", format="onnx", quants=["q8_0"])
    with pytest.raises(ConfigError, match="unknown key"):
        ExportConfig.from_dict({"out_dir": "o", "quants": ["f32"], "log": print})
    with pytest.raises(ConfigError, match="max_bytes"):
        ExportConfig(out_dir="o", quants="f32", max_bytes=0)


def test_export_writes_gated_artifacts_with_verifiable_manifests(exported, tiny_model_dir):
    out, manifests = exported
    assert sorted(p.name for p in out.iterdir()) == ["gguf-f32", "gguf-q8_0"]  # no work files left
    for m in manifests:
        assert m["parity"]["passed"] and m["parity"]["kl_tokens"] > 0
        assert m["source"]["sha256"] and m["context_length"] == 512 and set(m["files"]) == {"model.gguf"}
        assert verify_manifest(out / f"gguf-{m['quantization']}")["quantization"] == m["quantization"]
    f32 = manifests[0]["parity"]
    assert abs(f32["bpb_rel_delta"]) < 1e-3 and f32["mean_kl"] < 1e-4


def test_manifest_detects_a_modified_file(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out / "gguf-q8_0", copy)
    with open(model_file(copy), "r+b") as f:
        f.seek(-10, 2)
        f.write(b"\xff" * 10)
    with pytest.raises(ExportError, match="does not match its manifest"):
        verify_manifest(copy)
    (copy / "model.json").unlink()
    with pytest.raises(ExportError, match="not a finished export"):
        verify_manifest(copy)


def test_parity_gate_fails_on_a_corrupted_weight(tiny_model_dir, tmp_path):
    from edge_downscale.export.gguf import export_gguf
    from edge_downscale.runtime.llamacpp import LlamaCppBackend

    model, tok, _ = load_torch(str(tiny_model_dir))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(-8.0)  # one corrupted tensor
    bad_dir = tmp_path / "bad"
    model.save_pretrained(bad_dir, safe_serialization=True)
    tok.save_pretrained(bad_dir)
    source = TorchBackend.from_ref(str(tiny_model_dir))
    with LlamaCppBackend(export_gguf(bad_dir, tmp_path / "bad.gguf"), n_ctx=512) as exported_bad:
        result = check_parity(source, exported_bad, TEXTS, "q8_0")
    assert not result.passed and result.mean_kl > result.max_kl
    with pytest.raises(ParityError, match=r"parity gate failed: q8_0: bits/byte .* vs source"):
        enforce(result)
    assert enforce(result, allow_degraded=True) is result


def test_failed_gate_leaves_nothing_behind(tiny_model_dir, tmp_path, monkeypatch):
    """A quantiser that produces a broken model (a fault) must not leave a finished-looking directory."""
    from edge_downscale.export import gguf as gguf_mod

    def broken_quantize(src, dst, quant, **kw):
        model, tok, _ = load_torch(str(tiny_model_dir))
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(0.0)
        d = tmp_path / "broken"
        model.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
        return gguf_mod.export_gguf(d, dst)

    monkeypatch.setattr(gguf_mod, "quantize_gguf", broken_quantize)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--format", "gguf", "--quant", "q8_0", "--out", str(out)])
    assert res.exit_code == 2 and "parity gate failed" in res.output and "Traceback" not in res.output
    assert not out.exists() and not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


@pytest.mark.parametrize("args,msg", [
    (["--format", "gguf", "--quant", "q3_xs"], "unknown gguf quantisation q3_xs; available: f32, f16, q8_0"),
    (["--format", "onnx", "--quant", "q8_0"], "unknown onnx quantisation q8_0; available: fp32, int8"),
])
def test_cli_rejects_unknown_quantisations_with_the_list(tiny_model_dir, tmp_path, args, msg):
    res = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2 and msg in res.output and not (tmp_path / "o").exists()


def test_cli_refuses_existing_output_and_missing_tokenizer(tiny_model_dir, tmp_path):
    (tmp_path / "o").mkdir()
    res = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--format", "gguf", "--quant", "f32", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "already exists" in res.output
    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_model_dir, no_tok)
    (no_tok / "tokenizer.json").unlink()
    res = CliRunner().invoke(cli, ["export", str(no_tok), "--format", "gguf", "--quant", "f32", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "tokenizer" in res.output and not (tmp_path / "x").exists()
