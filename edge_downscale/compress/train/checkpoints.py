"""The files of a run directory: checkpoints (safetensors + JSON, no pickle), the JSONL log, weight fingerprints."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..._io import atomic_path
from ...errors import require
from .config import TrainingError

LOG = "train_log.jsonl"
RUN = "run.json"
SUMMARY = "eval_summary.json"
CHECKPOINTS = "checkpoints"


def trainable_named(model) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_checkpoint(path: Path, model, optimizer, state: dict[str, Any]) -> None:
    """Trainable weights + AdamW moments (safetensors) and the JSON state, atomically."""
    from safetensors.torch import save_file

    named = trainable_named(model)
    index = {id(p): i for i, (_, p) in enumerate(named)}
    moments = {}
    for p, st in optimizer.state.items():
        i = index[id(p)]
        for key, value in st.items():
            moments[f"{i}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in named}, str(tmp / "trainable.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def load_checkpoint(path: Path, model, optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    torch = require("torch", "compress")
    named = trainable_named(model)
    weights = load_file(str(path / "trainable.safetensors"))
    if set(weights) != {n for n, _ in named}:
        raise TrainingError(f"{path}: its weights do not match this model's trainable parameters; "
                            "it belongs to another run: start afresh without --resume")
    with torch.no_grad():
        for n, p in named:
            p.copy_(weights[n].to(p.device, p.dtype))
    moments = load_file(str(path / "optimizer.safetensors"))
    for i, (_, p) in enumerate(named):
        st = {k.split(".", 1)[1]: v.to(p.device) for k, v in moments.items() if k.split(".", 1)[0] == str(i)}
        if st:
            if "step" in st:
                st["step"] = st["step"].cpu()  # AdamW keeps its step counter on the CPU
            optimizer.state[p] = st
    return json.loads((path / "state.json").read_text())


def list_checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").exists()),
                  key=lambda p: int(p.name.split("-")[1]))


def weights_fingerprint(model) -> str:
    """A hash of a strided sample of every weight (LoRA adapters excluded): fast, still specific."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        t = p.detach().float().cpu().flatten()
        h.update(name.split("base_model.model.")[-1].encode())
        h.update(t[:: max(1, t.numel() // 4096)].numpy().tobytes())
    return h.hexdigest()[:24]


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out_dir) / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

