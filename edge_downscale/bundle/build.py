"""Build an ensemble bundle from finished exports: copy members, train the router, calibrate a cascade.

:func:`build_bundle` checks each member's export against its manifest, copies it into
``members/<name>/`` (hard links where the filesystem allows; the files are read-only inputs),
records the sha256 of its ``model.json`` in ``ensemble.json``, trains the router from the domains'
texts (route), and calibrates thresholds on held-out data (cascade). The bundle is written to a
temporary directory and renamed at the end: an interrupted build leaves nothing that looks finished.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from .._io import atomic_path, sha256_file, write_json_atomic
from ..artifacts import MANIFEST, verify_manifest
from ..config import StageConfig, check, is_number
from ..errors import BundleError, ConfigError, ModelFormatError
from ..runtime.base import artifact_backend
from ..runtime.ensemble import ENSEMBLE_FILE, Ensemble, EnsembleSpec, MemberSpec, manifest_hash
from ..runtime.router import ROUTERS
from ..runtime.strategies import STRATEGIES
from .cascade import calibrate_cascade
from .data import calibration_data, texts_by_domain
from .router import train_router

MEMBERS_DIR = "members"


@dataclasses.dataclass
class BundleConfig(StageConfig):
    """What to bundle and how.

    ``members``: dicts with ``name``, ``path`` (an export directory with model.json), optional
    ``domain``, ``backend`` (default: from the files), ``options`` (backend keyword arguments),
    ``cost`` and ``memory_mb``. ``router_corpora``: {domain: corpus directory or demo domain name}
    whose train splits train the router (route). ``calibrate_corpora``: corpora whose validation
    splits calibrate a cascade's thresholds for ``target_acceptance``. ``router_options``:
    :func:`~edge_downscale.bundle.router.train_router` options (``min_confidence``, ``fallback``...).
    """

    stage: ClassVar[str] = "bundle"
    out: str = ""
    members: list = dataclasses.field(default_factory=list)
    strategy: str = "route"
    strategy_options: dict = dataclasses.field(default_factory=dict)
    router_corpora: dict = dataclasses.field(default_factory=dict)
    router_kind: str = "ngram-linear"
    router_options: dict = dataclasses.field(default_factory=dict)
    calibrate_corpora: tuple[str, ...] = ()
    target_acceptance: float = 0.5
    memory_budget_mb: float | None = None
    grid_g_per_kwh: float = 400.0
    files: dict = dataclasses.field(default_factory=dict)  # {path in the bundle: source file}, copied and hashed

    def validate(self) -> None:
        check(isinstance(self.out, (str, os.PathLike)) and str(self.out) != "", "out must be a directory path")
        self.out = str(self.out)
        check(isinstance(self.members, list) and len(self.members) >= 1,
              "a bundle needs at least one member (--member NAME=EXPORT_DIR[:DOMAIN])")
        for m in self.members:
            check(isinstance(m, dict) and "path" in m, f"a member must be a dict with name and path, got {m!r}")
        self.members = [{**m, "path": str(m["path"])} for m in self.members]
        check(self.strategy in STRATEGIES, f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        check(self.router_kind in ROUTERS,
              f"unknown router type {self.router_kind!r}; known types: {', '.join(sorted(ROUTERS))}")
        for name in ("strategy_options", "router_corpora", "router_options"):
            check(isinstance(getattr(self, name), dict), f"{name} must be an object")
        self.router_corpora = {k: str(v) for k, v in self.router_corpora.items()}
        check(is_number(self.target_acceptance) and 0 < self.target_acceptance <= 1,
              f"target_acceptance must be in (0, 1], got {self.target_acceptance!r}")
        check(self.memory_budget_mb is None or (is_number(self.memory_budget_mb) and self.memory_budget_mb > 0),
              "memory_budget_mb must be > 0 or null")
        check(is_number(self.grid_g_per_kwh) and self.grid_g_per_kwh >= 0, "grid_g_per_kwh must be >= 0")
        check(isinstance(self.files, dict), "files must be an object {path in the bundle: source file}")
        for rel in self.files:
            p = Path(rel)
            check(isinstance(rel, str) and rel and not p.is_absolute() and ".." not in p.parts
                  and p.parts[0] not in (MEMBERS_DIR, ENSEMBLE_FILE),
                  f"files: {rel!r} must be a relative path outside {MEMBERS_DIR}/ and {ENSEMBLE_FILE}")
        self.files = {k: str(v) for k, v in self.files.items()}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_bundle(config: BundleConfig, *, router_texts: Mapping[str, Sequence[str]] | None = None,
                 calibration: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> Path:
    """Write the bundle ``config`` describes to ``config.out`` (which must not exist) and return its path.

    ``router_texts`` ({domain: training texts}) and ``calibration`` (held-out ``prompts`` /
    ``texts`` / ``choices``) are the data in memory, instead of ``config.router_corpora`` /
    ``config.calibrate_corpora``.
    """
    out = Path(config.out)
    if out.exists():
        raise BundleError(f"{out} already exists; choose a new output directory or remove it")
    if router_texts is None and config.router_corpora:
        router_texts = texts_by_domain(config.router_corpora, "train")
    if calibration is None and config.calibrate_corpora:
        calibration = calibration_data(config.calibrate_corpora)
    if config.strategy in ("route", "mixture") and not router_texts:
        raise ConfigError(f"the {config.strategy} strategy needs router training texts per domain "
                          "(--router-corpus DOMAIN=DIR)")
    if config.strategy == "cascade" and not calibration:
        raise ConfigError("a cascade needs held-out calibration data (--calibrate-corpus DIR) to set its thresholds")
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        specs = [_copy_member(dict(m), tmp, log) for m in config.members]
        router_spec = None
        if router_texts:
            domains = {s.domain for s in specs if s.domain}
            unknown = sorted(set(router_texts) - domains)
            if unknown:
                raise ConfigError(f"router corpora for {unknown} but no member has that domain; member domains: {sorted(domains)}")
            router = train_router(router_texts, kind=config.router_kind, **config.router_options)
            router_spec = router.save(tmp)
            log(f"router {config.router_kind}: trained on {sum(len(t) for t in router_texts.values())} texts "
                f"of {len(router_texts)} domains")
        files = {}
        for rel, src in config.files.items():
            if not Path(src).is_file():
                raise BundleError(f"files: {src} (for {rel}) does not exist")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
            files[rel] = sha256_file(tmp / rel)
        spec = EnsembleSpec(members=specs, strategy=config.strategy, strategy_options=dict(config.strategy_options),
                            router=router_spec, memory_budget_mb=config.memory_budget_mb,
                            grid_g_per_kwh=config.grid_g_per_kwh, files=files)
        write_json_atomic(tmp / ENSEMBLE_FILE, spec.to_dict())
        if config.strategy == "cascade":
            with Ensemble.load(tmp) as ensemble:
                options = calibrate_cascade(ensemble, target_acceptance=config.target_acceptance, **calibration)
            spec.strategy_options = options
            write_json_atomic(tmp / ENSEMBLE_FILE, spec.to_dict())
            log(f"cascade calibrated for {config.target_acceptance:.0%} acceptance per level: {options['thresholds']}")
    return out


def _copy_member(m: dict[str, Any], bundle_dir: Path, log: Callable[[str], None]) -> MemberSpec:
    """Check one member's export, copy it into ``bundle_dir/members/<name>`` and return its spec."""
    src = Path(m.pop("path")).expanduser()
    if not (src / MANIFEST).is_file():
        raise BundleError(f"member {m.get('name')!r}: {src} has no {MANIFEST}; pass a finished export directory")
    verify_manifest(src)
    name = m.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"member name {name!r} must be a plain non-empty name")
    dest = bundle_dir / MEMBERS_DIR / name
    if dest.exists():
        raise ConfigError(f"two members are named {name!r}")
    shutil.copytree(src, dest, copy_function=_link_or_copy)
    if "backend" not in m:
        try:
            m["backend"] = artifact_backend(dest)
        except ModelFormatError as e:
            raise BundleError(str(e)) from None
    spec = MemberSpec.from_dict({**m, "path": f"{MEMBERS_DIR}/{name}", "manifest_sha256": manifest_hash(dest)})
    log(f"member {name}: {src} ({spec.backend})")
    return spec
