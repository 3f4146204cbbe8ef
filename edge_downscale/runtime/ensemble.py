"""Ensembles of exported specialists: a bundle directory, lazily loaded members, one API.

A **bundle** is a directory with ``ensemble.json`` and one sub-directory per member, each a finished
export (``model.json`` manifest + ``model.gguf`` or ``model.onnx`` + tokenizer)::

    {"version": 1, "strategy": "route", "strategy_options": {...},
     "members": [{"name": "code", "path": "members/code", "backend": "llamacpp", "domain": "code",
                  "options": {"n_threads": 4}, "manifest_sha256": "...", "memory_mb": 140}, ...],
     "router": {"type": "ngram-linear", ...}, "memory_budget_mb": null}

:meth:`Ensemble.load` checks every member's ``model.json`` against the sha256 recorded in
``ensemble.json`` at once, and every file against ``model.json`` when the member is first loaded,
so a swapped or modified file is refused before a native library reads it.

**Threads**: one :class:`Ensemble` serves many threads. Each member's backend has its own lock (one
request at a time per member; different members run in parallel). Members load on first use and,
under ``memory_budget_mb``, the least recently used idle member is closed to make room (a member in
use is never evicted; if every loaded member is busy the budget is exceeded and ``stats`` says so).

Strategies (route / cascade / vote) live in :mod:`~edge_downscale.runtime.strategies`, mixture in
:mod:`~edge_downscale.runtime.mixture`; whatever the strategy, :meth:`Ensemble.generate`,
:meth:`Ensemble.score` and :meth:`Ensemble.choose` return a :class:`Response` that says which
member(s) answered and why.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .._io import sha256_file
from ..artifacts import MANIFEST, MODEL_FILES, verify_manifest
from ..config import StageConfig, check
from ..errors import BundleError, ConfigError
from .base import BACKEND_FORMATS, Backend, open_artifact
from .energy import energy_fields
from .generation import GenerationConfig, default_meter
from .response import MemberError, Response, ResponseChunk
from .router import load_router
from . import mixture  # noqa: F401 - registers the mixture strategy in STRATEGIES
from .strategies import STRATEGIES, make_strategy

ENSEMBLE_FILE = "ensemble.json"
BUNDLE_VERSION = 1


@dataclasses.dataclass
class MemberSpec(StageConfig):
    """One member of a bundle. ``path`` is relative to the bundle directory."""

    name: str
    path: str
    backend: str = "llamacpp"
    domain: str | None = None
    options: dict = dataclasses.field(default_factory=dict)  # backend keyword arguments
    cost: float | None = None  # relative cost per token (cascade order); default: memory_mb
    memory_mb: float | None = None  # resident estimate for the LRU budget; default: manifest bytes
    manifest_sha256: str | None = None

    def validate(self) -> None:
        check(isinstance(self.name, str) and self.name.strip() != "", "member name must be a non-empty string")
        check(isinstance(self.path, str) and self.path != "", f"member {self.name!r}: path must be a non-empty string")
        check(self.backend in BACKEND_FORMATS,
              f"member {self.name!r}: backend must be {' or '.join(BACKEND_FORMATS)}, got {self.backend!r}")
        check(isinstance(self.options, dict), f"member {self.name!r}: options must be an object")
        check(self.cost is None or self.cost > 0, f"member {self.name!r}: cost must be > 0")
        check(self.memory_mb is None or self.memory_mb > 0, f"member {self.name!r}: memory_mb must be > 0")


@dataclasses.dataclass
class EnsembleSpec(StageConfig):
    """The contents of ``ensemble.json``."""

    members: list = dataclasses.field(default_factory=list)  # of MemberSpec dicts
    strategy: str = "route"
    strategy_options: dict = dataclasses.field(default_factory=dict)
    router: dict | None = None
    memory_budget_mb: float | None = None
    grid_g_per_kwh: float = 400.0
    files: dict = dataclasses.field(default_factory=dict)  # {path in the bundle: sha256}: eval data, recipe, summary
    version: int = BUNDLE_VERSION

    def validate(self) -> None:
        check(self.version == BUNDLE_VERSION, f"bundle version {self.version} is not supported (expected {BUNDLE_VERSION}); rebuild it")
        check(isinstance(self.members, list) and len(self.members) >= 1, "a bundle needs at least one member")
        self.members = [m if isinstance(m, MemberSpec) else MemberSpec.from_dict(m) for m in self.members]
        names = [m.name for m in self.members]
        check(len(set(names)) == len(names), f"member names must be unique, got {names}")
        check(self.strategy in STRATEGIES, f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        check(isinstance(self.strategy_options, dict), "strategy_options must be an object")
        check(self.memory_budget_mb is None or self.memory_budget_mb > 0, "memory_budget_mb must be > 0 or null")
        check(self.grid_g_per_kwh >= 0, "grid_g_per_kwh must be >= 0")
        check(isinstance(self.files, dict) and all(isinstance(k, str) and isinstance(v, str) and not Path(k).is_absolute()
                                                   and ".." not in Path(k).parts for k, v in self.files.items()),
              "files must map relative paths inside the bundle to sha256 strings")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["members"] = [m.to_dict() if isinstance(m, MemberSpec) else m for m in self.members]
        return d


class Member:
    """A bundle member: its spec, its directory, and (when loaded) its backend."""

    def __init__(self, spec: MemberSpec, root: Path, manifest: dict):
        self.spec = spec
        self.name = spec.name
        self.domain = spec.domain
        self.dir = (root / spec.path).resolve()
        self.manifest = manifest
        self.memory_mb = spec.memory_mb or manifest.get("total_bytes", 0) / 2**20 or 1.0
        self.cost = spec.cost or self.memory_mb
        self.backend: Backend | None = None
        self.in_use = 0  # requests holding it (never evicted while > 0)
        self._loading = False  # a thread is opening it (others wait on the pool condition)
        self.verified = False

    def open(self) -> Backend:
        if not self.verified:
            verify_manifest(self.dir)  # every file against model.json, before a native library reads it
            self.verified = True
        try:
            return open_artifact(self.dir, self.spec.backend, **self.spec.options)
        except TypeError as e:
            raise ConfigError(f"member {self.name!r}: invalid backend options {self.spec.options} ({e})") from e

    def __repr__(self) -> str:
        return f"Member({self.name!r}, {self.spec.backend}, domain={self.domain!r}, loaded={self.backend is not None})"


class Ensemble:
    """Exported specialists behind one strategy. Thread-safe; members load lazily (LRU under a budget)."""

    def __init__(self, spec: EnsembleSpec, root: str | Path, *, meter: Any = None, strategy_options: dict | None = None):
        self.spec = spec
        self.root = Path(root)
        self.members: dict[str, Member] = {}
        for m in spec.members:
            self.members[m.name] = Member(m, self.root, self._member_manifest(m))
        self.meter = meter if meter is not None else default_meter()
        self.grid_g_per_kwh = spec.grid_g_per_kwh
        self.memory_budget_mb = spec.memory_budget_mb
        self._pool_lock = threading.Condition()
        self._lru: OrderedDict[str, None] = OrderedDict()  # loaded members, least recently used first
        self.stats: dict[str, Any] = {"loads": 0, "evictions": 0, "over_budget": 0, "answered_by": {}, "levels": {},
                                      "fallbacks": 0, "requests": 0}
        self._stats_lock = threading.Lock()
        self._check_files()
        self.router = None
        if spec.router:
            self.router = load_router(self.root, spec.router)
        options = {**spec.strategy_options, **(strategy_options or {})}
        self.strategy = make_strategy(spec.strategy, self, options)

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, **kw) -> "Ensemble":
        """Read ``path/ensemble.json`` (or the file itself) and check every member's manifest hash."""
        path = Path(path)
        file = path if path.is_file() else path / ENSEMBLE_FILE
        if not file.is_file():
            raise BundleError(f"{path}: no {ENSEMBLE_FILE}; build one with `edge-downscale bundle build`")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"{file}: unreadable ({e}); rebuild the bundle") from e
        if not isinstance(data, dict):
            raise BundleError(f"{file}: expected a JSON object")
        return cls(EnsembleSpec.from_dict(data), file.parent, **kw)

    def _check_files(self) -> None:
        """Every extra file of the bundle (eval data, recipe, build summary) against its recorded sha256."""
        for rel, digest in self.spec.files.items():
            f = self.root / rel
            if not f.is_file():
                raise BundleError(f"{f} is missing; the bundle is incomplete, rebuild it")
            if sha256_file(f) != digest:
                raise BundleError(f"{f} does not match the hash in {ENSEMBLE_FILE} (replaced or modified); rebuild the bundle")

    def file(self, rel: str) -> Path:
        """The path of a hash-checked extra file of the bundle (``files`` in ensemble.json)."""
        if rel not in self.spec.files:
            raise BundleError(f"{self.root}: the bundle has no {rel} (it carries {sorted(self.spec.files) or 'no extra files'})")
        return self.root / rel

    def _member_manifest(self, spec: MemberSpec) -> dict:
        directory = self.root / spec.path
        manifest_file = directory / MANIFEST
        if not manifest_file.is_file():
            raise BundleError(f"member {spec.name!r}: {manifest_file} is missing; the bundle is incomplete, rebuild it")
        if spec.manifest_sha256 and sha256_file(manifest_file) != spec.manifest_sha256:
            raise BundleError(f"member {spec.name!r}: {manifest_file} does not match the hash in {ENSEMBLE_FILE} "
                              "(replaced or modified); rebuild the bundle")
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise BundleError(f"member {spec.name!r}: unreadable {manifest_file} ({e})") from e
        expected = MODEL_FILES[BACKEND_FORMATS[spec.backend]]
        if expected not in manifest.get("files", {}):
            raise BundleError(f"member {spec.name!r}: {spec.backend} needs {expected}, "
                              f"but {directory} holds {sorted(manifest.get('files', {}))}")
        return manifest

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Backend]:
        """The member's backend, loaded if needed and pinned (not evictable) while in the block."""
        member = self.members.get(name)
        if member is None:
            raise ConfigError(f"no member {name!r}; members: {', '.join(self.members)}")
        with self._pool_lock:
            member.in_use += 1
        try:
            backend = self._ensure_loaded(member)
            yield backend
        finally:
            with self._pool_lock:
                member.in_use -= 1
                self._pool_lock.notify_all()

    def _ensure_loaded(self, member: Member) -> Backend:
        with self._pool_lock:
            while member.backend is None and member._loading:
                self._pool_lock.wait()
            if member.backend is not None:
                self._lru.move_to_end(member.name)
                return member.backend
            member._loading = True
            self._make_room(member.memory_mb)
        try:
            backend = member.open()  # outside the pool lock: loading takes seconds
        finally:
            with self._pool_lock:
                member._loading = False
                self._pool_lock.notify_all()
        with self._pool_lock:
            member.backend = backend
            self._lru[member.name] = None
            self.stats["loads"] += 1
        return backend

    def _make_room(self, need_mb: float) -> None:
        """Close least recently used idle members until ``need_mb`` fits the budget (pool lock held)."""
        if self.memory_budget_mb is None:
            return
        for name in list(self._lru):
            if self.loaded_mb() + need_mb <= self.memory_budget_mb:
                return
            victim = self.members[name]
            if victim.in_use == 0 and victim.backend is not None:
                with victim.backend.lock:
                    victim.backend.close()
                victim.backend = None
                del self._lru[name]
                self.stats["evictions"] += 1
        if self.loaded_mb() + need_mb > self.memory_budget_mb:
            self.stats["over_budget"] += 1

    def loaded_mb(self) -> float:
        return sum(self.members[n].memory_mb for n in self._lru)

    @property
    def loaded(self) -> list[str]:
        """Names of the loaded members, least recently used first."""
        with self._pool_lock:
            return list(self._lru)

    def close(self) -> None:
        with self._pool_lock:
            for name in list(self._lru):
                backend = self.members[name].backend
                if backend is not None:
                    with backend.lock:
                        backend.close()
                self.members[name].backend = None
            self._lru.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- calling members -------------------------------------------------------------------

    def call(self, name: str, fn: Callable[[Backend], Any]) -> Any:
        """``fn(backend)`` on a member; any failure becomes a :class:`MemberError` naming the member."""
        try:
            with self.use(name) as backend:
                return fn(backend)
        except (KeyboardInterrupt, MemberError):
            raise
        except Exception as e:  # noqa: BLE001 - a member's failure is reported, not fatal
            raise MemberError(f"member {name!r} failed: {type(e).__name__}: {e}") from e

    def run_generation(self, backend: Backend, prompt, cfg: GenerationConfig, *, stream: bool = False):
        """``backend.generate`` with this ensemble's meter and grid intensity."""
        return backend.generate(prompt, cfg, stream=stream, meter=self.meter, grid_g_per_kwh=self.grid_g_per_kwh)

    def record(self, response: Response) -> Response:
        with self._stats_lock:
            self.stats["requests"] += 1
            self.stats["fallbacks"] += len(response.fallbacks)
            for m in response.members:
                self.stats["answered_by"][m] = self.stats["answered_by"].get(m, 0) + 1
            level = response.details.get("level")
            if level is not None:
                self.stats["levels"][level] = self.stats["levels"].get(level, 0) + 1
        return response

    def members_by_cost(self) -> list[str]:
        return [m.name for m in sorted(self.members.values(), key=lambda m: m.cost)]

    # --- the API -----------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[dict[str, str]], config: GenerationConfig | None = None, *,
                 stream: bool = False, **options: Any) -> Response | Iterator[ResponseChunk]:
        """Answer a prompt or chat messages with the bundle's strategy (chunks when ``stream``).

        ``config``: a :class:`GenerationConfig`; ``options`` (``max_tokens=64``...) replace its fields.
        """
        cfg = GenerationConfig.build(config, **options)
        chunks = self._recorded(self.strategy.generate(prompt, cfg))
        if stream:
            return chunks
        final = None
        for chunk in chunks:
            final = chunk.final or final
        return final

    def _recorded(self, chunks: Iterator[ResponseChunk]) -> Iterator[ResponseChunk]:
        for chunk in chunks:
            if chunk.final is not None:
                self.record(chunk.final)
            yield chunk

    def score(self, text: str) -> Response:
        """Log-probability / bits-per-byte of ``text`` as the strategy sees it."""
        if not isinstance(text, str) or not text:
            raise ConfigError("score needs a non-empty text")
        return self.record(self._metered(lambda: self.strategy.score(text)))

    def choose(self, context: str, options: Sequence[str]) -> Response:
        """Pick the most likely option after ``context`` (multiple choice / classification)."""
        options = list(options)
        if len(options) < 2 or not all(isinstance(o, str) and o for o in options):
            raise ConfigError("choose needs at least two non-empty options")
        return self.record(self._metered(lambda: self.strategy.choose(context, options)))

    def _metered(self, call: Callable[[], Response]) -> Response:
        """Run a scoring request and fill its usage: latency and energy (labelled with its source)."""
        t0 = time.perf_counter()
        token = self.meter.start() if self.meter is not None else None
        response = call()
        measurement = self.meter.stop(token) if self.meter is not None else None
        response.usage.latency_s = time.perf_counter() - t0
        for key, value in energy_fields(measurement, self.grid_g_per_kwh).items():
            setattr(response.usage, key, value)
        return response


def manifest_hash(member_dir: str | Path) -> str:
    return sha256_file(Path(member_dir) / MANIFEST)
