"""What a measurement ran on: library versions, CPU, threads, commit. Every result file records it.

Torch-free and import-light: nothing here imports a heavy library (torch's thread count is read
only when torch is already imported), so the runtime and ``bench`` can call it on a device.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import __version__

# Distributions whose version changes a result (quantisers, kernels, exporters, tokenisers).
LIBRARIES = ("numpy", "torch", "transformers", "tokenizers", "accelerate", "peft", "datasets", "safetensors",
             "gguf", "llama_cpp_python", "onnx", "onnx-ir", "onnxruntime", "onnxruntime-gpu", "optimum",
             "optimum-onnx", "scikit-learn", "scipy")
# CPU features that select different int8/fp16 kernels in onnxruntime and llama.cpp.
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
               "OPENBLAS_L2_SIZE", "CUDA_VISIBLE_DEVICES")
REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO / "requirements"


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """{distribution: version} for the installed ones among ``names``, this package first."""
    out = {"edge-downscale": __version__}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """Model name, logical cores (all and usable by this process) and the kernel-selecting flags."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: the platform module's answer stands
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "machine": platform.machine(), "logical_cores": os.cpu_count(),
            "usable_cores": usable, "flags": [f for f in CPU_FLAGS if f in flags]}


def thread_settings() -> dict[str, Any]:
    out: dict[str, Any] = {k: os.environ[k] for k in THREAD_VARS if k in os.environ}
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        out["torch_threads"] = torch.get_num_threads()
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> dict[str, Any] | None:
    """The checkout's commit and whether tracked files differ from it; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def lock_files() -> dict[str, str]:
    """{lock file: sha256} of the checkout's ``requirements/*.txt`` (what ``make`` installs from)."""
    if not LOCK_DIR.is_dir():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(LOCK_DIR.glob("*.txt"))}


def gpu_info() -> list[dict[str, Any]] | None:
    """Name and memory of each NVIDIA GPU through NVML (nvidia-ml-py), when installed and present."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
    except Exception:  # not installed, no driver, no GPU
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"name": name.decode() if isinstance(name, bytes) else name,
                        "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total)})
        return out
    finally:
        pynvml.nvmlShutdown()


def environment() -> dict[str, Any]:
    """Everything a reader needs to trace a figure to the machine and software that produced it."""
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_info(),
            "gpu": gpu_info(), "threads": thread_settings(), "libraries": library_versions(),
            "git": git_commit(), "locks": lock_files()}


# ------------------------------------------------------------------------------------ lock check

def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_pins(path: str | Path) -> dict[str, str]:
    """{canonical name: version} of every ``name==version`` line of a requirements/lock file."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].split(";", 1)[0].strip().rstrip("\\").strip()
        if "==" in spec and not spec.startswith("-"):
            name, _, version = spec.partition("==")
            pins[_canonical(name.split("[", 1)[0])] = version.strip()
    return pins


def _matches(installed: str, pinned: str) -> bool:
    # a pin without a local label (torch==2.13.0) admits a local build of it (2.13.0+cpu), as pip does
    return installed == pinned or ("+" not in pinned and installed.split("+", 1)[0] == pinned)


def lock_mismatches(pins: dict[str, str]) -> list[str]:
    """One line per pinned distribution that is missing or installed at another version."""
    installed = {_canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
                 if d.metadata["Name"]}
    out = []
    for name, version in sorted(pins.items()):
        have = installed.get(name)
        if have is None:
            out.append(f"{name}=={version} is not installed")
        elif not _matches(have, version):
            out.append(f"{name} is {have}, the lock says {version}")
    return out


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edge_downscale._env",
                                 description="Print the environment as JSON, or check installed versions "
                                             "against lock files (exit 1 on any difference).")
    ap.add_argument("locks", nargs="*", help="requirements/*.txt lock files to check against")
    ap.add_argument("--pin", action="append", default=[], metavar="NAME==VERSION",
                    help="an extra pin to check (torch and llama-cpp-python, installed outside the lock)")
    args = ap.parse_args(argv)
    if not args.locks and not args.pin:
        import json

        print(json.dumps(environment(), indent=2))
        return 0
    pins: dict[str, str] = {}
    for lock in args.locks:
        if not Path(lock).is_file():
            print(f"error: {lock}: no such lock file (the locks are requirements/*.txt; `make lock` writes them)",
                  file=sys.stderr)
            return 2
        pins.update(read_pins(lock))
    for spec in args.pin:
        name, sep, version = spec.partition("==")
        if not sep:
            ap.error(f"--pin takes NAME==VERSION, got {spec!r}")
        pins[_canonical(name)] = version
    bad = lock_mismatches(pins)
    for line in bad:
        print(f"error: {line}; run `make env` (or `make lock` to change the lock)", file=sys.stderr)
    if not bad:
        print(f"{len(pins)} locked packages installed at their locked versions")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_main())
