"""The recipe's JSON Schema (draft 2020-12), generated from the section dataclasses and their comments."""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import re
import types
import typing
from typing import Any, Union

from ..compress.prune.ffn_policy import FFNPolicyConfig
from ..compress.prune.methods import METHODS
from ..compress.prune.prunenet import GRADIENTS, SELECTIONS, PruneNetConfig
from ..compress.train.config import CURRICULA, DEVICES, DIVERGENCES, PRECISIONS, TRAIN_MODES, DistillConfig, TrainConfig
from ..config import EvalConfig, StageConfig
from ..data import SPLITS
from ..data.prune.config import PruneRecipe
from ..data.prune.steps import STEPS
from ..export.api import EXPORT_FORMATS, ONNX_GRAPHS
from ..runtime.router import ROUTERS
from ..runtime.strategies import STRATEGIES
from . import recipe as R
from ._typed import hints

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# (class, field) -> the allowed values (for a list field: of its items).
CHOICES: dict[tuple[type, str], Any] = {
    (R.Recipe, "device"): DEVICES, (R.Recipe, "stages"): R.STAGES,
    (R.ModelPruneSpec, "method"): METHODS, (R.RecoverSpec, "mode"): R.RECOVER_MODES,
    (R.RecoverSpec, "teacher"): R.KD_TEACHERS, (R.ExportSpec, "format"): tuple(EXPORT_FORMATS),
    (R.ExportSpec, "quants"): tuple(dict.fromkeys(q for qs in EXPORT_FORMATS.values() for q in qs)),
    (R.ExportSpec, "member_quant"): tuple(dict.fromkeys(q for qs in EXPORT_FORMATS.values() for q in qs)),
    (R.ExportSpec, "onnx_graph"): ONNX_GRAPHS,
    (R.EnsembleRecipe, "strategy"): tuple(STRATEGIES), (R.EnsembleRecipe, "router_kind"): tuple(sorted(ROUTERS)),
    (TrainConfig, "train"): TRAIN_MODES, (TrainConfig, "precision"): PRECISIONS, (TrainConfig, "device"): DEVICES,
    (DistillConfig, "divergence"): DIVERGENCES, (DistillConfig, "curriculum"): CURRICULA,
    (PruneNetConfig, "gradient"): GRADIENTS, (PruneNetConfig, "select"): SELECTIONS,
    (FFNPolicyConfig, "select"): SELECTIONS,
    (EvalConfig, "split"): SPLITS, (PruneRecipe, "steps"): tuple(STEPS), (PruneRecipe, "target_split"): SPLITS,
}
PATTERNS = {(R.DomainSpec, "name"): R.NAME.pattern, (R.Recipe, "name"): R.RECIPE_NAME.pattern,
            (PruneNetConfig, "device"): r"^(auto|cpu|cuda(:[0-9]+)?)$",
            (FFNPolicyConfig, "device"): r"^(auto|cpu|cuda(:[0-9]+)?)$"}


@functools.lru_cache(maxsize=None)
def _comments(cls: type) -> dict[str, str]:
    """``field: type = default  # comment`` lines of the class body."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", src, re.M)}


def _doc(cls: type) -> str:
    return " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())


def _type(hint, choices=None) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        arms = [_type(a, choices) for a in args if a is not type(None)]
        arm = arms[0] if len(arms) == 1 else {"anyOf": arms}
        if type(None) in args:
            return {"anyOf": [arm, {"type": "null"}]}
        return arm
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}
    if hint in simple:
        out: dict[str, Any] = {"type": simple[hint]}
        if choices:
            out["enum"] = list(choices)
        return out
    if hint in (tuple, list) or origin in (tuple, list):
        out = {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis or (origin is list and args):
            out["items"] = _type(args[0], choices)
        elif args:
            out.update(prefixItems=[_type(a) for a in args], minItems=len(args), maxItems=len(args))
        elif choices:
            out["items"] = {"enum": list(choices)}
        return out
    if isinstance(hint, type) and issubclass(hint, StageConfig):
        return _object(hint)
    return {}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return dataclasses.MISSING
    if isinstance(value, StageConfig):
        return dataclasses.MISSING
    return R.plain(value)


def _object(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    props = {}
    comments = _comments(cls)
    required = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        s = _type(hints(cls)[f.name], CHOICES.get((cls, f.name)))
        if (cls, f.name) in PATTERNS:
            s["pattern"] = PATTERNS[(cls, f.name)]
        default = _default(f)
        if default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        elif default is not dataclasses.MISSING:
            s["default"] = default
        if f.name in comments:
            s["description"] = comments[f.name]
        props[f.name] = s
    out: dict[str, Any] = {"type": "object", "description": _doc(cls), "properties": props,
                           "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _quants_by_format() -> list[dict[str, Any]]:
    default = R.ExportSpec.format  # an absent format is the default one
    return [{"if": {"properties": {"format": {"const": fmt}}, **({} if fmt == default else {"required": ["format"]})},
             "then": {"properties": {"quants": {"items": {"enum": list(qs)}},
                                     "member_quant": {"enum": [*qs, None]}}}}
            for fmt, qs in EXPORT_FORMATS.items()]


def build_schema() -> dict[str, Any]:
    top = _object(R.Recipe, skip=("source",))
    top["properties"]["name"]["description"] = "default: the recipe file's stem"
    top["properties"]["export"]["allOf"] = _quants_by_format()
    partial = {k: v for k, v in copy.deepcopy(top).items() if k not in ("required", "description")}
    partial["description"] = "a partial recipe, deep-merged over the base (mappings merge, lists and scalars replace)"
    top["properties"]["profiles"] = {
        "type": "object", "additionalProperties": partial,
        "description": "named partial recipes: edge-downscale build RECIPE --profile NAME"}
    domain = top["properties"]["domains"]["items"]["properties"]
    for stage in R.MODEL_SECTIONS:  # a domain's overrides: the section's keys, merged over the recipe's
        domain[stage] = {**copy.deepcopy(top["properties"][stage]), "description": domain[stage]["description"]}
    top["required"] = ["teacher", "domains"]
    top["properties"]["domains"]["minItems"] = 1
    top["properties"]["stages"]["uniqueItems"] = True
    return {"$schema": DRAFT, "title": "edge-downscale recipe", **top}
