"""Estimates for `build --dry-run` and the build's ETA: time and disk per task, and the law's quality.

Time comes from throughput measured by earlier builds on this machine (``WORK/throughput.json``:
seconds per unit of work per task kind, a running mean), else from the defaults below, measured
for SmolLM2-135M on a 2-core CPU (README, "Results"). Disk comes from the teacher's parameter count.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .._io import write_json_atomic
from ..compress.prune.methods import REGISTRY
from ..errors import EdgeDownscaleError
from .plan import Task
from .recipe import Recipe

THROUGHPUT_FILE = "throughput.json"
# kind -> (unit, seconds per unit) measured on a 2-core CPU for SmolLM2-135M.
DEFAULT_RATES: dict[str, tuple[str, float]] = {
    "corpus": ("task", 40.0),
    "dataprune": ("task", 15.0),
    "adapt": ("token", 1 / 265.0),
    "prune": ("episode", 2.7),
    "recover-finetune": ("token", 1 / 265.0),
    "recover-distill": ("token", 1 / 183.0),
    "export": ("quant", 25.0),
    "bundle": ("member", 8.0),
}
FIXED_SECONDS = {"adapt": 25.0, "recover-finetune": 25.0, "recover-distill": 80.0, "export": 20.0, "prune": 20.0}
BITS_PER_WEIGHT = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_0": 5.5, "q5_k_m": 5.7,
                   "q4_0": 4.5, "q4_1": 5.0, "q4_k_m": 6.3, "fp32": 32, "fp16": 16, "int8": 8.5, "int4": 4.5}


def rate_key(task: Task) -> str:
    return f"recover-{task.params['mode']}" if task.kind == "recover" else task.kind


def units(task: Task) -> float:
    """How much work a task is, in its kind's unit (tokens trained, quantisations, members...)."""
    per_kind = {
        "adapt": lambda: task.params["train"]["token_budget"],
        "recover": lambda: task.params["train"]["token_budget"],
        "prune": lambda: _policy_episodes(task.params),
        "export": lambda: len(task.params["quants"]),
        "bundle": lambda: len(task.params["domains"]),
    }
    return float(per_kind.get(task.kind, lambda: 1)())


def _policy_episodes(params: dict[str, Any]) -> float:
    """A prune task's work: its policy's episodes (learned methods), else 1."""
    learner = REGISTRY[params["method"]].learner
    if learner is None:
        return 1
    return (params.get(learner.field) or {}).get("episodes", learner.config.episodes)


class Throughput:
    """Seconds per unit of work per task kind, measured by earlier builds (a running mean)."""

    def __init__(self, work_root: Path):
        self.file = Path(work_root) / THROUGHPUT_FILE
        try:
            self.rates = json.loads(self.file.read_text()) if self.file.is_file() else {}
        except ValueError:
            self.rates = {}

    def seconds(self, task: Task) -> tuple[float, str]:
        key = rate_key(task)
        fixed = FIXED_SECONDS.get(key, 0.0)
        if key in self.rates:
            r = self.rates[key]
            return r["fixed"] + r["per_unit"] * units(task), "measured"
        return fixed + DEFAULT_RATES[key][1] * units(task), "default"

    def record(self, task: Task, seconds: float) -> None:
        key = rate_key(task)
        fixed = FIXED_SECONDS.get(key, 0.0)
        per_unit = max(seconds - fixed, 0.1 * seconds) / max(units(task), 1.0)
        old = self.rates.get(key)
        n = old["n"] if old else 0
        mean = (old["per_unit"] * n + per_unit) / (n + 1) if old else per_unit
        self.rates[key] = {"per_unit": mean, "fixed": fixed, "n": n + 1, "unit": DEFAULT_RATES[key][0]}
        write_json_atomic(self.file, self.rates)


def disk_bytes(task: Task, params: int) -> int:
    """Rough bytes a task's output takes, from the teacher's parameter count (float32 weights)."""
    ratio = lambda: task.params.get("ratio", 0.0)  # noqa: E731
    per_kind = {
        "corpus": lambda: 20e6, "dataprune": lambda: 15e6,
        "adapt": lambda: params * 4 * 3,  # weights + AdamW moments while training
        "recover": lambda: params * 4 * 3,
        "prune": lambda: params * 4 * (1 - 0.6 * ratio()),
        "export": lambda: sum(params * BITS_PER_WEIGHT.get(q, 16) / 8 for q in task.params["quants"]) + params * 4,
        "bundle": lambda: 0,  # hard links to the exports
    }
    return int(per_kind.get(task.kind, lambda: 0)())


def teacher_params(recipe: Recipe) -> int:
    """The teacher's parameter count, from its GGUF header or config (no weights loaded)."""
    from ..models import model_info

    try:
        info = model_info(recipe.teacher)
    except EdgeDownscaleError:
        info = {}
    if info.get("n_params"):
        return int(info["n_params"])
    weights = sum(f.stat().st_size for f in Path(recipe.teacher).glob("*.safetensors")) if Path(recipe.teacher).is_dir() else 0
    return weights // 4 if weights else 135_000_000  # float32 safetensors, else SmolLM2-135M's size


def predicted_quality(recipe: Recipe) -> dict[str, Any]:
    """The compression law's bits-per-byte per specialist at the recipe's ratio (with its caveats)."""
    if not recipe.law or "prune" not in recipe.stages:
        return {"note": "no compression law given (recipe key `law`) or no pruning stage"}
    from ..compress.laws.compression import fit_quality_law, load_results, predict, select_method

    try:
        results = load_results(recipe.law)
        points = select_method(results.points, recipe.prune.method)
        fit = fit_quality_law(points, metric=results.metric)
    except EdgeDownscaleError as e:
        return {"note": f"the law in {recipe.law} cannot be fitted: {e}"}
    dense = _dense_by_domain(Path(recipe.law))
    out: dict[str, Any] = {"law": str(recipe.law), "method": recipe.prune.method, "per_domain": {}}
    fallback = float(sum(p.L0 for p in points) / len(points))
    for d in recipe.domains:
        L0, ratio = dense.get(d.name, fallback), recipe.section("prune", d.name).ratio
        try:
            value = predict(fit, ratio, D=fit.fixed_D or 0.0, L0=L0)
        except EdgeDownscaleError as e:
            out["per_domain"][d.name] = {"ratio": ratio, "note": str(e)}
            continue
        out["per_domain"][d.name] = {"ratio": ratio, "dense": L0, "pruned_no_recovery": value}
    if fit.gamma is None:
        out["note"] = (f"the law's points all had D={fit.fixed_D:g} recovery tokens, so the effect of recovery "
                       "cannot be predicted: the figures are before recovery")
    return out


def _dense_by_domain(path: Path) -> dict[str, float]:
    try:
        rows = json.loads(path.read_text()).get("rows", [])
    except (OSError, ValueError):
        return {}
    for row in rows:
        if row.get("method") == "dense":
            return {d: v["bpb"] for d, v in row.get("domains", {}).items() if math.isfinite(v.get("bpb", math.nan))}
    return {}
