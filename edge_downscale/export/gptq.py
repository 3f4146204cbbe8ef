"""GPTQ for the fused ONNX graph's 4-bit MatMulNBits weights (Frantar et al., "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", ICLR 2023).

Round-to-nearest quantises each weight alone. GPTQ quantises the input columns of a linear layer one
at a time and spreads each column's rounding error over the columns not yet quantised, weighted by
the inverse Hessian of the layer's reconstruction loss ``||X W^T - X Wq^T||^2`` (``H = 2 X^T X``
over calibration tokens), so the layer's *outputs* on real inputs move as little as possible.

:func:`refit_int4` rewrites an exported graph in place: onnxruntime-genai's model builder has chosen
which MatMuls are 4-bit (block 32, one uint8 zero point per block) and laid them out; every 4-bit
weight is re-quantised by GPTQ from the torch source into the same tensors, 8-bit ones are kept.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import require
from .errors import ExportError

CALIBRATION_TOKENS = 8192  # calibration tokens GPTQ's Hessians are estimated on, by default
BITS = 4
LEVELS = 2**BITS - 1  # codes 0..15, dequantised as (code - zero) * scale
# Shrinks of a block's [min, max] range tried for its grid (the best, by Hessian-weighted error, is kept).
GRID_SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8)
# A fused-graph MatMulNBits node (by name) -> the source linears its weight stacks along the outputs,
# and the one whose input it shares. Llama-style module names (checked on SmolLM2, a Llama).
GRAPH_TO_SOURCE: dict[str, tuple[tuple[str, ...], str]] = {
    r"/model/layers\.(\d+)/attn/qkv_proj/MatMul_Q4": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                                       "self_attn.q_proj"),
    r"/model/layers\.(\d+)/attn/q_proj/MatMul_Q4": (("self_attn.q_proj",), "self_attn.q_proj"),
    r"/model/layers\.(\d+)/attn/k_proj/MatMul_Q4": (("self_attn.k_proj",), "self_attn.k_proj"),
    r"/model/layers\.(\d+)/attn/v_proj/MatMul_Q4": (("self_attn.v_proj",), "self_attn.v_proj"),
    r"/model/layers\.(\d+)/attn/o_proj/MatMul_Q4": (("self_attn.o_proj",), "self_attn.o_proj"),
    r"/model/layers\.(\d+)/mlp/gate_proj/MatMul_Q4": (("mlp.gate_proj",), "mlp.gate_proj"),
    r"/model/layers\.(\d+)/mlp/up_proj/MatMul_Q4": (("mlp.up_proj",), "mlp.up_proj"),
    r"/model/layers\.(\d+)/mlp/down_proj/MatMul_Q4": (("mlp.down_proj",), "mlp.down_proj"),
}


# --- the algorithm ------------------------------------------------------------------------------

def block_grid(w, h_diag, shrinks: Sequence[float] = GRID_SHRINKS):
    """Asymmetric 4-bit grid of one block per output row: (scale (N,), zero (N,)) as float tensors.

    ``w``: (N, B) the block's weights; ``h_diag``: (B,) the Hessian's diagonal there (how much each
    input matters). The range [min(w, 0), max(w, 0)], shrunk by each of ``shrinks``, maps onto codes
    0..15 with an integer zero point; per row the shrink with the least weighted squared error wins.
    """
    torch = require("torch", "export")
    lo = torch.clamp(w.min(1).values, max=0)  # (N,)
    hi = torch.clamp(w.max(1).values, min=0)
    best_scale = best_zero = best_err = None
    for s in shrinks:
        scale = torch.clamp((hi - lo) * s / LEVELS, min=1e-12)  # (N,)
        zero = torch.clamp(torch.round(-lo * s / scale), 0, LEVELS)
        dq = (torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], 0, LEVELS) - zero[:, None]) * scale[:, None]
        err = ((w - dq) ** 2 * h_diag[None, :]).sum(1)  # (N,)
        if best_err is None:
            best_scale, best_zero, best_err = scale, zero, err
        else:
            better = err < best_err
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
            best_err = torch.minimum(err, best_err)
    return best_scale, best_zero


def gptq(weight, hessian, *, block_size: int = 32, damp: float = 0.01, lazy: int = 128):
    """Quantise ``weight`` (N, K) to 4 bits in blocks of ``block_size`` inputs; returns (codes, scale, zero).

    ``hessian``: (K, K) ``2/n X^T X`` of the layer's inputs. codes (N, Kp) int64 in 0..15, scale and zero
    (N, Kp // block_size) float64, so ``weight ~= (codes - zero) * scale`` block by block; Kp is K
    rounded up to whole blocks (MatMulNBits' layout), the padding inputs being zero weights. Each
    block's grid is fixed when GPTQ reaches its first column (from the error-updated weights). Columns
    are processed in ``lazy``-wide batches whose updates to later columns are applied at once.
    """
    torch = require("torch", "export")
    N, K = weight.shape
    Kp = -(-K // block_size) * block_size
    W = torch.zeros(N, Kp, dtype=torch.float64)  # (N, Kp)
    W[:, :K] = weight.detach().to(torch.float64)
    H = torch.zeros(Kp, Kp, dtype=torch.float64)  # (Kp, Kp): padding inputs are never active
    H[:K, :K] = hessian.detach().to(torch.float64)
    K = Kp
    dead = torch.diag(H) == 0  # inputs never active in calibration: their weights cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(K, dtype=H.dtype)
    # upper Cholesky factor of H^-1: row i holds the update of columns >= i from column i's error
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes = torch.zeros(N, K, dtype=torch.int64)
    scale = torch.zeros(N, K // block_size, dtype=torch.float64)
    zero = torch.zeros_like(scale)
    for i1 in range(0, K, lazy):
        i2 = min(i1 + lazy, K)
        W1 = W[:, i1:i2].clone()  # (N, b) the batch, updated as it goes
        E1 = torch.zeros_like(W1)  # (N, b) scaled errors, for the later batches
        Hi = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            b = col // block_size
            if col % block_size == 0:  # a new block: its grid from the current (updated) weights
                scale[:, b], zero[:, b] = block_grid(W1[:, i:i + block_size], torch.diag(H)[col:col + block_size])
            q = torch.clamp(torch.round(W1[:, i] / scale[:, b]) + zero[:, b], 0, LEVELS)  # (N,)
            codes[:, col] = q.long()
            err = (W1[:, i] - (q - zero[:, b]) * scale[:, b]) / Hi[i, i]  # (N,)
            W1[:, i:] -= err[:, None] * Hi[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return codes, scale, zero


def dequantise(codes, scale, zero, block_size: int = 32):
    """(codes - zero) * scale, blocks expanded: the (N, Kp) weight a quantisation stands for."""
    torch = require("torch", "export")
    return (codes.to(torch.float64) - torch.repeat_interleave(zero, block_size, 1)) * torch.repeat_interleave(
        scale, block_size, 1)


def pack_matmulnbits(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, block_size: int = 32):
    """MatMulNBits' 4-bit tensors from (N, K) codes and (N, K/B) scales / zero points.

    Returns (B (N, K/B, B/2) uint8, two codes a byte, the even one in the low nibble; scales (N, K/B)
    float32; zero points (N, ceil(K/B / 2)) uint8, packed the same way), the layout of onnxruntime's
    ``com.microsoft.MatMulNBits`` with ``bits=4``.
    """
    n, k = codes.shape
    blocks = k // block_size
    c = codes.astype(np.uint8).reshape(n, blocks, block_size // 2, 2)
    packed = (c[..., 0] | (c[..., 1] << 4)).astype(np.uint8)
    z = np.pad(zero.astype(np.uint8), ((0, 0), (0, blocks % 2))).reshape(n, -1, 2)
    return packed, scale.astype(np.float32), (z[..., 0] | (z[..., 1] << 4)).astype(np.uint8)


# --- calibration and the graph ------------------------------------------------------------------

def input_hessians(model, token_ids: Sequence[Sequence[int]], names: Sequence[str]) -> dict:
    """{linear name: (K, K) float64 ``2/n X^T X``} of each named module's inputs over ``token_ids`` sequences."""
    torch = require("torch", "export")
    modules = dict(model.named_modules())
    sums: dict[str, object] = {}
    counts = dict.fromkeys(names, 0)

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)  # (tokens, K)
            sums[name] = sums.get(name, 0) + 2 * x.T @ x
            counts[name] += x.shape[0]
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for ids in token_ids:
                model(torch.tensor([list(ids)]))
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / counts[n] for n in names if counts[n]}


def calibration_sequences(tok, texts: Sequence[str], *, tokens: int, seq_len: int) -> list[list[int]]:
    """``tokens`` tokens of ``texts`` (joined) cut into sequences of ``seq_len``, spread over the whole text."""
    ids = tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    n = max(1, min(tokens // seq_len, len(ids) // seq_len))
    if len(ids) < seq_len:
        raise ExportError(f"GPTQ calibration: {len(ids)} tokens of text, fewer than one sequence of {seq_len}; "
                          "give a calibration corpus with more text")
    step = (len(ids) - seq_len) // n if n > 1 else 0
    return [ids[i * step:i * step + seq_len] for i in range(n)]


def _four_bit_nodes(graph) -> list[tuple[object, tuple[str, ...], str]]:
    """(node, source linears, Hessian linear) of every 4-bit MatMulNBits; ExportError for an unknown one."""
    out = []
    for node in graph.node:
        if node.op_type != "MatMulNBits" or not node.name.endswith("_Q4"):
            continue
        for pattern, (sources, shared) in GRAPH_TO_SOURCE.items():
            m = re.fullmatch(pattern, node.name)
            if m:
                prefix = f"model.layers.{m.group(1)}."
                out.append((node, tuple(prefix + s for s in sources), prefix + shared))
                break
        else:
            raise ExportError(f"GPTQ: no source linear known for the 4-bit node {node.name}; export with "
                              "int4_method k_quant (the builder's own rounding)")
    return out


def refit_int4(onnx_dir: str | Path, model_dir: str | Path, texts: Sequence[str], *, tokens: int = CALIBRATION_TOKENS,
               seq_len: int = 512, log: Callable[[str], None] = print) -> dict:
    """Re-quantise every 4-bit MatMulNBits weight of the fused export in ``onnx_dir`` by GPTQ, in place.

    ``texts``: calibration text (``tokens`` tokens of it, in sequences of ``seq_len``). The graph keeps
    its structure, block size and 8-bit matrices; returns a summary for export_info.json.
    """
    onnx = require("onnx", "export")
    torch = require("torch", "export")
    from ..models import load_torch

    t0 = time.perf_counter()
    path = Path(onnx_dir) / "model.onnx"
    old_data = {e.value for t in onnx.load(str(path), load_external_data=False).graph.initializer
                for e in t.external_data if e.key == "location"}
    model_proto = onnx.load(str(path))  # weights into memory: the data file is rewritten below
    targets = _four_bit_nodes(model_proto.graph)
    if not targets:
        raise ExportError(f"GPTQ: {path} has no 4-bit MatMulNBits weights to refit")
    model, tok, _ = load_torch(str(model_dir))
    model.eval()
    seq_len = min(seq_len, getattr(model.config, "max_position_embeddings", seq_len) or seq_len)
    seqs = calibration_sequences(tok, texts, tokens=tokens, seq_len=seq_len)
    hessians = input_hessians(model, seqs, sorted({shared for _, _, shared in targets}))
    log(f"  GPTQ: Hessians of {len(hessians)} layer inputs over {sum(map(len, seqs))} calibration tokens "
        f"({time.perf_counter() - t0:.0f} s)")
    modules = dict(model.named_modules())
    inits = {t.name: t for t in model_proto.graph.initializer}
    for node, sources, shared in targets:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = torch.cat([modules[s].weight for s in sources])  # (N, K): the stacked outputs, as the graph packs them
        if (attrs.get("N"), attrs.get("K")) != tuple(weight.shape):
            raise ExportError(f"GPTQ: {node.name} is {attrs.get('N')}x{attrs.get('K')} but {'+'.join(sources)} "
                              f"is {tuple(weight.shape)}")
        codes, scale, zero = gptq(weight, hessians[shared], block_size=attrs["block_size"])
        tensors = pack_matmulnbits(codes.numpy(), scale.numpy(), zero.numpy(), attrs["block_size"])
        for name, array in zip(node.input[1:4], tensors):
            old = inits[name]
            if int(np.prod(old.dims)) != array.size:
                raise ExportError(f"GPTQ: {name} holds {tuple(old.dims)}, not {array.shape}; the builder's layout changed")
            old.CopyFrom(onnx.numpy_helper.from_array(array.reshape(tuple(old.dims)), name))
    data = f"{path.name}.data"
    for name in old_data:  # onnx appends to an existing data file: start afresh (all weights are in memory)
        (path.parent / name).unlink(missing_ok=True)
    onnx.save_model(model_proto, str(path), save_as_external_data=True, location=data, size_threshold=1024)
    seconds = time.perf_counter() - t0
    log(f"  GPTQ: {len(targets)} 4-bit matrices refit in {seconds:.0f} s")
    return {"method": "gptq", "matrices": len(targets), "calibration_tokens": sum(map(len, seqs)),
            "seq_len": seq_len, "grid_shrinks": list(GRID_SHRINKS), "seconds": round(seconds, 1)}
