"""The memory roofline of decoding: how many tokens/s the weights' bytes allow at this device's bandwidth.

Decoding one token (batch 1) reads every weight once and does about two flops per weight read: an
arithmetic intensity low enough that, in the roofline model (Williams, Waterman and Patterson,
"Roofline: an insightful visual performance model for multicore architectures", CACM 2009), memory
bounds it: ``tok/s <= bandwidth / bytes read per token``. Counting only the weights
(no KV cache, no activations) makes the bound optimistic, hence an upper bound; the bandwidth is
measured here (:func:`memory_bandwidth`), so it is this device's, not a datasheet's.

Torch-free: numpy, the GGUF reader of :mod:`.gguf_file` and, for ONNX, the optional ``onnx``
package (its graph only; the weights are never loaded).
"""
from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..artifacts import MODEL_FILES, artifact_format
from ..errors import ConfigError, ModelFormatError, require
from .gguf_file import tensor_bytes

MiB = 2**20

# GGUF tensors only gathered (one row per token) whatever the model: absolute position embeddings
GGUF_GATHERED = ("position_embd.weight",)
# ONNX ops that read one row of their tables per index: (domain, op type) -> the index of the indices input
GATHER_OPS: dict[tuple[str, str], int] = {("", "Gather"): 1, ("com.microsoft", "GatherBlockQuantized"): 1}
# bits per element of the ONNX types numpy has no exact itemsize for
_ONNX_BITS = {"UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2}


# --- bandwidth ----------------------------------------------------------------------------------

def memory_bandwidth(threads: int = 1, *, mib: int = 256, repeats: int = 5) -> float:
    """Read bandwidth of this device in bytes/s: ``threads`` threads each sum their own int64 array.

    ``mib``: the total working set, split evenly across the threads; it must be several times the
    last-level cache or the cache is what gets measured. Each thread writes its array first (every
    page touched, on the thread's own NUMA node) and then reduces it ``repeats`` times, all threads
    released together by a barrier; a repeat lasts from the first thread's start to the last one's
    end, and the best repeat counts. numpy releases the GIL in the reduction, and an int64 sum is
    bound by memory, not by arithmetic (a float sum is pairwise and slower).
    """
    for name, value in (("threads", threads), ("mib", mib), ("repeats", repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"memory_bandwidth: {name} must be an integer >= 1, got {value!r}")
    n = max(1, mib * MiB // 8 // threads)  # int64 elements per thread
    barrier = threading.Barrier(threads)
    spans: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            a = np.ones(n, dtype=np.int64)
            for _ in range(repeats):
                barrier.wait()
                t0 = time.perf_counter()
                np.add.reduce(a)
                spans[i].append((t0, time.perf_counter()))
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:  # noqa: BLE001 - MemoryError and the like: raised below
            errors.append(e)
            barrier.abort()

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    best = min(max(s[r][1] for s in spans) - min(s[r][0] for s in spans) for r in range(repeats))
    return n * 8 * threads / max(best, 1e-9)


# --- bytes read per token -----------------------------------------------------------------------

def weight_bytes_per_token(path: str | Path) -> int:
    """Bytes of weights one decoded token reads: every weight tensor but an input embedding only gathered.

    ``path``: a ``.gguf`` or ``.onnx`` file, or an export directory (``model.gguf`` / ``model.onnx``).
    GGUF: all tensors, less ``token_embd.weight`` when a separate ``output.weight`` exists (without
    one the embedding is tied, it is the LM head too and is read in full) and less ``position_embd``.
    ONNX: all initializers (their sizes from the graph and the external-data entries; the weights are
    not loaded), less those whose every direct consumer gathers rows of them (``Gather``,
    ``com.microsoft.GatherBlockQuantized``); an initializer reached through a Cast or a Reshape first
    counts as read. The one gathered row per token is left out (negligible). ModelFormatError when
    ``path`` is neither format.
    """
    path = Path(path)
    if path.is_dir():
        fmt = artifact_format(path)
        path = path / MODEL_FILES[fmt]
    elif path.suffix in (".gguf", ".onnx") and path.is_file():
        fmt = path.suffix[1:]
    else:
        raise ModelFormatError(f"{path}: not a .gguf or .onnx file nor an export directory; "
                               "cannot tell the bytes it reads per token")
    return _gguf_bytes(path) if fmt == "gguf" else _onnx_bytes(path)


def _gguf_bytes(path: Path) -> int:
    sizes = tensor_bytes(path)
    skip = set(GGUF_GATHERED)
    if "output.weight" in sizes:  # untied: the input embedding is only gathered
        skip.add("token_embd.weight")
    return sum(n for name, n in sizes.items() if name not in skip)


def _onnx_bytes(path: Path) -> int:
    onnx = require("onnx", "export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and the like: not an ONNX model
        raise ModelFormatError(f"{path}: unreadable ONNX model ({type(e).__name__}: {e})") from None
    consumers: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    _consumers(onnx, model.graph, consumers)

    def gathered(name: str) -> bool:
        """Every node reading ``name`` gathers rows of it (reads it, but not as its indices)."""
        uses = consumers.get(name)
        return bool(uses) and all((d, op) in GATHER_OPS and i != GATHER_OPS[d, op] for d, op, i in uses)

    return sum(_initializer_bytes(onnx, t, path) for t in model.graph.initializer if not gathered(t.name))


def _consumers(onnx, graph, out: dict[str, list[tuple[str, str, int]]]) -> None:
    """(domain, op type, input index) of every node reading each name, subgraphs (If, Loop, Scan) included."""
    for node in graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        for i, name in enumerate(node.input):
            if name:
                out[name].append((domain, node.op_type, i))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _consumers(onnx, attr.g, out)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _consumers(onnx, g, out)


def _initializer_bytes(onnx, tensor, path: Path) -> int:
    """An initializer's size: its external-data ``length``, else its raw bytes, else elements x element size."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        entries = {e.key: e.value for e in tensor.external_data}
        if "length" in entries:
            return int(entries["length"])
    elif tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    try:
        type_name = onnx.TensorProto.DataType.Name(tensor.data_type)
        bits = _ONNX_BITS.get(type_name)
        if bits is None and type_name != "STRING":  # strings have no fixed size
            bits = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize * 8
    except (KeyError, TypeError, ValueError):
        bits = None
    if not bits:
        raise ModelFormatError(f"{path}: initializer {tensor.name!r} has data type {tensor.data_type}, "
                               "whose size per element is unknown")
    return math.ceil(math.prod(tensor.dims) * bits / 8)


def roofline_tok_s(bytes_per_token: float, bandwidth: float) -> float:
    """The memory-bound ceiling of decode tokens/s: ``bandwidth`` (bytes/s) / ``bytes_per_token``."""
    if not (bytes_per_token > 0 and bandwidth > 0):
        raise ConfigError(f"roofline_tok_s needs bytes_per_token > 0 and bandwidth > 0, got "
                          f"{bytes_per_token!r} and {bandwidth!r}")
    return bandwidth / bytes_per_token
