"""The build recipe: one YAML file -> :class:`Recipe` (teacher + domains -> specialists -> exports -> bundle).

Every section is a :class:`~edge_downscale.config.StageConfig` (validated on construction, JSON round-trip);
:func:`load_recipe` adds file positions to every error, profiles, and path resolution. Schema:
:func:`recipe_schema`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, ClassVar

from ..compress.prune.ffn_policy import FFNPolicyConfig
from ..compress.prune.methods import METHODS
from ..compress.prune.prunenet import PruneNetConfig
from ..compress.prune.refit import REFIT_MODES
from ..compress.train.config import DEVICES, DistillConfig, TrainConfig
from ..config import EvalConfig, check, check_int, is_number
from ..data import DEMO_DOMAINS, CorpusConfig
from ..data.prune.config import PruneRecipe
from ..errors import ConfigError
from ..export.api import EXPORT_FORMATS, ONNX_GRAPHS
from ..runtime.router import ROUTERS
from ..runtime.strategies import STRATEGIES
from ._typed import PathError, Section, build, hints, plain, show
from ._yaml import Locator, deep_merge, parse_marked

STAGES = ("adapt", "prune", "recover")
RECOVER_MODES = ("finetune", "distill")  # LM loss (compress.adapt) | knowledge distillation (compress.distill)
KD_TEACHERS = ("adapted", "dense")
DEFAULT_QUANTS = {"gguf": "q8_0", "onnx": "int8"}  # quants: [] means this one
NAME = re.compile(r"^[A-Za-z0-9_-]+$")
RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- sections

@dataclasses.dataclass
class DomainSpec(Section):
    """One specialist's domain: its name, where its text comes from, and what it changes of the model stages."""

    stage: ClassVar[str] = "domain"
    name: str  # plain [A-Za-z0-9_-]+, unique
    corpus: str | None = None  # a demo domain name, a directory, a text file or a .jsonl (default: the name)
    adapt: dict = dataclasses.field(default_factory=dict)  # adapt keys merged over the recipe's for this domain
    prune: dict = dataclasses.field(default_factory=dict)  # prune keys, e.g. {ratio: 0.1}: a domain with less headroom
    recover: dict = dataclasses.field(default_factory=dict)  # recover keys

    def validate(self) -> None:
        check(isinstance(self.name, str) and bool(NAME.match(self.name)),
              f"name must be plain letters, digits, '_' or '-', got {self.name!r}")
        if self.corpus is None:
            self.corpus = self.name
        self.corpus = os.fspath(self.corpus) if isinstance(self.corpus, os.PathLike) else self.corpus
        check(isinstance(self.corpus, str) and self.corpus != "",
              f"corpus must be a demo domain ({', '.join(DEMO_DOMAINS)}), a directory, a text file or a .jsonl")
        for stage in MODEL_SECTIONS:
            check(isinstance(getattr(self, stage), dict), f"{stage} must be a mapping of {stage} keys (or left out)")


@dataclasses.dataclass
class DataSpec(Section):
    """How each domain's corpus is built and (optionally) pruned before training."""

    stage: ClassVar[str] = "data"
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)  # CorpusConfig fields
    prune: PruneRecipe | None = None  # PruneRecipe fields; null = no data pruning


@dataclasses.dataclass
class AdaptSpec(Section):
    """Teacher adaptation per domain (domain-continual pretraining)."""

    stage: ClassVar[str] = "adapt"
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # TrainConfig fields
    replay: str | None = None  # replay corpus (demo domain or directory) mixed in at train.domain_share

    def validate(self) -> None:
        check(self.replay is None or (isinstance(self.replay, str) and self.replay != ""),
              "replay must be a demo domain, a corpus directory or null")
        if self.replay is None and self.train.domain_share < 1:
            raise PathError(("train", "domain_share"), f"{self.train.domain_share} < 1 mixes in replay text: "
                             "set adapt.replay (a demo domain or a directory) or use 1")


@dataclasses.dataclass
class ModelPruneSpec(Section):
    """Structured FFN pruning of the teacher (or the adapted teacher) into the student."""

    stage: ClassVar[str] = "prune"
    method: str = "prunenet"  # compress.prune method
    ratio: float = 0.3  # fraction of every FFN's width removed, in (0, 1)
    multiple: int = 64  # kept widths are rounded to this
    seed: int = 0
    prunenet: PruneNetConfig | None = None  # PruneNetConfig fields; null = its defaults (with this multiple and seed)
    ffn_policy: FFNPolicyConfig | None = None  # FFNPolicyConfig fields (method ffn-policy); null = its defaults
    calib_domain: str | None = None  # calibration text of method activation and of refit; null = each domain's own
    calib_sequences: int = 16  # 256-token calibration sequences
    refit: bool = False  # refit each down_proj by least squares over its kept rows (needs calibration text)
    refit_mode: str = "layer"  # layer (independent) | sequential (block by block, towards the dense output: better
    # before recovery, no better after the default recipe's KD; README "Refit")

    def validate(self) -> None:
        check(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check(is_number(self.ratio) and 0 < self.ratio < 1, f"ratio must be in (0, 1), got {self.ratio!r}")
        self.ratio = float(self.ratio)
        check_int(self, "multiple", 1)
        check_int(self, "seed")
        check(self.calib_domain is None or isinstance(self.calib_domain, str),
              "calib_domain must be a domain name or null")
        check_int(self, "calib_sequences", 1)
        check(isinstance(self.refit, bool), "refit must be true or false")
        check(self.refit_mode in REFIT_MODES, f"refit_mode must be one of {', '.join(REFIT_MODES)}, got {self.refit_mode!r}")


@dataclasses.dataclass
class RecoverSpec(Section):
    """Recovery training of each pruned specialist on its domain."""

    stage: ClassVar[str] = "recover"
    mode: str = "finetune"  # finetune (LM loss, compress.adapt) | distill (KD, compress.distill)
    teacher: str = "adapted"  # adapted | dense: the KD teacher when adapt ran before recover (distill only)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)  # TrainConfig fields
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)  # DistillConfig fields (mode distill)

    def validate(self) -> None:
        check(self.mode in RECOVER_MODES, f"mode must be one of {', '.join(RECOVER_MODES)}, got {self.mode!r}")
        check(self.teacher in KD_TEACHERS, f"teacher must be one of {', '.join(KD_TEACHERS)}, got {self.teacher!r}")


@dataclasses.dataclass
class ExportSpec(Section):
    """Export of every specialist, each artifact checked against its torch source (the parity gate)."""

    stage: ClassVar[str] = "export"
    format: str = "gguf"  # gguf | onnx
    quants: tuple[str, ...] = ()  # quantisations of the format; [] = gguf q8_0, onnx int8
    onnx_graph: str = "fused"  # onnx only: fused (onnxruntime-genai's builder) | optimum (op by op)
    member_quant: str | None = None  # the quant that goes into the bundle; null = the first of quants that passes its gate
    max_bytes: int = 6000  # held-out bytes the parity gate scores
    allow_degraded: bool = False  # keep an artifact that misses its parity gate

    def validate(self) -> None:
        check(self.format in EXPORT_FORMATS, f"format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        check(isinstance(self.quants, tuple) and all(isinstance(q, str) for q in self.quants),
              "quants must be a list of quantisation names")
        self.quants = tuple(q.lower() for q in self.quants) or (DEFAULT_QUANTS[self.format],)
        allowed = EXPORT_FORMATS[self.format]
        bad = [q for q in self.quants if q not in allowed]
        check(not bad, f"quants: unknown {self.format} quantisation {', '.join(map(repr, bad))}; "
                       f"allowed: {', '.join(allowed)}")
        check(len(set(self.quants)) == len(self.quants), f"quants lists a quantisation twice: {', '.join(self.quants)}")
        check(self.member_quant is None or self.member_quant in self.quants,
              f"member_quant must be one of quants ({', '.join(self.quants)}) or null, got {self.member_quant!r}")
        check_int(self, "max_bytes", 1)
        check(isinstance(self.allow_degraded, bool), "allow_degraded must be true or false")
        check(self.onnx_graph in ONNX_GRAPHS, f"onnx_graph must be one of {', '.join(ONNX_GRAPHS)}, got {self.onnx_graph!r}")

    @property
    def bundle_quant(self) -> str:
        """What the bundle takes, as a human reads it (the build picks per specialist when member_quant is null)."""
        return self.member_quant or f"first of {', '.join(self.quants)} that passes its gate"


@dataclasses.dataclass
class EnsembleRecipe(Section):
    """How the specialists answer together (the bundle's ensemble.json)."""

    stage: ClassVar[str] = "ensemble"
    strategy: str = "route"  # route | cascade | vote
    strategy_options: dict = dataclasses.field(default_factory=dict)  # the strategy's options
    router_kind: str = "ngram-linear"  # the request router (strategy route)
    router_options: dict = dataclasses.field(default_factory=dict)  # train_router options (min_confidence...)
    target_acceptance: float = 0.5  # cascade calibration: share of requests the first member keeps
    memory_budget_mb: float | None = None  # members beyond this load lazily; null = no budget

    def validate(self) -> None:
        check(self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        check(self.router_kind in ROUTERS,
              f"router_kind must be one of {', '.join(sorted(ROUTERS))}, got {self.router_kind!r}")
        for name in ("strategy_options", "router_options"):
            check(isinstance(getattr(self, name), dict), f"{name} must be a mapping")
        check(is_number(self.target_acceptance) and 0 < self.target_acceptance <= 1,
              f"target_acceptance must be in (0, 1], got {self.target_acceptance!r}")
        check(self.memory_budget_mb is None or (is_number(self.memory_budget_mb) and self.memory_budget_mb > 0),
              f"memory_budget_mb must be > 0 or null, got {self.memory_budget_mb!r}")


MODEL_SECTIONS = {"adapt": AdaptSpec, "prune": ModelPruneSpec, "recover": RecoverSpec}  # what a domain can override


@dataclasses.dataclass
class Recipe(Section):
    """A whole build: teacher + domains -> compressed specialists -> exports -> ensemble bundle."""

    stage: ClassVar[str] = "recipe"
    name: str  # default: the recipe file's stem
    teacher: str  # a registered model name, an HF directory or a GGUF file
    device: str = "auto"  # auto | cpu | cuda: the training stages' device (unless their train section sets one)
    domains: list[DomainSpec] = dataclasses.field(default_factory=list)  # one specialist per domain (>= 1)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    stages: tuple[str, ...] = ("prune", "recover")  # model stages, in order: from adapt, prune, recover
    adapt: AdaptSpec = dataclasses.field(default_factory=AdaptSpec)
    prune: ModelPruneSpec = dataclasses.field(default_factory=ModelPruneSpec)
    recover: RecoverSpec = dataclasses.field(default_factory=RecoverSpec)
    export: ExportSpec = dataclasses.field(default_factory=ExportSpec)
    ensemble: EnsembleRecipe = dataclasses.field(default_factory=EnsembleRecipe)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)  # the held-out data carried in the bundle
    baselines: tuple[str, ...] = ()  # models the bench compares against (names or paths)
    law: str | None = None  # a compression-law RESULTS.json for build --dry-run (relative: to the recipe file)
    source: str | None = None  # the recipe file (set by load_recipe; not a YAML key)

    def validate(self) -> None:
        check(isinstance(self.name, str) and bool(RECIPE_NAME.match(self.name)),
              f"name must be letters, digits, '.', '_' or '-' (set name: in the recipe), got {self.name!r}")
        check(isinstance(self.teacher, str) and self.teacher != "",
              "teacher must be a registered model name, an HF directory or a GGUF file")
        check(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not isinstance(self.domains, list) or not self.domains:
            raise PathError(("domains",), "give at least one domain, e.g. [{name: code, corpus: code}]")
        seen: set[str] = set()
        for i, d in enumerate(self.domains):
            if d.name in seen:
                raise PathError(("domains", i, "name"), f"duplicate domain name {d.name!r}")
            seen.add(d.name)
        self._check_stages()
        calib = {("prune", "calib_domain"): self.prune.calib_domain}
        for i, d in enumerate(self.domains):
            for stage in MODEL_SECTIONS:
                if getattr(d, stage):
                    merged = self._merged(stage, d, ("domains", i, stage))
                    if stage == "prune" and "calib_domain" in d.prune:
                        calib[("domains", i, "prune", "calib_domain")] = merged.calib_domain
        for path, name in calib.items():
            if name is not None and name not in seen:
                raise PathError(path, f"must be one of the domains ({', '.join(seen)}), got {name!r}")
        check(isinstance(self.baselines, tuple) and all(isinstance(b, str) and b for b in self.baselines),
              "baselines must be a list of model names or paths")
        check(self.law is None or (isinstance(self.law, str) and self.law != ""), "law must be a file path or null")
        check(self.source is None or isinstance(self.source, str), "source must be a path or null")

    def _check_stages(self) -> None:
        stages = self.stages
        check(isinstance(stages, tuple) and all(isinstance(s, str) for s in stages),
              f"stages must be a list of {', '.join(STAGES)}")
        if not stages:
            raise PathError(("stages",), f"nothing to build: give at least one of {', '.join(STAGES)}")
        for i, s in enumerate(stages):
            if s not in STAGES:
                raise PathError(("stages", i), f"unknown stage {s!r}; allowed: {', '.join(STAGES)}")
            if s in stages[:i]:
                raise PathError(("stages", i), f"{s!r} appears twice; each stage runs at most once")
            if s == "recover" and "prune" not in stages[:i]:
                raise PathError(("stages", i), "recover needs prune before it (it restores what pruning "
                                 "removed), e.g. [prune, recover]")

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    def section(self, stage: str, domain: str | None = None):
        """The ``stage`` section (adapt, prune or recover) as ``domain`` sees it: the recipe's, with the keys that
        domain sets merged over it (None: the recipe's own)."""
        d = next((x for x in self.domains if x.name == domain), None) if domain is not None else None
        return self._merged(stage, d, ()) if d is not None and getattr(d, stage) else getattr(self, stage)

    def _merged(self, stage: str, d: DomainSpec, path):
        return build(MODEL_SECTIONS[stage], deep_merge(getattr(self, stage).to_dict(), getattr(d, stage)), path)

    def summary(self) -> str:
        """A few human lines: what this recipe builds."""
        from ._summary import summary

        return summary(self)


# --------------------------------------------------------------------------- loading

def _read(path: str | os.PathLike) -> tuple[Any, dict, str]:
    where = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: recipe file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read the recipe ({type(e).__name__}: {e})") from None
    data, marks = parse_marked(text, where)
    if data is None:
        raise ConfigError(f"{where}: the recipe is empty; it needs at least teacher and domains")
    if not isinstance(data, dict):
        line, col = marks[()]
        raise ConfigError(f"{where}:{line}:{col}: the top level must be a mapping (teacher: ..., domains: ...), "
                          f"got {show(data) if isinstance(data, list) else type(data).__name__}")
    return data, marks, where


def _profiles(data: dict) -> dict:
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise PathError(("profiles",), "must be a mapping of profile name -> partial recipe")
    for name, p in profiles.items():
        if not isinstance(p, dict):
            raise PathError(("profiles", name), f"must be a mapping (a partial recipe), got {show(p)}")
        if "profiles" in p:
            raise PathError(("profiles", name, "profiles"), "a profile cannot define profiles")
    return profiles


def list_profiles(path: str | os.PathLike) -> tuple[str, ...]:
    """The profile names a recipe file defines."""
    data, marks, where = _read(path)
    try:
        return tuple(map(str, _profiles(data)))
    except PathError as e:
        raise Locator(where, marks).error(e.path, e.message) from None


_YAML_KEYS = tuple(sorted([*(k for k in hints(Recipe) if k != "source"), "profiles"]))


def load_recipe(path: str | os.PathLike, profile: str | None = None) -> Recipe:
    """Read, merge ``profile`` over the base, validate and resolve a recipe file; errors name file:line:col."""
    data, marks, where = _read(path)
    locator = Locator(where, marks)
    try:
        profiles = _profiles(data)
        base = {k: v for k, v in data.items() if k != "profiles"}
        if profile is not None:
            if profile not in profiles:
                known = ", ".join(map(str, profiles)) or "none defined"
                raise PathError(("profiles",) if profiles else (), f"unknown profile {profile!r}; profiles: {known}")
            locator.overlay(base, profiles[profile], ("profiles", profile))
            base = deep_merge(base, profiles[profile])
        recipe = _build_recipe(base, Path(path))
        return _resolve(recipe, Path(path).resolve().parent)
    except PathError as e:
        raise locator.error(e.path, e.message) from None


def _build_recipe(data: dict, path: Path) -> Recipe:
    for k in data:
        if k not in _YAML_KEYS:
            raise PathError((str(k),), f"unknown key; allowed: {', '.join(_YAML_KEYS)}")
    data = {"name": path.stem, **data}
    device = data.get("device", "auto")
    if device not in DEVICES:
        raise PathError(("device",), f"must be one of {', '.join(DEVICES)}, got {show(device)}")
    for section in ("adapt", "recover"):  # the top-level device, unless the train section sets its own
        sec = data.get(section, {})
        if isinstance(sec, dict) and isinstance(sec.get("train", {}), dict) and "device" not in sec.get("train", {}):
            data[section] = {**sec, "train": {**sec.get("train", {}), "device": device}}
    recipe = build(Recipe, data)
    return dataclasses.replace(recipe, source=str(path.resolve()))


def _local_path(value: str, base_dir: Path, key, names, missing: str) -> str:
    """A registered name stays a name; a path is resolved against the recipe's folder and must exist."""
    if value in names:
        return value
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not p.exists():
        raise PathError(key, missing.format(value=value, path=p))
    return str(p.resolve())


def _corpus_path(value: str, base_dir: Path, key, what: str) -> str:
    return _local_path(value, base_dir, key, DEMO_DOMAINS,
                       f"{what}: no corpus directory or file {{value!r}} (looked for {{path}}); use a demo domain "
                       f"({', '.join(DEMO_DOMAINS)}), a directory, a text file or a .jsonl")


def _model_path(value: str, base_dir: Path, key) -> str:
    from ..models import REGISTRY

    return _local_path(value, base_dir, key, REGISTRY,
                       f"unknown model {{value!r}}: not a registered model ({', '.join(REGISTRY)}) nor an HF "
                       "directory or GGUF file (looked for {path})")


def _resolve(r: Recipe, base_dir: Path) -> Recipe:
    """Relative paths -> absolute (against the recipe's directory); missing corpora and models are errors."""
    domains = [dataclasses.replace(d, corpus=_corpus_path(d.corpus, base_dir, ("domains", i, "corpus"),
                                                          f"domain {d.name!r}"))
               for i, d in enumerate(r.domains)]
    adapt = r.adapt
    if adapt.replay is not None:
        adapt = dataclasses.replace(adapt, replay=_corpus_path(adapt.replay, base_dir, ("adapt", "replay"), "replay"))
    data = r.data
    if data.prune is not None:
        dp = data.prune
        fix = {}
        if dp.target is not None:
            fix["target"] = _corpus_path(dp.target, base_dir, ("data", "prune", "target"), "target")
        for k in ("reference", "student"):
            if getattr(dp, k) is not None:
                fix[k] = _model_path(getattr(dp, k), base_dir, ("data", "prune", k))
        data = dataclasses.replace(data, prune=dataclasses.replace(dp, **fix))
    law = r.law
    if law is not None:
        p = Path(law).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.is_file():
            raise PathError(("law",), f"no such file {law!r} (looked for {p}); give a compression-law "
                             "RESULTS.json or null")
        law = str(p.resolve())
    return dataclasses.replace(
        r, domains=domains, adapt=adapt, data=data, law=law, teacher=_model_path(r.teacher, base_dir, ("teacher",)),
        baselines=tuple(_model_path(b, base_dir, ("baselines", i)) for i, b in enumerate(r.baselines)))


def recipe_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the recipe file, for editors (generated from the dataclasses)."""
    from ._schema import build_schema

    return build_schema()
