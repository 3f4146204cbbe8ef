"""llama.cpp settings by measurement: threads, batch sizes, flash attention and mmap on this device.

**Search**: coordinate descent from the starting settings (the backend's
:data:`~edge_downscale.runtime.llamacpp.DEFAULTS` under a member's own options), one setting at a
time in :data:`TUNE_GRID` order; the full product grows multiplicatively and would not fit a minute
or two on a small device. Each of a setting's values (the current one included) is loaded fresh
and measured in ``rounds`` interleaved rounds (A, B, A, B, the order rotated each round, so a noisy
machine's drift falls on every candidate alike); medians decide. A value replaces the current one
only when it is better by ``margin`` on the setting's objective (:data:`OBJECTIVES`: decode tokens/s,
or prefill tokens/s for settings that only touch the prompt). A last interleaved comparison of the
result against the starting settings gives the speed-up; unless the result is better by ``margin``
on decode or on prefill, and not worse by ``margin`` on the other, the starting settings are kept.

**Timing**: greedy decoding of exactly ``n_new`` tokens on the backend's own decode step (end-of-text
ignored, so every candidate does the same work). Decode tokens/s counts the time between the first
and the last generated token, prefill tokens/s the prompt over the time to the first token, as in
:class:`~edge_downscale.runtime.generation.Usage`. Load time is recorded too (mmap mostly changes
loading) but decides nothing.

**Same output**: every candidate's greedy tokens are compared with the starting settings'. Settings
such as flash attention or another batch split reorder float sums, which can flip a near-tie and
change every later token; such a candidate stays eligible when its next-token probabilities after
the prompt are within ``prob_tol`` of the starting settings' (a reordering, not another computation),
and the difference is recorded (``same_tokens``, ``max_prob_diff``). ``require_same_tokens=True``
makes any difference disqualifying.

Q4_0 online repacking (llama.cpp's CPU_REPACK buffers) is always on: llama-cpp-python 0.3.36's
``Llama`` does not expose ``use_extra_bufts``, so it is not a setting here.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .._io import write_json_atomic
from ..artifacts import model_file, verify_manifest
from ..config import is_int, is_number
from ..errors import BundleError, ConfigError
from .base import backend_class
from .ensemble import ENSEMBLE_FILE, Ensemble, EnsembleSpec
from .llamacpp import DEFAULTS, LlamaCppBackend, resolve_settings


def _thread_counts() -> tuple[int, ...]:
    n = os.cpu_count() or 1
    return tuple(sorted({t for t in (1, 2, 4, 8) if t <= n} | {n}))


# Candidate values per setting, searched in this order (n_batch before n_ubatch: n_ubatch is capped at it).
TUNE_GRID: dict[str, tuple] = {
    "n_threads": _thread_counts(),
    "n_threads_batch": _thread_counts(),
    "flash_attn": (False, True),
    "n_batch": (128, 512),
    "n_ubatch": (128, 512),
    "use_mmap": (True, False),
}
# What a setting is judged by: "decode" or "prefill" tokens/s (the latter for settings that only touch the prompt).
OBJECTIVES: dict[str, str] = {"n_threads_batch": "prefill", "n_batch": "prefill", "n_ubatch": "prefill"}
_METRICS = {"decode": "decode_tok_s", "prefill": "prefill_tok_s"}
DEFAULT_PROMPT = (
    "The library reads a configuration file, checks every value, and reports the first problem it finds "
    "together with what to do about it. Then it loads the model, splits the text into pieces that fit "
    "the context window, and scores each piece from the start of a document.\n\n"
    "def load(path):\n    with open(path, encoding='utf-8') as f:\n        return json.load(f)\n\n"
)


@dataclasses.dataclass
class Candidate:
    """One setting combination as measured in one stage (a setting's name, or "confirm")."""

    stage: str
    settings: dict[str, Any]  # the tunable settings
    decode_tok_s: float | None = None  # medians over the rounds
    prefill_tok_s: float | None = None
    load_s: float | None = None
    same_tokens: bool = True  # greedy tokens equal to the starting settings'
    max_prob_diff: float = 0.0  # largest |p - p_start| of the next-token distribution after the prompt
    eligible: bool = True
    rounds: list = dataclasses.field(default_factory=list)  # per round: decode_tok_s, prefill_tok_s, load_s

    def metric(self, objective: str) -> float:
        value = getattr(self, _METRICS[objective])
        return -1.0 if value is None else value


@dataclasses.dataclass
class TuneResult:
    """A tuning run of one model: every candidate, the starting and the chosen settings, the speed-ups."""

    model: str
    default_options: dict[str, Any]  # the starting settings (DEFAULTS under the given options)
    best_options: dict[str, Any]  # the chosen settings (default_options when nothing beat them by margin)
    fixed_options: dict[str, Any]  # options passed through untuned (n_ctx, n_gpu_layers...)
    candidates: list[Candidate]
    decode_speedup: float = 1.0  # chosen over starting settings, measured side by side (1.0 when kept)
    prefill_speedup: float = 1.0
    kept_defaults: bool = True
    note: str = ""
    prompt_tokens: int = 0
    n_new: int = 0
    rounds: int = 0
    margin: float = 0.0
    seconds: float = 0.0

    @property
    def speedup(self) -> float:
        """Decode speed-up of the chosen settings over the starting ones."""
        return self.decode_speedup

    @property
    def changed(self) -> dict[str, tuple[Any, Any]]:
        """{setting: (start, chosen)} for the settings tuning changed."""
        return {k: (self.default_options[k], v) for k, v in self.best_options.items() if self.default_options.get(k) != v}

    def median_decode(self, which: str) -> float | None:
        """Median decode tokens/s of the "default" or "best" settings in the last stage that measured them."""
        settings = self.default_options if which == "default" else self.best_options
        found = [c for c in self.candidates if c.settings == settings]
        return found[-1].decode_tok_s if found else None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["speedup"] = self.speedup
        d["changed"] = {k: list(v) for k, v in self.changed.items()}
        return d


def _check_grid(grid: Mapping[str, Sequence]) -> dict[str, tuple]:
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError("the tuning grid must map at least one setting to candidate values")
    unknown = sorted(set(grid) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown llama.cpp setting(s) in the grid: {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}")
    out = {}
    for name, values in grid.items():
        values = tuple(values)
        if not values:
            raise ConfigError(f"the tuning grid has no values for {name}")
        for v in values:
            resolve_settings(**{name: v})  # each value valid on its own
        out[name] = values
    return out


def _measure(model_path: Path, options: dict[str, Any], prompt_ids: list[int], n_new: int) -> dict[str, Any]:
    """Load with ``options``, decode ``n_new`` greedy tokens after ``prompt_ids``: tokens, timings, first probs."""
    t0 = time.perf_counter()
    backend = LlamaCppBackend(model_path, **options)
    load_s = time.perf_counter() - t0
    try:
        with backend.lock:
            steps = backend._decode(prompt_ids)
            try:
                t0 = time.perf_counter()
                logits = next(steps)  # (V,) after the prompt
                tokens = [int(np.argmax(logits))]
                t_first = time.perf_counter()
                first = logits
                while len(tokens) < n_new:
                    logits = steps.send(tokens[-1])
                    tokens.append(int(np.argmax(logits)))
                t_last = time.perf_counter()
            finally:
                steps.close()
    finally:
        backend.close()
    z = np.exp(first.astype(np.float64) - first.max())
    return {"tokens": tokens, "probs": z / z.sum(), "load_s": load_s,
            "prefill_tok_s": len(prompt_ids) / (t_first - t0),
            "decode_tok_s": (n_new - 1) / (t_last - t_first) if t_last > t_first else None}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _prompt_ids(model_path: Path, options: dict, prompt: str | None, prompt_ids: Sequence[int] | None,
                n_tokens: int) -> list[int]:
    if prompt_ids is not None:
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ConfigError("prompt_ids is empty")
        return ids
    text = DEFAULT_PROMPT if prompt is None else prompt
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("the tuning prompt must be a non-empty text")
    with LlamaCppBackend(model_path, **{**options, "n_ctx": 64}) as b:  # only the tokenizer is needed
        piece = b.tokenize(text)
        if not piece:
            raise ConfigError("the tuning prompt has no tokens")
        ids = list(b.prefix_ids)
        while len(ids) < n_tokens:
            ids += piece
    return ids[:n_tokens]


def tune_llamacpp(model_path: str | os.PathLike, *, options: Mapping[str, Any] | None = None,
                  prompt: str | None = None, prompt_ids: Sequence[int] | None = None, prompt_tokens: int = 256,
                  n_new: int = 64, rounds: int = 3, grid: Mapping[str, Sequence] = TUNE_GRID, margin: float = 0.03,
                  prob_tol: float = 0.02, require_same_tokens: bool = False,
                  progress: Callable[[str], None] | None = None) -> TuneResult:
    """Measure the llama.cpp settings of ``grid`` for a GGUF model on this device (see the module docstring).

    ``options``: the backend options to start from (a bundle member's); those not in ``grid`` stay
    fixed. The prompt is ``prompt_ids``, else ``prompt`` (default: a built-in text) repeated to
    ``prompt_tokens`` after BOS, capped so that prompt and ``n_new`` fit the context.
    """
    t_start = time.perf_counter()
    grid = _check_grid(grid)
    options = dict(options or {})
    if not (is_int(n_new) and n_new >= 2):
        raise ConfigError(f"n_new must be an integer >= 2 (decode speed needs two tokens), got {n_new!r}")
    if not (is_int(rounds) and rounds >= 1):
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not (is_int(prompt_tokens) and prompt_tokens >= 1):
        raise ConfigError(f"prompt_tokens must be an integer >= 1, got {prompt_tokens!r}")
    if not (is_number(margin) and 0 <= margin < 1):
        raise ConfigError(f"margin must be in [0, 1), got {margin!r}")
    if not (is_number(prob_tol) and 0 <= prob_tol <= 1):
        raise ConfigError(f"prob_tol must be in [0, 1], got {prob_tol!r}")
    model_path = Path(model_path)
    resolved = resolve_settings(**options)
    fixed = {k: v for k, v in options.items() if k not in grid}
    start = {k: resolved[k] for k in grid}
    n_ctx = resolved["n_ctx"]
    room = n_ctx - n_new
    if room < 1 or (prompt_ids is not None and len(prompt_ids) > room):
        raise ConfigError(f"a prompt and {n_new} new tokens do not fit n_ctx={n_ctx}; lower n_new or raise n_ctx")
    ids = _prompt_ids(model_path, {**fixed, **start}, prompt, prompt_ids, min(prompt_tokens, room))
    say = progress or (lambda message: None)

    def full(settings: dict) -> dict:  # the effective tunable settings (n_batch/n_ubatch caps applied)
        s = resolve_settings(**{**fixed, **settings})
        return {k: s[k] for k in grid}

    start = full(start)
    say(f"{model_path.name}: reference run with {start}")
    ref = _measure(model_path, {**fixed, **start}, ids, n_new)  # also the warm-up

    def measure(stage: str, settings_list: list[dict]) -> list[Candidate]:
        cands = [Candidate(stage, s) for s in settings_list]
        for r in range(rounds):
            shift = r % len(cands)
            for c in cands[shift:] + cands[:shift]:
                shown = c.settings if stage == "confirm" else f"{stage}={c.settings[stage]}"
                say(f"{model_path.name}: {stage} round {r + 1}/{rounds}: {shown}")
                m = _measure(model_path, {**fixed, **c.settings}, ids, n_new)
                c.rounds.append({k: m[k] for k in ("decode_tok_s", "prefill_tok_s", "load_s")})
                c.same_tokens = c.same_tokens and m["tokens"] == ref["tokens"]
                c.max_prob_diff = max(c.max_prob_diff, float(np.abs(m["probs"] - ref["probs"]).max()))
        for c in cands:
            for key in ("decode_tok_s", "prefill_tok_s", "load_s"):
                setattr(c, key, _median([x[key] for x in c.rounds]))
            c.eligible = c.same_tokens or (not require_same_tokens and c.max_prob_diff <= prob_tol)
        return cands

    candidates: list[Candidate] = []
    current = dict(start)
    for name, values in grid.items():
        settings_list = []
        for v in (current[name],) + values:
            s = full({**current, name: v})
            if s not in settings_list:
                settings_list.append(s)
        if len(settings_list) < 2:  # e.g. every n_ubatch capped to the same n_batch
            continue
        cands = measure(name, settings_list)
        candidates += cands
        objective = OBJECTIVES.get(name, "decode")
        base = cands[0]  # the current settings
        best = max((c for c in cands if c.eligible or c is base), key=lambda c: c.metric(objective))
        if best is not base and best.metric(objective) >= base.metric(objective) * (1 + margin):
            current = best.settings

    result = TuneResult(str(model_path), start, dict(start), fixed, candidates, prompt_tokens=len(ids), n_new=n_new,
                        rounds=rounds, margin=margin)
    if current == start:
        result.note = f"no setting beat the starting ones by {margin:.0%}"
    else:
        a, b = measure("confirm", [start, current])
        candidates += [a, b]
        dec = b.metric("decode") / a.metric("decode") if a.metric("decode") > 0 else 0.0
        pre = b.metric("prefill") / a.metric("prefill") if a.metric("prefill") > 0 else 0.0
        up, down = 1 + margin, 1 - margin
        if b.eligible and ((dec >= up and pre >= down) or (pre >= up and dec >= down)):
            result.best_options, result.kept_defaults = dict(current), False
            result.decode_speedup, result.prefill_speedup = dec, pre
            result.note = "tuned settings confirmed side by side"
        elif not b.eligible:
            result.note = "the combination changes the output beyond prob_tol; kept the starting settings"
        else:
            result.note = (f"the combination did not beat the starting settings by {margin:.0%} side by side "
                           f"(decode x{dec:.3f}, prefill x{pre:.3f}); kept them")
    result.seconds = time.perf_counter() - t_start
    return result


# --- bundles -----------------------------------------------------------------------------------

def _ensemble_file(bundle_dir: str | os.PathLike) -> Path:
    path = Path(bundle_dir)
    file = path if path.is_file() else path / ENSEMBLE_FILE
    if not file.is_file():
        raise BundleError(f"{path}: not a bundle (no {ENSEMBLE_FILE}); build one with `edge-downscale bundle build` "
                          "or `edge-downscale build`")
    return file


def tunable_members(bundle_dir: str | os.PathLike) -> tuple[dict[str, tuple[Path, dict]], dict[str, str]]:
    """({member: (model.gguf, its options)} for the llama.cpp members, {member: why skipped} for the others).

    The bundle is checked as :meth:`Ensemble.load` does, and each tuned member's files against its manifest.
    """
    file = _ensemble_file(bundle_dir)
    ens = Ensemble.load(file)
    tunable, skipped = {}, {}
    for name, member in ens.members.items():
        if member.spec.backend != "llamacpp":
            skipped[name] = f"{member.spec.backend} member: only llama.cpp settings are tuned"
            continue
        verify_manifest(member.dir)
        tunable[name] = (model_file(member.dir, "gguf"), dict(member.spec.options))
    if not tunable:
        raise BundleError(f"{file.parent}: no llama.cpp member to tune (members: "
                          f"{', '.join(f'{n} ({m.spec.backend})' for n, m in ens.members.items())})")
    return tunable, skipped


@dataclasses.dataclass
class BundleTuning:
    """The tuning of one bundle: a result per llama.cpp member, the members skipped and why."""

    bundle: str
    results: dict[str, TuneResult]
    skipped: dict[str, str]
    written: str | None = None  # the ensemble.json the options went into

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "written": self.written, "skipped": self.skipped,
                "members": {n: r.to_dict() for n, r in self.results.items()}}


def tune_bundle(bundle_dir: str | os.PathLike, *, fixed: Mapping[str, Any] | None = None,
                grid: Mapping[str, Sequence] = TUNE_GRID, write: bool = True,
                progress: Callable[[str], None] | None = None, **tune_options: Any) -> BundleTuning:
    """Tune every llama.cpp member of a bundle (:func:`tune_llamacpp`) and, with ``write``, store the chosen
    settings in its ``ensemble.json``. ``fixed``: settings held at a value (e.g. ``{"n_threads": 4}``)."""
    fixed = dict(fixed or {})
    resolve_settings(**fixed)
    grid = {k: v for k, v in grid.items() if k not in fixed}
    tunable, skipped = tunable_members(bundle_dir)
    results = {}
    for name, (path, options) in tunable.items():
        say = (lambda m, n=name: progress(f"{n}: {m}")) if progress else None
        results[name] = tune_llamacpp(path, options={**options, **fixed}, grid=grid, progress=say, **tune_options)
    tuning = BundleTuning(str(bundle_dir), results, skipped)
    if write:
        chosen = {n: {**r.best_options, **fixed} for n, r in results.items()}  # what was measured, fixed ones too
        tuning.written = str(write_member_options(bundle_dir, chosen))
    return tuning


def _option_names(backend: str) -> set[str]:
    import inspect

    params = inspect.signature(backend_class(backend).__init__).parameters
    return {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}


# backend -> a check of a member's complete options (the backend's own validation, without loading a model)
_OPTION_CHECKS: dict[str, Callable[[dict], Any]] = {"llamacpp": lambda options: resolve_settings(**options)}


def write_member_options(bundle_dir: str | os.PathLike, options: Mapping[str, Mapping[str, Any]]) -> Path:
    """Merge ``{member: {option: value}}`` into the members' ``options`` in ``ensemble.json``, atomically.

    Everything else in the file is kept; an unknown member or an option its backend does not take is
    refused before anything is written. Returns the path of ``ensemble.json``.
    """
    file = _ensemble_file(bundle_dir)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{file}: unreadable ({e}); rebuild the bundle") from e
    members = data.get("members") if isinstance(data, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, dict) and "name" in m for m in members):
        raise BundleError(f"{file}: no members list; rebuild the bundle")
    by_name = {m["name"]: m for m in members}
    unknown = sorted(set(options) - set(by_name))
    if unknown:
        raise BundleError(f"{file.parent}: no member {', '.join(map(repr, unknown))}; its members: {', '.join(by_name)}")
    for name, new in options.items():
        member = by_name[name]
        if not isinstance(new, Mapping):
            raise ConfigError(f"member {name!r}: options must be a mapping, got {type(new).__name__}")
        backend = member.get("backend", "llamacpp")
        accepted = _option_names(backend)
        bad = sorted(set(new) - accepted)
        if bad:
            raise ConfigError(f"member {name!r}: the {backend} backend takes no option {', '.join(bad)}; "
                              f"it takes {', '.join(sorted(accepted))}")
        merged = {**(member.get("options") or {}), **new}
        _OPTION_CHECKS.get(backend, lambda o: None)(merged)
        member["options"] = merged
    EnsembleSpec.from_dict(json.loads(json.dumps(data)))  # the result must still be a valid bundle
    write_json_atomic(file, data)
    return file


def table_rows(tunings: Sequence[BundleTuning]) -> list[list[str]]:
    """One row per tuned member: what changed, decode tokens/s before and after, the speed-ups."""
    rows = [["bundle", "member", "settings", "decode tok/s default -> tuned", "decode speed-up", "prefill speed-up",
             "same tokens"]]
    fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    for t in tunings:
        for name, r in t.results.items():
            changed = ", ".join(f"{k} {a}->{b}" for k, (a, b) in r.changed.items()) or "defaults kept"
            chosen = next((c for c in reversed(r.candidates) if c.settings == r.best_options), None)
            rows.append([Path(t.bundle).name, name, changed,
                         f"{fmt(r.median_decode('default'))} -> {fmt(r.median_decode('best'))}",
                         f"x{r.decode_speedup:.2f}", f"x{r.prefill_speedup:.2f}",
                         "yes" if chosen is None or chosen.same_tokens else f"no (max dp {chosen.max_prob_diff:.3g})"])
        for name, why in t.skipped.items():
            rows.append([Path(t.bundle).name, name, f"skipped: {why}", "-", "-", "-", "-"])
    return rows
