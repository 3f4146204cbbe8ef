"""Where the FFN lives in each supported architecture, and how to slice it.

Structured FFN pruning keeps a subset of the intermediate "rows": rows of ``gate_proj`` and
``up_proj`` (each d_ff x d_model) and the matching columns of ``down_proj`` (d_model x d_ff). The
result is a plain, smaller model of the same architecture: only ``intermediate_size`` changes, so
it saves, loads and exports like any other.

The layouts are data, not code: supporting an architecture with the same gated-FFN shape is one
entry in :data:`FFN_LAYOUTS`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from ...errors import ConfigError, EdgeDownscaleError, require


class PruneError(EdgeDownscaleError):
    """The model or the request cannot be pruned as asked."""


@dataclasses.dataclass(frozen=True)
class FFNLayout:
    """Attribute path from the CausalLM to its blocks, and the FFN projections inside each block."""

    blocks: str = "model.layers"
    mlp: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    width_key: str = "intermediate_size"
    norm: str = "post_attention_layernorm"  # the RMSNorm whose output the FFN reads
    norm_offset: float = 0.0  # the norm scales by (offset + weight): Gemma stores weight - 1


# model_type -> layout. All of these use a SwiGLU/GeGLU FFN: down(act(gate(x)) * up(x)).
FFN_LAYOUTS: dict[str, FFNLayout] = {
    "llama": FFNLayout(),
    "mistral": FFNLayout(),
    "qwen2": FFNLayout(),
    "qwen3": FFNLayout(),
    "gemma3_text": FFNLayout(norm="pre_feedforward_layernorm", norm_offset=1.0),
}


def layout_for(model) -> FFNLayout:
    model_type = getattr(model.config, "model_type", "?")
    try:
        return FFN_LAYOUTS[model_type]
    except KeyError:
        raise PruneError(
            f"architecture {model_type!r} has no recognised FFN; supported: {', '.join(sorted(FFN_LAYOUTS))}"
        ) from None


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclasses.dataclass
class FFN:
    """One block's FFN projections (torch ``nn.Linear`` modules), its owner and its input norm."""

    mlp: Any
    gate: Any  # weight (d_ff, d_model)
    up: Any  # weight (d_ff, d_model)
    down: Any  # weight (d_model, d_ff)
    norm: Any = None  # the RMSNorm before the FFN, weight (d_model,)
    norm_offset: float = 0.0

    def norm_scale(self):
        """The per-channel scale (d_model,) the FFN's input norm applies (ones if it has none)."""
        w = getattr(self.norm, "weight", None)
        if w is None:
            return self.gate.weight.new_ones(self.gate.weight.shape[1]).detach()
        return (w.detach().float() + self.norm_offset).to(self.gate.weight.device)


def ffn_layers(model) -> list[FFN]:
    lay = layout_for(model)
    out = []
    for block in _get(model, lay.blocks):
        mlp = _get(block, lay.mlp)
        out.append(FFN(mlp, getattr(mlp, lay.gate), getattr(mlp, lay.up), getattr(mlp, lay.down),
                       getattr(block, lay.norm, None), lay.norm_offset))
    return out


def ffn_width(model) -> int:
    return int(getattr(model.config, layout_for(model).width_key))


def kept_width(d_ff: int, ratio: float, multiple: int = 64) -> int:
    """Rows kept per layer when removing ``ratio`` of the FFN width, rounded to ``multiple``.

    PruneNet's ratio is a fraction of the FFN width (not of all parameters). Rounding to a multiple
    of 64 keeps matmuls aligned and quantisation blocks whole; the rounded width is reported.
    """
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise ConfigError(f"ratio must be in (0, 1), got {ratio!r}")
    if multiple < 1:
        raise ConfigError(f"multiple must be >= 1, got {multiple}")
    exact = (1.0 - ratio) * d_ff
    k = int(math.floor(exact / multiple + 0.5)) * multiple  # nearest multiple
    k = min(k, (d_ff // multiple) * multiple)
    if k < multiple or k >= d_ff:
        raise ConfigError(
            f"ratio {ratio} keeps {exact:.0f} of {d_ff} FFN rows, which rounds to {k} with multiple "
            f"{multiple}: choose a ratio that keeps between {multiple} and {d_ff - multiple} rows, or a smaller --multiple"
        )
    return k


def check_finite(model) -> None:
    torch = require("torch", "compress")
    for i, f in enumerate(ffn_layers(model)):
        for name in ("gate", "up", "down"):
            if not torch.isfinite(getattr(f, name).weight).all():
                raise PruneError(f"layer {i} {name}_proj has NaN/Inf weights: the model is damaged; reload or re-export it")


def _sliced_linear(linear, index, dim: int):
    """A new nn.Linear keeping ``index`` along weight dim ``dim`` (0: output rows, 1: input columns)."""
    torch = require("torch", "compress")
    w = linear.weight.detach().index_select(dim, index).clone()  # (k, d_model) or (d_model, k)
    bias = linear.bias
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias.detach().index_select(0, index) if dim == 0 else bias.detach())
    return new


def slice_ffn_(model, kept: list) -> None:
    """Keep rows ``kept[l]`` (sorted LongTensor, same length for all layers) of every FFN, in place."""
    lay = layout_for(model)
    layers = ffn_layers(model)
    if len(kept) != len(layers):
        raise PruneError(f"got kept indices for {len(kept)} layers, model has {len(layers)}")
    widths = {int(idx.numel()) for idx in kept}
    if len(widths) != 1:
        raise PruneError(f"all layers must keep the same width (HF configs hold one intermediate_size), got {sorted(widths)}")
    for f, idx in zip(layers, kept):
        idx = idx.to(f.gate.weight.device)
        setattr(f.mlp, lay.gate, _sliced_linear(f.gate, idx, 0))
        setattr(f.mlp, lay.up, _sliced_linear(f.up, idx, 0))
        setattr(f.mlp, lay.down, _sliced_linear(f.down, idx, 1))
        if hasattr(f.mlp, "intermediate_size"):
            f.mlp.intermediate_size = int(idx.numel())
    setattr(model.config, lay.width_key, widths.pop())
