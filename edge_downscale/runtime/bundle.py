"""Build an ensemble bundle from finished exports: copy members, train the router, calibrate a cascade.

:func:`build_bundle` checks each member's export against its manifest, copies it into
``members/<name>/`` (hard links where the filesystem allows; the files are read-only inputs),
records the sha256 of its ``model.json`` in ``ensemble.json``, trains the router from the domains'
texts (route), and calibrates thresholds on held-out data (cascade). The bundle is written to a
temporary directory and renamed at the end: an interrupted build leaves nothing that looks finished.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from .._io import atomic_path, write_json_atomic
from ..artifacts import MANIFEST, verify_manifest
from ..errors import BundleError, ConfigError
from .ensemble import _MODEL_FILES, ENSEMBLE_FILE, Ensemble, EnsembleSpec, MemberSpec, manifest_hash

MEMBERS_DIR = "members"


def detect_backend(export_dir: Path) -> str:
    """``llamacpp`` for a directory holding model.gguf, ``onnx`` for model.onnx."""
    for backend, filename in _MODEL_FILES.items():
        if (export_dir / filename).is_file():
            return backend
    raise BundleError(f"{export_dir}: neither model.gguf nor model.onnx; pass a directory written by edge-downscale export")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_bundle(out: str | Path, members: Sequence[dict[str, Any]], *, strategy: str = "route",
                 strategy_options: dict[str, Any] | None = None,
                 router_texts: dict[str, list[str]] | None = None, router_kind: str = "ngram-linear",
                 router_options: dict[str, Any] | None = None, memory_budget_mb: float | None = None,
                 grid_g_per_kwh: float = 400.0, calibration: dict[str, Any] | None = None,
                 target_acceptance: float = 0.5, log: Callable[[str], None] = print) -> Path:
    """Write a bundle to ``out`` (which must not exist) and return its path.

    ``members``: dicts with ``name``, ``path`` (an export directory with model.json), optional
    ``domain``, ``backend`` (default: from the files), ``options`` (backend keyword arguments),
    ``cost`` and ``memory_mb``. ``router_texts``: {domain: training texts} (required for route).
    ``calibration``: held-out ``prompts`` / ``texts`` / ``choices`` for a cascade's thresholds.
    """
    out = Path(out)
    if out.exists():
        raise BundleError(f"{out} already exists; choose a new output directory or remove it")
    if not members:
        raise ConfigError("a bundle needs at least one member (--member NAME=EXPORT_DIR[:DOMAIN])")
    if strategy == "route" and not router_texts:
        raise ConfigError("the route strategy needs router training texts per domain (--router-corpus DOMAIN=DIR)")
    if strategy == "cascade" and not calibration:
        raise ConfigError("a cascade needs held-out calibration data (--calibrate-corpus DIR) to set its thresholds")
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        specs = []
        for m in members:
            m = dict(m)
            src = Path(m.pop("path")).expanduser()
            if not (src / MANIFEST).is_file():
                raise BundleError(f"member {m.get('name')!r}: {src} has no {MANIFEST}; pass a finished export directory")
            verify_manifest(src)
            name = m.get("name")
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                raise ConfigError(f"member name {name!r} must be a plain non-empty name")
            dest = tmp / MEMBERS_DIR / name
            if dest.exists():
                raise ConfigError(f"two members are named {name!r}")
            shutil.copytree(src, dest, copy_function=_link_or_copy)
            m.setdefault("backend", detect_backend(dest))
            specs.append(MemberSpec.from_dict({**m, "path": f"{MEMBERS_DIR}/{name}",
                                               "manifest_sha256": manifest_hash(dest)}))
            log(f"member {name}: {src} ({specs[-1].backend})")
        router_spec = None
        if router_texts:
            from .router import train_router

            domains = {s.domain for s in specs if s.domain}
            unknown = sorted(set(router_texts) - domains)
            if unknown:
                raise ConfigError(f"router corpora for {unknown} but no member has that domain; member domains: {sorted(domains)}")
            router = train_router(router_texts, kind=router_kind, **(router_options or {}))
            router_spec = router.save(tmp)
            log(f"router {router_kind}: trained on {sum(len(t) for t in router_texts.values())} texts "
                f"of {len(router_texts)} domains")
        spec = EnsembleSpec(members=specs, strategy=strategy, strategy_options=dict(strategy_options or {}),
                            router=router_spec, memory_budget_mb=memory_budget_mb, grid_g_per_kwh=grid_g_per_kwh)
        write_json_atomic(tmp / ENSEMBLE_FILE, spec.to_dict())
        if strategy == "cascade":
            from .strategies import calibrate_cascade

            with Ensemble.load(tmp) as ensemble:
                options = calibrate_cascade(ensemble, target_acceptance=target_acceptance, **calibration)
            spec.strategy_options = options
            write_json_atomic(tmp / ENSEMBLE_FILE, spec.to_dict())
            log(f"cascade calibrated for {target_acceptance:.0%} acceptance per level: {options['thresholds']}")
    return out


def calibration_data(corpora: Sequence[str], *, split: str = "validation", n: int = 24, prompt_chars: int = 256,
                     text_chars: int = 1500, seed: int = 0) -> dict[str, Any]:
    """Held-out cascade calibration data from built corpora (or demo domain names).

    From each corpus's ``split``: generation prompts (the first ``prompt_chars`` of documents),
    texts to score (the first ``text_chars``) and multiple-choice items (as in evaluation), ``n`` of
    each in all, spread over the corpora.
    """
    from ..eval.mc import build_items
    from .router import texts_by_domain

    per = max(n // max(len(corpora), 1), 1)
    prompts, texts, choices = [], [], []
    for name, docs in texts_by_domain({c: c for c in corpora}, split).items():
        if not docs:
            raise ConfigError(f"calibration corpus {name!r} has no {split} documents")
        prompts += [d[:prompt_chars] for d in docs[:per]]
        texts += [d[:text_chars] for d in docs[:per]]
        choices += [(it.context, it.choices) for it in build_items(docs, n_items=per, context_chars=320,
                                                                   continuation_chars=64, seed=seed)]
    return {"prompts": prompts, "texts": texts, "choices": choices}
