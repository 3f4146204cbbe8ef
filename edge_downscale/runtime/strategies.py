"""How an ensemble combines its members: route, cascade or vote (and mixture, in its own module).

* **route** -- an offline router (:mod:`~edge_downscale.runtime.router`) picks one member per
  request from the prompt text; the member for the router's label answers. If it fails (or cannot
  even load), the next member by router score answers and the response says so. Streams tokens.
* **cascade** -- members ordered by cost (cheapest first). A level's answer is accepted when its
  confidence passes that level's threshold, else the request escalates; the last level always
  answers. Confidence is the mean (or min) token log-probability of the generated text, the mean
  token log-probability of a scored text, or the top option's probability for a choice. Thresholds
  are calibrated on held-out data for a target acceptance rate when the bundle is built
  (:func:`edge_downscale.bundle.calibrate_cascade`), as in
  FrugalGPT-style cascades; ``Ensemble.stats["levels"]`` counts how often each level answered.
* **vote** -- every member answers. For choices, members' option log-probabilities are normalised
  per member (log-softmax over the options) and combined: ``sum`` (product of experts) or
  ``mean_prob`` (mixture), optionally weighted. For free generation, each member scores the other
  members' candidates (mean token log-probability as a continuation of the prompt) and the best
  cross-scored candidate wins; ``majority`` instead takes the most common normalised answer
  (cross-score breaks ties). For scoring, the sequence mixture ``log sum_m w_m p_m(text)``.
* **mixture** -- a token-level mixture of the router's top-k members weighted by its posterior
  (c-BTM), in :mod:`~edge_downscale.runtime.mixture`.

Prompt errors (bad messages, ``overflow="error"``) are the caller's and raise at once; any other
failure of a member is recorded in ``Response.fallbacks`` and the strategy carries on without it.
"""
from __future__ import annotations

import abc
import dataclasses
import math
import re
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from ..config import StageConfig, check, registrar
from ..errors import BundleError, ConfigError
from .base import Backend
from .generation import Generation, GenerationConfig, Usage, check_messages
from .response import MemberError, Response, ResponseChunk

CONFIDENCES = ("mean_logprob", "min_logprob")
KINDS = ("generate", "score", "choose")


def prompt_text(prompt: str | Sequence[dict[str, str]]) -> str:
    """The text a router or a scorer sees: the prompt, or the last user message of a chat."""
    if isinstance(prompt, str):
        return prompt
    messages = check_messages(prompt)
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else messages[-1]["content"]


def generation_confidence(gen: Generation, kind: str) -> float:
    """Confidence of a generated answer: mean or min token log-probability (-inf if empty)."""
    if not gen.logprobs:
        return -math.inf
    return float(np.mean(gen.logprobs)) if kind == "mean_logprob" else float(np.min(gen.logprobs))


def option_probs(logprobs: np.ndarray) -> np.ndarray:
    """Softmax over options of summed log-probabilities: (n_options,) -> (n_options,)."""
    x = np.asarray(logprobs, dtype=np.float64)
    p = np.exp(x - x.max())
    return p / p.sum()


def _usage_of(gen: Generation | None) -> Usage:
    return gen.usage if gen is not None else Usage()


class Strategy(abc.ABC):
    """One way to combine members. Subclasses set ``name``, ``options_cls`` and the three calls.

    ``ensemble`` is the :class:`~edge_downscale.runtime.ensemble.Ensemble` that owns the strategy
    (not imported here: the ensemble imports its strategies, never the reverse).
    """

    name: ClassVar[str] = "strategy"
    capabilities: ClassVar[frozenset[str]] = frozenset()  # "streaming": generate streams as tokens come
    options_cls: ClassVar[type[StageConfig]]

    def __init__(self, ensemble, options: dict[str, Any]):
        self.ens = ensemble
        self.options = self.options_cls.from_dict(options)

    @abc.abstractmethod
    def generate(self, prompt, cfg: GenerationConfig) -> Iterator[ResponseChunk]:
        """Text chunks, the last one carrying the :class:`Response`."""

    @abc.abstractmethod
    def score(self, text: str) -> Response:
        """Log-probability of ``text``."""

    @abc.abstractmethod
    def choose(self, context: str, options: list[str]) -> Response:
        """Index of the most likely option after ``context``."""

    # helpers shared by the strategies
    def _call(self, name: str, fn, fallbacks: list[dict[str, str]]):
        """``fn(backend)`` on member ``name``; None (and a fallback record) if it failed."""
        try:
            return self.ens.call(name, fn)
        except MemberError as e:
            if isinstance(e.__cause__, ConfigError) and not isinstance(e.__cause__, BundleError):
                raise e.__cause__  # the request itself is invalid: no member could answer it
            fallbacks.append({"member": name, "error": str(e)})
            return None

    def _generate_one(self, name: str, prompt, cfg: GenerationConfig, fallbacks) -> Generation | None:
        return self._call(name, lambda b: self.ens.run_generation(b, prompt, cfg), fallbacks)

    def _all_failed(self, fallbacks) -> BundleError:
        return BundleError("every member failed: " + "; ".join(f["error"] for f in fallbacks))


# --- route --------------------------------------------------------------------------------------

@dataclasses.dataclass
class RouteOptions(StageConfig):
    """``fallback``: the member that answers when the router is unsure (default: the router's own)."""

    stage: ClassVar[str] = "route"
    fallback: str | None = None


def members_by_domain(ensemble, strategy: str) -> dict[str, str]:
    """{router label: the member of that domain}; the strategy needs a router whose labels all have a member."""
    if ensemble.router is None:
        raise BundleError(f"the {strategy} strategy needs a router: build the bundle with router corpora "
                          "(edge-downscale bundle build --router-corpus DOMAIN=DIR ...)")
    by_domain: dict[str, str] = {}
    for m in ensemble.members.values():
        if m.domain is not None:
            by_domain.setdefault(m.domain, m.name)
    missing = [label for label in ensemble.router.labels if label not in by_domain]
    if missing:
        raise BundleError(f"the router can pick {missing} but no member has that domain; "
                          f"member domains: {sorted(by_domain)}")
    return by_domain


class RouteStrategy(Strategy):
    name = "route"
    capabilities = frozenset({"streaming"})
    options_cls = RouteOptions

    def __init__(self, ensemble, options: dict[str, Any]):
        super().__init__(ensemble, options)
        self.by_domain = members_by_domain(ensemble, self.name)
        if self.options.fallback is not None and self.options.fallback not in ensemble.members:
            raise ConfigError(f"route fallback {self.options.fallback!r} is not a member; members: {', '.join(ensemble.members)}")

    def order(self, text: str) -> tuple[list[str], dict[str, Any]]:
        """Members to try, best first, and the router's decision as a dict."""
        decision = self.ens.router.route(text)
        chosen = self.by_domain[decision.label]
        if decision.fallback and self.options.fallback:
            chosen = self.options.fallback
        ranked = sorted(decision.scores, key=decision.scores.get, reverse=True)
        order = [chosen] + [self.by_domain[label] for label in ranked if self.by_domain[label] != chosen]
        order += [n for n in self.ens.members if n not in order]
        info = {"label": decision.label, "confidence": decision.confidence, "fallback": decision.fallback,
                "scores": decision.scores, "router_ms": decision.seconds * 1e3}
        return order, info

    def _reason(self, name: str, info: dict, fallbacks) -> str:
        why = (f"router: {info['label']} ({info['confidence']:.2f})" if not info["fallback"]
               else f"router unsure ({info['confidence']:.2f} for {info['label']}): fallback member")
        return why + (f"; answered by {name} after {len(fallbacks)} failed member(s)" if fallbacks else "")

    def generate(self, prompt, cfg: GenerationConfig) -> Iterator[ResponseChunk]:
        order, info = self.order(prompt_text(prompt))
        fallbacks: list[dict[str, str]] = []
        for name in order:
            emitted, final = False, None
            try:
                with self.ens.use(name) as backend:
                    for chunk in self.ens.run_generation(backend, prompt, cfg, stream=True):
                        if chunk.final is not None:
                            final = chunk.final
                        elif chunk.text:
                            emitted = True
                            yield ResponseChunk(chunk.text)
            except ConfigError as e:
                if not isinstance(e, BundleError) and not _is_load_error(e):
                    raise
                fallbacks.append({"member": name, "error": f"member {name!r} failed: {e}"})
            except Exception as e:  # noqa: BLE001 - fall back to the next member, say so
                fallbacks.append({"member": name, "error": f"member {name!r} failed: {type(e).__name__}: {e}"})
            if final is None:
                if emitted:
                    yield ResponseChunk("", restart=True)
                continue
            yield ResponseChunk("", Response(
                strategy=self.name, members=[name], reason=self._reason(name, info, fallbacks), usage=final.usage,
                text=final.text, finish_reason=final.finish_reason, details={"route": info, "template": final.template},
                fallbacks=fallbacks, tokens=final.tokens, token_logprobs=final.logprobs))
            return
        raise self._all_failed(fallbacks)

    def _first_success(self, text: str, fn) -> tuple[str, Any, dict, list]:
        order, info = self.order(text)
        fallbacks: list[dict[str, str]] = []
        for name in order:
            out = self._call(name, fn, fallbacks)
            if out is not None:
                return name, out, info, fallbacks
        raise self._all_failed(fallbacks)

    def score(self, text: str) -> Response:
        name, scored, info, fallbacks = self._first_success(text, lambda b: b.score(text))
        return Response(self.name, [name], self._reason(name, info, fallbacks), Usage(prompt_tokens=len(scored.tokens)),
                        logprob=scored.total, bits_per_byte=scored.bits_per_byte, details={"route": info},
                        fallbacks=fallbacks)

    def choose(self, context: str, options: list[str]) -> Response:
        name, lps, info, fallbacks = self._first_success(context, lambda b: b.option_logprobs(context, options))
        return Response(self.name, [name], self._reason(name, info, fallbacks), Usage(), choice=int(np.argmax(lps)),
                        option_scores=[float(x) for x in lps], details={"route": info}, fallbacks=fallbacks)


def _is_load_error(e: Exception) -> bool:
    from ..errors import ModelFormatError

    return isinstance(e, ModelFormatError)


# --- cascade ------------------------------------------------------------------------------------

@dataclasses.dataclass
class CascadeOptions(StageConfig):
    """``thresholds[kind][i]``: the confidence level ``i`` needs to answer a ``kind`` request."""

    stage: ClassVar[str] = "cascade"
    order: tuple[str, ...] = ()  # default: members by cost, cheapest first
    confidence: str = "mean_logprob"
    thresholds: dict = dataclasses.field(default_factory=dict)  # kind -> [threshold per level except the last]
    calibration: dict = dataclasses.field(default_factory=dict)  # what calibrate_cascade measured

    def validate(self) -> None:
        check(self.confidence in CONFIDENCES, f"cascade confidence must be one of {', '.join(CONFIDENCES)}")
        check(isinstance(self.thresholds, dict) and set(self.thresholds) <= set(KINDS),
              f"cascade thresholds must be an object with keys among {', '.join(KINDS)}")
        for kind, values in self.thresholds.items():
            check(isinstance(values, list) and all(isinstance(v, (int, float)) for v in values),
                  f"cascade thresholds[{kind!r}] must be a list of numbers")


class CascadeStrategy(Strategy):
    name = "cascade"
    options_cls = CascadeOptions

    def __init__(self, ensemble, options: dict[str, Any]):
        super().__init__(ensemble, options)
        order = list(self.options.order) or ensemble.members_by_cost()
        unknown = [n for n in order if n not in ensemble.members]
        if unknown:
            raise ConfigError(f"cascade order names unknown member(s) {unknown}; members: {', '.join(ensemble.members)}")
        self.levels = order

    def threshold(self, kind: str, level: int) -> float:
        if level == len(self.levels) - 1:
            return -math.inf  # the last level always answers
        values = self.options.thresholds.get(kind)
        if values is None or len(values) < len(self.levels) - 1:
            raise BundleError(f"the cascade has no calibrated {kind} thresholds for {len(self.levels)} levels; "
                              "calibrate it (edge_downscale.bundle.calibrate_cascade or "
                              "edge-downscale bundle build --calibrate-corpus)")
        return float(values[level])

    def _run(self, kind: str, fn, confidence) -> tuple[int, str, Any, list[dict], list[dict]]:
        """Walk the levels; returns (level, member, output, level records, fallbacks)."""
        records, fallbacks = [], []
        last_ok = None
        for level, name in enumerate(self.levels):
            out = self._call(name, fn, fallbacks)
            if out is None:
                records.append({"level": level, "member": name, "error": True})
                continue
            conf, thr = confidence(out), self.threshold(kind, level)
            accepted = conf >= thr
            records.append({"level": level, "member": name, "confidence": conf,
                            "threshold": None if math.isinf(thr) else thr, "accepted": accepted})
            last_ok = (level, name, out)
            if accepted:
                return level, name, out, records, fallbacks
        if last_ok is None:
            raise self._all_failed(fallbacks)
        # the last level failed: the best we have is the highest level that answered
        records.append({"note": "last level failed; answered by the highest level that ran"})
        return (*last_ok, records, fallbacks)

    def _reason(self, level: int, name: str, records: list[dict]) -> str:
        rec = next(r for r in records if r.get("member") == name and "confidence" in r)
        if rec["threshold"] is None:
            return f"cascade level {level} ({name}): the last level answers whatever its confidence"
        return f"cascade level {level} ({name}): confidence {rec['confidence']:.3f} >= {rec['threshold']:.3f}"

    def generate(self, prompt, cfg: GenerationConfig) -> Iterator[ResponseChunk]:
        usage = Usage()
        kind = self.options.confidence

        def run(b: Backend) -> Generation:
            nonlocal usage
            gen = self.ens.run_generation(b, prompt, cfg)
            usage = usage.add(gen.usage)
            return gen

        level, name, gen, records, fallbacks = self._run("generate", run, lambda g: generation_confidence(g, kind))
        yield ResponseChunk(gen.text)
        yield ResponseChunk("", Response(self.name, [name], self._reason(level, name, records), usage, text=gen.text,
                                         finish_reason=gen.finish_reason,
                                         details={"level": level, "levels": records, "template": gen.template},
                                         fallbacks=fallbacks, tokens=gen.tokens, token_logprobs=gen.logprobs))

    def score(self, text: str) -> Response:
        level, name, scored, records, fallbacks = self._run("score", lambda b: b.score(text), lambda s: s.mean)
        return Response(self.name, [name], self._reason(level, name, records), Usage(prompt_tokens=len(scored.tokens)),
                        logprob=scored.total, bits_per_byte=scored.bits_per_byte,
                        details={"level": level, "levels": records}, fallbacks=fallbacks)

    def choose(self, context: str, options: list[str]) -> Response:
        level, name, lps, records, fallbacks = self._run(
            "choose", lambda b: b.option_logprobs(context, options), lambda x: float(option_probs(x).max()))
        return Response(self.name, [name], self._reason(level, name, records), Usage(), choice=int(np.argmax(lps)),
                        option_scores=[float(x) for x in lps], details={"level": level, "levels": records},
                        fallbacks=fallbacks)


# --- vote ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class VoteOptions(StageConfig):
    """``combine`` for choices; ``generate``: how free-text candidates are picked; ``weights`` per member."""

    stage: ClassVar[str] = "vote"
    combine: str = "sum"  # "sum" (product of experts) | "mean_prob" (mixture)
    generate: str = "cross-score"  # | "majority"
    weights: dict = dataclasses.field(default_factory=dict)
    members: tuple[str, ...] = ()  # default: all

    def validate(self) -> None:
        check(self.combine in ("sum", "mean_prob"), f"vote combine must be sum or mean_prob, got {self.combine!r}")
        check(self.generate in ("cross-score", "majority"), f"vote generate must be cross-score or majority, got {self.generate!r}")
        check(all(isinstance(w, (int, float)) and w >= 0 for w in self.weights.values()), "vote weights must be >= 0")


_NORMALISE = re.compile(r"[\W_]+")


def normalise_answer(text: str) -> str:
    """Lower-case words only: "The answer: 42." == "the answer 42"."""
    return " ".join(_NORMALISE.sub(" ", text.lower()).split())


class VoteStrategy(Strategy):
    name = "vote"
    options_cls = VoteOptions

    def __init__(self, ensemble, options: dict[str, Any]):
        super().__init__(ensemble, options)
        names = list(self.options.members) or list(ensemble.members)
        unknown = [n for n in names + list(self.options.weights) if n not in ensemble.members]
        if unknown:
            raise ConfigError(f"vote names unknown member(s) {unknown}; members: {', '.join(ensemble.members)}")
        self.voters = names

    def weight(self, name: str) -> float:
        return float(self.options.weights.get(name, 1.0))

    def choose(self, context: str, options: list[str]) -> Response:
        fallbacks: list[dict[str, str]] = []
        per_member = {}
        for name in self.voters:
            lps = self._call(name, lambda b: b.option_logprobs(context, options), fallbacks)
            if lps is not None:
                per_member[name] = lps
        if not per_member:
            raise self._all_failed(fallbacks)
        norm = {n: np.log(option_probs(lps)) for n, lps in per_member.items()}  # per-member log-softmax
        w = np.array([self.weight(n) for n in norm])  # (M,)
        stacked = np.stack(list(norm.values()))  # (M, n_options)
        if self.options.combine == "sum":
            combined = (w[:, None] * stacked).sum(axis=0)
        else:
            combined = np.log((w[:, None] * np.exp(stacked)).sum(axis=0) / max(w.sum(), 1e-12))
        choice = int(np.argmax(combined))
        agree = [n for n, x in norm.items() if int(np.argmax(x)) == choice]
        return Response(self.name, list(norm), f"vote ({self.options.combine}) of {len(norm)} member(s); "
                        f"{len(agree)} agree with the result", Usage(), choice=choice,
                        option_scores=[float(x) for x in combined],
                        details={"votes": {n: int(np.argmax(x)) for n, x in norm.items()},
                                 "member_logprobs": {n: [float(v) for v in lps] for n, lps in per_member.items()}},
                        fallbacks=fallbacks)

    def score(self, text: str) -> Response:
        fallbacks: list[dict[str, str]] = []
        scored = {}
        for name in self.voters:
            s = self._call(name, lambda b: b.score(text), fallbacks)
            if s is not None:
                scored[name] = s
        if not scored:
            raise self._all_failed(fallbacks)
        w = np.array([self.weight(n) for n in scored])  # (M,)
        totals = np.array([s.total for s in scored.values()])  # (M,)
        keep = w > 0
        mix = float(np.logaddexp.reduce(np.log(w[keep]) + totals[keep]) - np.log(w[keep].sum()))
        n_bytes = max(len(text.encode("utf-8")), 1)
        return Response(self.name, list(scored), f"sequence mixture of {len(scored)} member(s)", Usage(),
                        logprob=mix, bits_per_byte=-mix / math.log(2) / n_bytes,
                        details={"member_logprobs": {n: s.total for n, s in scored.items()}}, fallbacks=fallbacks)

    def generate(self, prompt, cfg: GenerationConfig) -> Iterator[ResponseChunk]:
        fallbacks: list[dict[str, str]] = []
        candidates: dict[str, Generation] = {}
        for name in self.voters:
            gen = self._generate_one(name, prompt, cfg, fallbacks)
            if gen is not None:
                candidates[name] = gen
        if not candidates:
            raise self._all_failed(fallbacks)
        usage = Usage()
        for gen in candidates.values():
            usage = usage.add(gen.usage)
        authors = list(candidates)
        texts = [candidates[a].text for a in authors]
        cross = self._cross_scores(prompt_text(prompt), authors, texts, fallbacks)  # (scorers, candidates)
        if self.options.generate == "majority":
            groups: dict[str, list[int]] = {}
            for i, t in enumerate(texts):
                groups.setdefault(normalise_answer(t), []).append(i)
            top = max(len(g) for g in groups.values())
            tied = [i for g in groups.values() if len(g) == top for i in g]
            winner = max(tied, key=lambda i: cross[i])
            reason = f"majority: {top} of {len(texts)} member(s) gave this answer"
        else:
            winner = int(np.argmax(cross))
            reason = f"cross-scoring: {authors[winner]}'s answer scored best by the other member(s)"
        gen = candidates[authors[winner]]
        yield ResponseChunk(gen.text)
        yield ResponseChunk("", Response(
            self.name, [authors[winner]], reason, usage, text=gen.text, finish_reason=gen.finish_reason,
            details={"candidates": {a: t for a, t in zip(authors, texts)},
                     "cross_scores": {a: float(c) for a, c in zip(authors, cross)}}, fallbacks=fallbacks,
            tokens=gen.tokens, token_logprobs=gen.logprobs))

    def _cross_scores(self, context: str, authors: list[str], texts: list[str], fallbacks) -> np.ndarray:
        """Per candidate: mean over the *other* members of its mean token log-probability (n_candidates,)."""
        scorers = [n for n in self.voters if n in authors] or authors
        table = np.full((len(scorers), len(texts)), np.nan)  # (scorers, candidates)
        for j, name in enumerate(scorers):
            def per_token(b: Backend) -> np.ndarray:
                out = np.full(len(texts), -np.inf)
                for i, t in enumerate(texts):
                    n = len(b.tokenize(t))
                    if n:
                        out[i] = b.option_logprobs(context, [t])[0] / n
                return out

            row = self._call(name, per_token, fallbacks)
            if row is not None:
                table[j] = row
        scores = np.empty(len(texts))
        for i, author in enumerate(authors):
            others = [j for j, s in enumerate(scorers) if s != author and not np.isnan(table[j, i])]
            rows = others or [j for j in range(len(scorers)) if not np.isnan(table[j, i])]
            scores[i] = np.mean([self.weight(scorers[j]) * table[j, i] for j in rows]) if rows else -np.inf
        return scores


STRATEGIES: dict[str, type[Strategy]] = {"route": RouteStrategy, "cascade": CascadeStrategy, "vote": VoteStrategy}
# more strategies register themselves from their own modules (mixture: runtime/mixture.py, imported by
# the ensemble), so this module never imports them.
register_strategy = registrar(STRATEGIES, "strategy")


def make_strategy(name: str, ensemble, options: dict[str, Any]) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}") from None
    return cls(ensemble, options)
