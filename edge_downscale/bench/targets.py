"""What a run measures: bundles, models and baselines turned into configurations, and the held-out data.

A bundle gives one configuration per member and one per strategy it supports: its own, ``route`` when
it has a router, ``vote`` when it has two members or more, ``mixture`` when it has both, ``cascade``
when its strategy options hold thresholds calibrated for every request kind (generate, score, choose).
A model (a GGUF file or an export directory) gives one. Bundles are verified in full before anything is measured: the manifest
hashes and extra files when loaded (:meth:`Ensemble.load`), and every member's files against its
manifest here, so a tampered member is refused instead of being skipped by a fallback mid-run.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..artifacts import MANIFEST, verify_manifest
from ..errors import BenchError, BundleError, ConfigError, EdgeDownscaleError, ExportError
from ..eval import EVAL_DIR, MCItem, read_eval_data, read_eval_file
from ..runtime import ENSEMBLE_FILE, Backend, Ensemble, backend_class, open_artifact
from ..runtime.roofline import weight_bytes_per_token
from ..runtime.strategies import KINDS, STRATEGIES

EvalData = Mapping[str, tuple[Sequence[str], Sequence[MCItem]]]


@dataclasses.dataclass
class Configuration:
    """One row of the report. ``path``: the bundle directory or the model path. ``weight_bytes``: the bytes
    of weights one decoded token reads, per model it can run (a member's name; a single model's own
    configuration name), None where unknown."""

    name: str
    kind: str  # "member" | "ensemble" | "baseline" | "model"
    path: str
    strategy: str | None = None
    strategy_options: dict | None = None
    member: str | None = None
    members: list = dataclasses.field(default_factory=list)
    size_bytes: int = 0
    threads: int | None = None
    weight_bytes: dict = dataclasses.field(default_factory=dict)

    @property
    def streams(self) -> bool:
        """Whether text arrives token by token (single backends, streaming strategies)."""
        return self.strategy is None or "streaming" in STRATEGIES[self.strategy].capabilities

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def thread_options(backend: str, threads: int | None) -> dict[str, Any]:
    """``{"n_threads": threads}`` when the backend's constructor takes it (else nothing)."""
    if threads is None:
        return {}
    params = inspect.signature(backend_class(backend).__init__).parameters
    return {"n_threads": threads} if "n_threads" in params else {}


def variant(ens: Ensemble, strategy: str, options: dict, threads: int | None = None) -> Ensemble:
    """The bundle of ``ens`` under another strategy (its options replaced, not merged), members' threads set."""
    members = [dataclasses.replace(m, options={**m.options, **thread_options(m.backend, threads)})
               for m in ens.spec.members]
    spec = dataclasses.replace(ens.spec, members=members, strategy=strategy, strategy_options=dict(options))
    return Ensemble(spec, ens.root, meter=ens.meter)


def _cascade_unsupported(ens: Ensemble, options: dict) -> str | None:
    levels = len(options.get("order") or ens.spec.members)
    thresholds = options.get("thresholds") or {}
    missing = [k for k in KINDS if len(thresholds.get(k) or []) < levels - 1]
    if missing:
        return (f"no calibrated cascade thresholds for {', '.join(missing)} in the bundle's strategy options "
                "(build a cascade bundle with --calibrate-corpus)")
    return None


# strategy -> why this bundle cannot run it (None: it can); a strategy not listed needs nothing
_UNSUPPORTED: dict[str, Callable[[Ensemble, dict], str | None]] = {
    "route": lambda ens, o: None if ens.spec.router else "the bundle has no router",
    "vote": lambda ens, o: None if len(ens.spec.members) >= 2 else "vote needs at least two members",
    "mixture": lambda ens, o: ("the bundle has no router" if not ens.spec.router
                               else None if len(ens.spec.members) >= 2 else "mixture needs at least two members"),
    "cascade": _cascade_unsupported,
}


def strategy_plan(ens: Ensemble) -> tuple[dict[str, dict], dict[str, str]]:
    """({strategy: options} to measure, {strategy: why not}); the bundle's own strategy first."""
    own = ens.spec.strategy
    plan: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for name in [own] + [s for s in STRATEGIES if s != own]:
        options = dict(ens.spec.strategy_options) if name == own else {}
        why = _UNSUPPORTED.get(name, lambda e, o: None)(ens, options)
        if why is None:
            try:
                variant(ens, name, options)  # constructing the strategy runs the runtime's own checks
            except (BundleError, ConfigError) as e:
                why = str(e)
        if why is None:
            plan[name] = options
        else:
            skipped[name] = why
    return plan, skipped


def load_bundle(path: str | os.PathLike) -> Ensemble:
    """Load a bundle and check every member's files against its manifest (BundleError on any mismatch)."""
    ens = Ensemble.load(path)
    for member in ens.members.values():
        try:
            verify_manifest(member.dir)
        except ExportError as e:
            raise BundleError(f"bundle {path}: member {member.name!r}: {e}; rebuild the bundle") from None
    return ens


def artifact_bytes(path: str | os.PathLike) -> int:
    """Bytes of a model: a file's size, or the files of an export directory (its manifest when it has one)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if (path / MANIFEST).is_file():
        return sum(int(f["bytes"]) for f in verify_manifest(path)["files"].values())
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def token_bytes(path: str | os.PathLike) -> int | None:
    """:func:`~edge_downscale.runtime.roofline.weight_bytes_per_token` of a model, None when it cannot be told
    (another format, the onnx package missing for an ONNX export, an unreadable file)."""
    try:
        return weight_bytes_per_token(path)
    except (EdgeDownscaleError, OSError):
        return None


def open_model(path: str | os.PathLike, threads: int | None = None) -> Backend:
    """A backend for a GGUF file or an export directory (checked against its manifest when it has one)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise BenchError(f"{path}: a model file must be a .gguf; or pass an export directory (with model.json)")
        return backend_class("llamacpp")(path, **thread_options("llamacpp", threads))
    if (path / MANIFEST).is_file():
        verify_manifest(path)
    from ..runtime import artifact_backend

    backend = artifact_backend(path)
    return open_artifact(path, backend, **thread_options(backend, threads))


def _unique(name: str, taken: set[str]) -> str:
    out, n = name, 2
    while out in taken:
        out, n = f"{name}#{n}", n + 1
    taken.add(out)
    return out


def _model_label(path: Path) -> str:
    return path.stem if path.is_file() else path.resolve().name


def _labelled(item: Any) -> tuple[str | None, Path]:
    """(label or None, path) of a target or baseline given as a path or a ``(label, path)`` pair."""
    label, path = item if isinstance(item, tuple) else (None, item)
    return label, Path(path)


def plan_configurations(targets: Sequence[Any], baselines: Sequence[Any] = (),
                        threads: int | None = None) -> tuple[list[Configuration], dict[str, Ensemble], list[dict]]:
    """(configurations, {bundle path: loaded bundle}, skipped strategies): baselines first, then the targets.

    ``targets`` and ``baselines``: paths, or ``(label, path)`` pairs. A label names a model's row, or
    prefixes a bundle's rows (``label/member``, ``label[strategy]``) instead of the directory's name.
    """
    configs: list[Configuration] = []
    bundles: dict[str, Ensemble] = {}
    skipped: list[dict] = []
    taken: set[str] = set()
    for item in baselines:
        label, path = _labelled(item)
        if not path.exists():
            raise BenchError(f"baseline {str(path)!r}: no such file or directory")
        name = _unique(label or _model_label(path), taken)
        configs.append(Configuration(name, "baseline", str(path), size_bytes=artifact_bytes(path), threads=threads,
                                     weight_bytes={name: token_bytes(path)}))
    for target in targets:
        label, path = _labelled(target)
        if not path.exists():
            raise BenchError(f"{path}: no such bundle or model (pass a bundle directory, a .gguf file or an export directory)")
        if not (path / ENSEMBLE_FILE).is_file():
            name = _unique(label or _model_label(path), taken)
            configs.append(Configuration(name, "model", str(path), size_bytes=artifact_bytes(path), threads=threads,
                                         weight_bytes={name: token_bytes(path)}))
            continue
        ens = bundles[str(path)] = load_bundle(path)
        label = label or path.resolve().name
        sizes = {m.name: sum(int(f["bytes"]) for f in m.manifest["files"].values()) for m in ens.members.values()}
        per_token = {m.name: token_bytes(m.dir) for m in ens.members.values()}
        for m in ens.members.values():
            configs.append(Configuration(_unique(f"{label}/{m.name}", taken), "member", str(path), member=m.name,
                                         members=[m.name], size_bytes=sizes[m.name], threads=threads,
                                         weight_bytes={m.name: per_token[m.name]}))
        plan, why_not = strategy_plan(ens)
        for strategy, options in plan.items():
            configs.append(Configuration(_unique(f"{label}[{strategy}]", taken), "ensemble", str(path),
                                         strategy=strategy, strategy_options=options, members=list(ens.members),
                                         size_bytes=sum(sizes.values()), threads=threads, weight_bytes=dict(per_token)))
        skipped += [{"bundle": label, "strategy": s, "reason": r} for s, r in why_not.items()]
    if not configs:
        raise BenchError("nothing to measure: pass at least one bundle or model")
    return configs, bundles, skipped


def bundle_eval_data(ens: Ensemble) -> dict[str, tuple[list[str], list[MCItem]]]:
    """{domain: (texts, items)} of the bundle's hash-checked ``eval/<domain>.jsonl`` files."""
    rels = sorted(r for r in ens.spec.files if r.startswith(f"{EVAL_DIR}/") and r.endswith(".jsonl"))
    return {Path(r).stem: read_eval_file(ens.file(r)) for r in rels}


def eval_data(bundles: Mapping[str, Ensemble], override: str | os.PathLike | None) -> tuple[dict, str]:
    """(held-out data, where it came from): ``override`` (a directory of ``<domain>.jsonl``), else the first bundle's."""
    if override is not None:
        if not Path(override).is_dir():
            raise BenchError(f"--eval-data {override}: no such directory (expected <domain>.jsonl files)")
        data, source = read_eval_data(override), str(override)
    else:
        first = next(iter(bundles.items()), None)
        data, source = (bundle_eval_data(first[1]), f"{first[0]}/{EVAL_DIR}/") if first else ({}, "")
    if not data:
        raise BenchError("no held-out eval data: pass a bundle built by `edge-downscale build` (it carries "
                         "eval/<domain>.jsonl) or --eval-data DIR")
    empty = [d for d, (texts, _) in data.items() if not any(t.strip() for t in texts)]
    if empty:
        raise BenchError(f"held-out data from {source}: {', '.join(f'{d}.jsonl' for d in empty)} has no text "
                         "records; rebuild the bundle or fix the eval files")
    return data, source
