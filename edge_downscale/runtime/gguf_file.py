"""GGUF sanity checks done in Python before any native library (llama.cpp, transformers) sees the file.

A wrong or truncated file handed to llama.cpp crashes or hangs; here it is a one-line
:class:`~edge_downscale.errors.ModelFormatError`.
"""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError, require

GGUF_MAGIC = b"GGUF"


@dataclasses.dataclass
class GGUFInfo:
    path: str
    version: int
    n_tensors: int
    architecture: str
    name: str
    file_type: str
    context_length: int | None
    n_params: int
    tensor_types: dict[str, int]
    metadata: dict[str, Any]


def check_gguf(path: str | Path, *, parse: bool = True) -> GGUFInfo | None:
    """Check magic, version and that every tensor's bytes lie inside the file.

    ``parse=False`` stops after the fixed header (cheap, no gguf-py needed).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] != GGUF_MAGIC:
        raise ModelFormatError(f"{path}: not a GGUF file (bad magic); expected a llama.cpp .gguf model")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    if not parse:
        return None
    gguf = require("gguf", "llama")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # gguf-py raises assorted errors on damaged files
        raise ModelFormatError(f"{path}: truncated or corrupt GGUF ({type(e).__name__}: {e})") from None
    end = 0
    types: dict[str, int] = {}
    n_params = 0
    for t in reader.tensors:
        end = max(end, int(t.data_offset) + int(t.n_bytes))
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        n_params += int(t.n_elements)
        if t.data.nbytes != int(t.n_bytes):
            end = size + 1
            break
    if end > size or len(reader.tensors) != n_tensors:
        raise ModelFormatError(
            f"{path}: truncated GGUF (tensor data needs {end} bytes, file has {size}); re-download it"
        )
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key.startswith("tokenizer.ggml.") and key not in (
            "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.add_bos_token",
        ):
            continue
        meta[key] = _field_value(field)
    arch = str(meta.get("general.architecture", ""))
    ftype = meta.get("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else ""
    except ValueError:
        ftype_name = str(ftype)
    return GGUFInfo(
        path=str(path), version=version, n_tensors=n_tensors, architecture=arch,
        name=str(meta.get("general.name", "")), file_type=ftype_name,
        context_length=meta.get(f"{arch}.context_length"), n_params=n_params,
        tensor_types=types, metadata=meta,
    )


def _field_value(field) -> Any:
    """Decode a gguf-py ReaderField into a plain Python value (strings, numbers, short lists)."""
    import numpy as np

    gguf = require("gguf", "llama")
    kinds = field.types
    if not kinds:
        return None
    if kinds[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    if kinds[0] == gguf.GGUFValueType.ARRAY:
        n = len(field.data)
        if n > 16:
            return f"<array of {n}>"
        if len(kinds) > 1 and kinds[1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
        return [np.asarray(field.parts[i]).item() for i in field.data]
    value = np.asarray(field.parts[field.data[0]])
    return value.item() if value.size == 1 else value.tolist()


def tensor_bytes(path: str | Path) -> dict[str, int]:
    """{tensor name: bytes of its data} of a GGUF file (quantised blocks included), from its header alone."""
    check_gguf(path, parse=False)  # magic and version first: gguf-py's errors on other files are obscure
    gguf = require("gguf", "llama")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # gguf-py raises assorted errors on damaged files
        raise ModelFormatError(f"{path}: truncated or corrupt GGUF ({type(e).__name__}: {e})") from None
    return {str(t.name): int(t.n_bytes) for t in reader.tensors}
