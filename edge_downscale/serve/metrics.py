"""Prometheus metrics of one server (its own registry): requests, tokens, latency, joules, per member."""
from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The server's counters, histograms and gauges; :meth:`render` is the ``/metrics`` text."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds
        p = "edge_downscale_serve_"
        self.requests = Counter(p + "requests", "HTTP requests answered, by endpoint, model and status code",
                                ["endpoint", "model", "status"], registry=r)
        self.answered = Counter(p + "member_answers", "Completions answered, by member", ["member"], registry=r)
        self.tokens = Counter(p + "tokens", "Tokens, by member and kind (prompt/completion)", ["member", "kind"], registry=r)
        self.joules = Counter(p + "joules", "Energy of the answers, by member and meter source", ["member", "source"],
                              registry=r)
        self.grams = Counter(p + "grams_co2", "CO2-equivalent grams of the answers, by member", ["member"], registry=r)
        self.latency = Histogram(p + "request_seconds", "Completion latency (admission to last token)", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(p + "ttft_seconds", "Time from admission to the first token", ["endpoint"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.member_latency = Histogram(p + "member_seconds", "Generation time inside the member, by member", ["member"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.fallbacks = Counter(p + "fallbacks", "Members that failed and were replaced by another", ["member"],
                                 registry=r)
        self.rejected = Counter(p + "rejected", "Requests refused with 429 (the member's queue was full)", ["member"],
                                registry=r)
        self.cancelled = Counter(p + "cancelled", "Generations stopped because the client went away", ["endpoint"],
                                 registry=r)
        self.in_flight = Gauge(p + "in_flight", "Requests admitted and not finished (answering + queued), by member",
                               ["member"], registry=r)
        self.loaded = Gauge(p + "member_loaded", "1 if the member is loaded", ["member"], registry=r)
        self.resident_mb = Gauge(p + "members_resident_mb", "Estimated MB of the loaded members", registry=r)
        self.budget_mb = Gauge(p + "memory_budget_mb", "The member memory budget (0 = none)", registry=r)
        self.evictions = Gauge(p + "evictions", "Members unloaded to fit the budget since start", registry=r)

    def record_answer(self, resp: Any) -> None:
        u = resp.usage
        member = resp.members[0] if len(resp.members) == 1 else "+".join(resp.members)
        self.answered.labels(member).inc()
        self.tokens.labels(member, "prompt").inc(u.prompt_tokens)
        self.tokens.labels(member, "completion").inc(u.completion_tokens)
        self.member_latency.labels(member).observe(u.latency_s)
        if u.joules is not None:
            self.joules.labels(member, u.energy_source or "unknown").inc(u.joules)
        if u.grams_co2 is not None:
            self.grams.labels(member).inc(u.grams_co2)
        for f in resp.fallbacks:
            self.fallbacks.labels(f["member"]).inc()

    def render(self, ensemble: Any, in_flight: dict[str, int]) -> bytes:
        from prometheus_client import generate_latest

        loaded = set(ensemble.loaded)
        for name in ensemble.members:
            self.loaded.labels(name).set(1 if name in loaded else 0)
            self.in_flight.labels(name).set(in_flight.get(name, 0))
        self.resident_mb.set(ensemble.loaded_mb())
        self.budget_mb.set(ensemble.memory_budget_mb or 0)
        self.evictions.set(ensemble.stats["evictions"])
        return generate_latest(self.registry)
