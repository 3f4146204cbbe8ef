"""The ``mixture`` strategy: a token-level mixture of the router's top experts (c-BTM).

c-BTM (Gururangan et al. 2023, "Scaling Expert Language Models with Unsupervised Domain
Discovery") ensembles expert LMs by weighting each expert's next-token distribution with the
router's posterior over experts for the context::

    p(x_t | x_<t) = sum_k w_k p_k(x_t | x_<t),   w = renormalise(top_k(posterior) ** (1 / temperature))

The weights come from the router on the same text that ``route`` routes on (the prompt, the text to
score, the choice context) and stay fixed for the request. Members with a weight below
``min_weight`` are dropped (the top one is always kept) and the rest renormalised.

* **score**: every selected member scores the same token ids in one window at the smallest member
  context (as :meth:`Backend.score` and ``route`` do); the per-token log-probabilities are mixed in
  probability space with a float64 logsumexp.
* **choose**: per option, ``sum_t log sum_k w_k p_k(token_t | context, option_<t)`` from each
  member's per-token log-probabilities of context + option (options tokenized as in
  :meth:`Backend.option_logprobs`); the argmax wins.
* **generate**: a true mixture. Every selected member decodes incrementally (``Backend._decode``,
  its own KV cache); at each step the next token is drawn from the mixed distribution with the
  request's :class:`GenerationConfig` (greedy, temperature, top-k, top-p, stop strings, seed) by the
  shared decode loop, and the chosen token is fed to every member. Streams as tokens come.

Cost: each request runs up to ``top_k`` members (all of them for every token when generating), so
latency and energy are roughly the sum of theirs; ``usage`` token counts are summed over the members
that ran. Members must share a tokenizer (exports of one base model): token ids are compared and a
mismatch is a :class:`ConfigError`. A member that fails is dropped from the mixture (weights
renormalised over the rest) and recorded in ``Response.fallbacks``, as ``vote`` does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, ClassVar, Generator, Iterator, Sequence

import numpy as np

from ..config import StageConfig, check, check_int
from ..errors import BundleError, ConfigError
from .base import Backend, log_softmax
from .generation import GenerationConfig, Usage, stream_tokens
from .response import Response, ResponseChunk
from .strategies import Strategy, members_by_domain, prompt_text, register_strategy


@dataclasses.dataclass
class MixtureOptions(StageConfig):
    """``top_k`` experts by router posterior, sharpened by ``temperature``; below ``min_weight`` dropped."""

    stage: ClassVar[str] = "mixture"
    top_k: int = 2
    temperature: float = 1.0  # on the posterior: < 1 sharpens, > 1 flattens
    min_weight: float = 0.0

    def validate(self) -> None:
        check_int(self, "top_k", minimum=1)
        check(isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
              and math.isfinite(self.temperature) and self.temperature > 0,
              f"mixture temperature must be a number > 0, got {self.temperature!r}")
        check(isinstance(self.min_weight, (int, float)) and not isinstance(self.min_weight, bool)
              and 0.0 <= self.min_weight < 1.0, f"mixture min_weight must be in [0, 1), got {self.min_weight!r}")


def mixture_weights(posterior: dict[str, float], top_k: int, temperature: float = 1.0,
                    min_weight: float = 0.0) -> dict[str, float]:
    """Top-k labels of ``posterior`` -> weights summing to 1 (sharpened, small ones dropped), best first."""
    ranked = sorted(posterior, key=lambda k: (-posterior[k], k))[:top_k]
    p = np.array([max(posterior[k], 0.0) for k in ranked], dtype=np.float64)  # (k,)
    logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -np.inf) / temperature
    if not np.isfinite(logp).any():
        logp = np.zeros_like(logp)  # a degenerate posterior: uniform over the top-k
    w = np.exp(logp - logp.max())
    w /= w.sum()
    keep = [i for i in range(len(ranked)) if i == 0 or w[i] >= min_weight]
    w = w[keep] / w[keep].sum()
    return {ranked[i]: float(x) for i, x in zip(keep, w)}


def mix_logprobs(logprobs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``log sum_k w_k exp(logprobs[k])`` per position, stable, float64.  (K, T), (K,) -> (T,)."""
    x = np.asarray(logprobs, dtype=np.float64) + np.log(np.asarray(weights, dtype=np.float64))[:, None]  # (K, T)
    m = x.max(axis=0)  # (T,)
    m = np.where(np.isfinite(m), m, 0.0)
    return m + np.log(np.exp(x - m).sum(axis=0))


def _tokenizer_mismatch(a: str, b: str) -> ConfigError:
    return ConfigError(f"mixture: members {a!r} and {b!r} tokenize differently; a token-level mixture needs members "
                       "that share a tokenizer (exports of one base model) -- use route or vote instead")


@register_strategy
class MixtureStrategy(Strategy):
    name = "mixture"
    capabilities = frozenset({"streaming"})
    options_cls = MixtureOptions

    def __init__(self, ensemble, options: dict[str, Any]):
        super().__init__(ensemble, options)
        self.by_domain = members_by_domain(ensemble, self.name)

    def weights(self, text: str) -> tuple[dict[str, float], dict[str, Any]]:
        """{member: weight} (best first, summing to 1) and the router's decision, for ``text``."""
        decision = self.ens.router.route(text)
        o = self.options
        by_label = mixture_weights(decision.scores, o.top_k, o.temperature, o.min_weight)
        info = {"label": decision.label, "confidence": decision.confidence, "scores": decision.scores,
                "router_ms": decision.seconds * 1e3}
        return {self.by_domain[label]: w for label, w in by_label.items()}, info

    @staticmethod
    def _renormalised(weights: dict[str, float], names: Sequence[str]) -> dict[str, float]:
        total = sum(weights[n] for n in names)
        return {n: weights[n] / total for n in names}

    def _reason(self, weights: dict[str, float], fallbacks: list) -> str:
        parts = ", ".join(f"{n} {w:.2f}" for n, w in weights.items())
        return f"mixture of {len(weights)} member(s): {parts}" + (
            f"; {len(fallbacks)} failed member(s) dropped" if fallbacks else "")

    # --- scoring: mix per-token log-probabilities of the same token ids ----------------------

    def _mixed(self, names: list[str], build: Callable[[Backend, int], tuple[list[list[int]], list[int], Any]],
               fallbacks: list) -> tuple[list[str], list[np.ndarray], dict[str, list[np.ndarray]], Any]:
        """Run ``build(backend, max_length) -> (sequences, n scored tail tokens per sequence, meta)`` and
        ``token_logprobs`` on each member; (members used, their tail log-probs per sequence, meta)."""
        lengths = {}
        for name in names:
            n = self._call(name, lambda b: b.context_length, fallbacks)
            if n is not None:
                lengths[name] = n
        if not lengths:
            raise self._all_failed(fallbacks)
        max_length = min(lengths.values())  # one window for every member: like is compared with like
        reference: dict[str, Any] = {}
        per_member: dict[str, list[np.ndarray]] = {}

        def run(name: str, b: Backend) -> list[np.ndarray]:
            seqs, tails, meta = build(b, max_length)
            if not reference:
                reference.update(name=name, seqs=seqs, tails=tails, meta=meta)
            elif seqs != reference["seqs"]:
                raise _tokenizer_mismatch(reference["name"], name)
            with b.lock:
                lps = b.token_logprobs(seqs)
            return [np.asarray(lp, dtype=np.float64)[len(lp) - n:] for lp, n in zip(lps, tails)]

        for name in lengths:
            out = self._call(name, lambda b: run(name, b), fallbacks)
            if out is not None:
                per_member[name] = out
        if not per_member:
            raise self._all_failed(fallbacks)
        return list(per_member), [np.stack(x) for x in zip(*per_member.values())], per_member, reference["meta"]

    def score(self, text: str) -> Response:
        weights, info = self.weights(text)

        def build(b: Backend, max_length: int):
            ids = b.tokenize(text)
            if not ids:
                raise ConfigError("cannot score an empty text")
            prefix = b.prefix_ids
            kept = ids[-(max_length - len(prefix)):]  # the last tokens that fit, as Backend.score keeps
            n_bytes = (len(text.encode("utf-8")) if len(kept) == len(ids)
                       else len(b.detokenize(kept).encode("utf-8")))
            return [prefix + kept], [len(kept)], (len(kept), n_bytes)

        fallbacks: list[dict[str, str]] = []
        used, (stacked,), per_member, (n_tokens, n_bytes) = self._mixed(list(weights), build, fallbacks)
        weights = self._renormalised(weights, used)
        mixed = mix_logprobs(stacked, np.array([weights[n] for n in used]))  # (M, T) -> (T,)
        total = float(mixed.sum())
        return Response(self.name, used, self._reason(weights, fallbacks), Usage(prompt_tokens=n_tokens * len(used)),
                        logprob=total, bits_per_byte=-total / math.log(2) / max(n_bytes, 1),
                        details={"weights": weights, "route": info,
                                 "member_logprobs": {n: float(x[0].sum()) for n, x in per_member.items()}},
                        fallbacks=fallbacks)

    def choose(self, context: str, options: list[str]) -> Response:
        weights, info = self.weights(context)

        def build(b: Backend, max_length: int):
            seqs, tails = b.option_sequences(context, options, max_length)  # what option_logprobs scores
            return seqs, tails, sum(len(s) for s in seqs)

        fallbacks: list[dict[str, str]] = []
        used, stacked, per_member, n_tokens = self._mixed(list(weights), build, fallbacks)
        weights = self._renormalised(weights, used)
        w = np.array([weights[n] for n in used])
        scores = [float(mix_logprobs(x, w).sum()) for x in stacked]  # per option: (M, n_opt) -> scalar
        return Response(self.name, used, self._reason(weights, fallbacks), Usage(prompt_tokens=n_tokens * len(used)),
                        choice=int(np.argmax(scores)), option_scores=scores,
                        details={"weights": weights, "route": info,
                                 "member_logprobs": {n: [float(x.sum()) for x in lps] for n, lps in per_member.items()}},
                        fallbacks=fallbacks)

    # --- generation: sample from the mixed next-token distribution -----------------------------

    def generate(self, prompt, cfg: GenerationConfig) -> Iterator[ResponseChunk]:
        weights, info = self.weights(prompt_text(prompt))
        fallbacks: list[dict[str, str]] = []
        with contextlib.ExitStack() as stack:
            backends: dict[str, Backend] = {}
            for name in sorted(weights):  # locks taken in name order: two mixtures never wait on each other
                try:
                    b = stack.enter_context(self.ens.use(name))
                    if "generate" not in b.capabilities:
                        raise ConfigError(f"the {b.name} backend cannot generate")
                    stack.enter_context(b.lock)
                    backends[name] = b
                except Exception as e:  # noqa: BLE001 - a member that cannot load is dropped, said so
                    fallbacks.append({"member": name, "error": f"member {name!r} failed: {type(e).__name__}: {e}"})
            if not backends:
                raise self._all_failed(fallbacks)
            order = [n for n in weights if n in backends]  # best first
            model = _MixtureModel({n: backends[n] for n in order}, self._renormalised(weights, order), fallbacks)
            ids, dropped, template = model.prompt_ids(prompt, cfg, prompt_text(prompt))
            final = None
            for chunk in stream_tokens(model, ids, cfg, meter=self.ens.meter, grid_g_per_kwh=self.ens.grid_g_per_kwh,
                                       truncated=dropped, template=template):
                if chunk.final is not None:
                    final = chunk.final
                elif chunk.text:
                    yield ResponseChunk(chunk.text)
        ran = len(model.started)
        u = final.usage
        usage = dataclasses.replace(u, prompt_tokens=u.prompt_tokens * ran, completion_tokens=u.completion_tokens * ran,
                                    truncated_tokens=u.truncated_tokens * ran)
        used = [n for n in order if n in model.started]
        yield ResponseChunk("", Response(
            self.name, used, self._reason({n: weights[n] for n in used}, fallbacks), usage, text=final.text,
            finish_reason=final.finish_reason, fallbacks=fallbacks, tokens=final.tokens, token_logprobs=final.logprobs,
            details={"weights": model.initial, "final_weights": dict(model.weights), "route": info,
                     "template": template}))


class _MixtureModel:
    """What the shared decode loop needs of a backend, for a weighted mixture of backends.

    ``_decode`` yields ``log sum_k w_k softmax(logits_k)`` (V,): log-probabilities are valid logits,
    so sampling, temperature, top-k/top-p and the reported token log-probabilities all act on the
    mixture. A member that raises is dropped and the weights renormalised over the rest.
    """

    def __init__(self, backends: dict[str, Backend], weights: dict[str, float], fallbacks: list):
        self.backends = backends
        self.weights = dict(weights)
        self.initial = dict(weights)
        self.fallbacks = fallbacks
        self.started: set[str] = set()
        top = next(iter(backends.values()))
        self.detokenize = top.detokenize
        self.context_length = min(b.context_length for b in backends.values())
        self.end_ids = frozenset().union(*(b.end_ids for b in backends.values()))

    def prompt_ids(self, prompt, cfg: GenerationConfig, text: str) -> tuple[list[int], int, str | None]:
        """The prompt's ids at the smallest member context; every member must tokenize it the same."""
        ref_name, ref = min(self.backends.items(), key=lambda kv: kv[1].context_length)
        ids, dropped, template = ref.prompt_ids(prompt, cfg.max_tokens, cfg.overflow)
        signature = (ref.prefix_ids, ref.tokenize(text))
        for name, b in self.backends.items():
            if name != ref_name and (b.prefix_ids, b.tokenize(text)) != signature:
                raise _tokenizer_mismatch(ref_name, name)
        return ids, dropped, template

    def _drop(self, name: str, e: Exception) -> None:
        self.fallbacks.append({"member": name, "error": f"member {name!r} failed: {type(e).__name__}: {e}"})
        del self.weights[name]
        if not self.weights:
            raise BundleError("every member failed: " + "; ".join(f["error"] for f in self.fallbacks))
        total = sum(self.weights.values())
        self.weights = {n: w / total for n, w in self.weights.items()}

    def _decode(self, prompt_ids: list[int]) -> Generator[np.ndarray, int, None]:
        steps = {n: b._decode(list(prompt_ids)) for n, b in self.backends.items()}
        try:
            logits = {}
            for name, step in steps.items():
                try:
                    logits[name] = next(step)
                    self.started.add(name)
                except ConfigError:
                    raise  # the request itself (context) is invalid
                except Exception as e:  # noqa: BLE001 - drop the member, mix the rest
                    self._drop(name, e)
            while True:
                sizes = {x.shape[-1] for x in logits.values()}
                if len(sizes) > 1:
                    raise ConfigError(f"mixture: members have different vocabularies {sorted(sizes)}; "
                                      "a token-level mixture needs members that share a tokenizer")
                names = [n for n in logits if n in self.weights]
                rows = np.stack([log_softmax(logits[n][None, :])[0] for n in names])  # (M, V) float64
                token = yield mix_logprobs(rows, np.array([self.weights[n] for n in names]))  # (V,)
                for name in names:
                    try:
                        logits[name] = steps[name].send(token)
                    except ConfigError:
                        raise
                    except Exception as e:  # noqa: BLE001
                        del logits[name]
                        self._drop(name, e)
        finally:
            for step in steps.values():
                step.close()

