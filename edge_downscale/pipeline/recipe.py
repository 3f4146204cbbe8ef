"""TEMPORARY STUB (replaced by the recipe module)."""
from __future__ import annotations
import dataclasses
from pathlib import Path
from typing import Any
import yaml
from ..config import EvalConfig
from ..data.corpus import CorpusConfig
from ..data.prune.config import PruneRecipe
from ..compress.train.config import TrainConfig, DistillConfig
from ..compress.prune.prunenet import PruneNetConfig

@dataclasses.dataclass
class DomainSpec:
    name: str
    corpus: str
@dataclasses.dataclass
class DataSpec:
    corpus: Any
    prune: Any
@dataclasses.dataclass
class AdaptSpec:
    train: Any
    replay: Any = None
@dataclasses.dataclass
class ModelPruneSpec:
    method: str = "prunenet"; ratio: float = 0.3; multiple: int = 64; seed: int = 0; prunenet: Any = None; calib_domain: Any = None
@dataclasses.dataclass
class RecoverSpec:
    mode: str = "finetune"; teacher: str = "adapted"; train: Any = None; distill: Any = None
@dataclasses.dataclass
class ExportSpec:
    format: str = "gguf"; quants: tuple = ("q8_0",); member_quant: Any = None; max_bytes: int = 6000; allow_degraded: bool = False
    @property
    def bundle_quant(self): return self.member_quant or self.quants[0]
@dataclasses.dataclass
class EnsembleRecipe:
    strategy: str = "route"; strategy_options: dict = dataclasses.field(default_factory=dict); router_kind: str = "ngram-linear"
    router_options: dict = dataclasses.field(default_factory=dict); target_acceptance: float = 0.5; memory_budget_mb: Any = None
    def to_dict(self): return dataclasses.asdict(self)
@dataclasses.dataclass
class Recipe:
    name: str; teacher: str; device: str; domains: list; data: Any; stages: tuple; adapt: Any; prune: Any; recover: Any
    export: Any; ensemble: Any; eval: Any; baselines: tuple = (); law: Any = None; source: Any = None
    def to_dict(self): return {"name": self.name, "teacher": self.teacher}

def _merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return out

def load_recipe(path, profile=None):
    d = yaml.safe_load(Path(path).read_text())
    if profile: d = _merge(d, d.get("profiles", {})[profile])
    base = Path(path).parent
    def corpus(c): 
        p = base / c
        return str(p) if p.exists() else c
    data = d.get("data", {})
    pr = data.get("prune")
    a = d.get("adapt", {}); p = d.get("prune", {}); r = d.get("recover", {}); e = d.get("export", {})
    dev = d.get("device", "auto")
    return Recipe(name=d.get("name", Path(path).stem), teacher=str(base / d["teacher"]) if (base / d["teacher"]).exists() else d["teacher"], device=dev,
        domains=[DomainSpec(x["name"], corpus(x["corpus"])) for x in d["domains"]],
        data=DataSpec(CorpusConfig.from_dict(data.get("corpus", {})), PruneRecipe.from_dict(pr) if pr else None),
        stages=tuple(d.get("stages", ["prune", "recover"])),
        adapt=AdaptSpec(TrainConfig.from_dict({**a.get("train", {}), "device": dev}), a.get("replay")),
        prune=ModelPruneSpec(**{k: v for k, v in p.items() if k != "prunenet"}, prunenet=PruneNetConfig.from_dict(p["prunenet"]) if p.get("prunenet") else None),
        recover=RecoverSpec(r.get("mode", "finetune"), r.get("teacher", "adapted"), TrainConfig.from_dict({**r.get("train", {}), "device": dev}), DistillConfig.from_dict(r.get("distill", {}))),
        export=ExportSpec(**{**e, "quants": tuple(e.get("quants", ["q8_0"]))}), ensemble=EnsembleRecipe(**d.get("ensemble", {})),
        eval=EvalConfig.from_dict(d.get("eval", {})), baselines=tuple(d.get("baselines", [])), law=d.get("law"), source=str(path))
