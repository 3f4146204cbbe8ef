import subprocess
import sys


def test_runtime_import_leaves_torch_and_transformers_unimported():
    code = (
        "import sys, edge_downscale.runtime, edge_downscale.runtime.llamacpp, edge_downscale.eval.bpb, "
        "edge_downscale.eval.mc, edge_downscale.runtime.router, edge_downscale.runtime.onnx, "
        "edge_downscale.runtime.ensemble, edge_downscale.runtime.strategies, edge_downscale.runtime.gguf_file, "
        "edge_downscale.runtime.generation, edge_downscale.artifacts\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime imported: {out.stdout.strip()}"


def test_backend_registry_is_lazy_and_complete():
    from edge_downscale.errors import ConfigError
    from edge_downscale.runtime import BACKENDS, Backend, backend_class

    assert set(BACKENDS) == {"llamacpp", "onnx"}  # device backends only: torch is opened by models.open_backend
    assert issubclass(backend_class("llamacpp"), Backend)
    try:
        backend_class("nope")
    except ConfigError as e:
        assert "llamacpp" in str(e)
    else:
        raise AssertionError("unknown backend accepted")


def test_open_artifact_picks_the_backend_from_the_model_file(tmp_path):
    import pytest

    from edge_downscale.artifacts import artifact_format, model_file
    from edge_downscale.errors import ConfigError, ModelFormatError
    from edge_downscale.runtime import artifact_backend, open_artifact

    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "model.gguf").write_bytes(b"nope")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "model.onnx").write_bytes(b"nope")
    assert artifact_format(tmp_path / "g") == "gguf" and model_file(tmp_path / "o") == tmp_path / "o" / "model.onnx"
    assert artifact_backend(tmp_path / "g") == "llamacpp" and artifact_backend(tmp_path / "o") == "onnx"
    assert model_file(tmp_path / "x", "gguf") == tmp_path / "x" / "model.gguf"
    with pytest.raises(ModelFormatError, match="neither model.gguf nor model.onnx"):
        model_file(tmp_path)
    with pytest.raises(ModelFormatError, match="bad magic"):  # the GGUF header check runs before llama.cpp
        open_artifact(tmp_path / "g")
    with pytest.raises(ConfigError, match="does not run exported artifacts"):
        open_artifact(tmp_path / "g", "torch")


def test_generation_config_build_merges_options():
    import pytest

    from edge_downscale.errors import ConfigError
    from edge_downscale.runtime import GenerationConfig

    base = GenerationConfig(max_tokens=16, stop=("\n",))
    assert GenerationConfig.build() == GenerationConfig()
    assert GenerationConfig.build(base) is base
    assert GenerationConfig.build(base, temperature=0.5, stop=["x"]) == GenerationConfig(16, 0.5, stop=("x",))
    with pytest.raises(ConfigError, match="unknown key.*max_tokens"):
        GenerationConfig.build(base, max_new_tokens=3)
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig.build(top_p=0)
