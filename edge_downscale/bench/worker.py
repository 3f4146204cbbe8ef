"""The worker process that holds one configuration: it opens it, answers the run's requests, reports memory.

Each configuration lives in its own process, a fresh interpreter (:data:`WORKER_CODE`: what
multiprocessing's "spawn" does, without re-importing the caller's main module, so a script that calls
:func:`run_bench` needs no ``if __name__ == "__main__"`` guard). Nothing of the parent's memory is
shared or inherited: its peak RSS (VmHWM, see :func:`peak_rss_mb`) and, on an NVIDIA
GPU, the VRAM NVML attributes to its pid are that configuration's alone. Requests arrive one at a
time over a pair of pipes (pickled, multiprocessing's Connection); every timestamp is taken here,
next to the model, so the pipe adds nothing to what is measured.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterator

from ..eval import MCItem, bits_per_byte, score_items
from ..runtime import Ensemble, GenerationConfig
from ..runtime.generation import default_meter
from .targets import Configuration, open_model, variant


def piece_bits_per_byte(backend, pieces: list[str]):
    """How bench scores a single model's text: each piece in one window from BOS (the run checks that every
    piece fits the context, so the window never slides). Returns eval's BitsPerByte."""
    ctx = backend.context_length
    return bits_per_byte(backend, pieces, max_length=ctx, stride=max(1, ctx // 2))


# --- memory -------------------------------------------------------------------------------------

def rss_mb() -> float | None:
    """Resident set size of this process now (MB)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - psutil is a core dependency; be robust anyway
        return None


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process (MB): Linux's VmHWM, else ``ru_maxrss``.

    VmHWM belongs to the address space, which ``exec`` replaces; ``ru_maxrss`` survives ``exec`` on
    Linux, so a worker forked from a large parent would report the parent's peak.
    """
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows: the working set's peak
        import psutil

        return getattr(psutil.Process().memory_info(), "peak_wset", 0) / 2**20 or None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


class VramProbe:
    """GPU memory NVML attributes to this process, sampled after each request; None without NVML or a GPU."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._nvml: Any = None
        self._handles: list = []
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - not installed, no driver, no GPU: VRAM stays null
            self._nvml = None

    def sample(self) -> None:
        if self._nvml is None:
            return
        used, pid = 0.0, os.getpid()
        for h in self._handles:
            for query in (self._nvml.nvmlDeviceGetComputeRunningProcesses, self._nvml.nvmlDeviceGetGraphicsRunningProcesses):
                try:
                    procs = query(h)
                except Exception:  # noqa: BLE001
                    continue
                used += sum((p.usedGpuMemory or 0) for p in procs if p.pid == pid) / 2**20
        self.peak_mb = max(self.peak_mb or 0.0, used)


# --- what is measured: a backend or an ensemble, behind the same three calls -----------------------

class BackendSubject:
    """A single model (a bundle member alone, a baseline, a model argument)."""

    def __init__(self, config: Configuration):
        if config.kind == "member":
            ens = Ensemble.load(config.path)
            ens = variant(ens, ens.spec.strategy, ens.spec.strategy_options, config.threads)  # threads set
            self.backend = ens.members[config.member].open()  # checks its files against model.json first
        else:
            self.backend = open_model(config.path, config.threads)

    def fits(self, pieces: list[str]) -> list[bool]:
        b = self.backend
        return [len(b.prefix_ids) + len(b.tokenize(p)) <= b.context_length for p in pieces]

    def quality(self, pieces: list[str], items: list[MCItem]) -> dict[str, Any]:
        bpb = piece_bits_per_byte(self.backend, pieces)
        mc = score_items(self.backend, items, max_length=self.backend.context_length) if items else None
        return {"nll_nats": bpb.nll_nats, "n_bytes": bpb.n_bytes, "mc_correct": sum(mc.item_correct) if mc else 0,
                "mc_items": mc.n_items if mc else 0, "mc_item_correct": list(mc.item_correct) if mc else [],
                "fallbacks": 0}

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[tuple[str, dict | None]]:
        for chunk in self.backend.generate(prompt, cfg, stream=True):
            final = chunk.final
            yield chunk.text, None if final is None else {"usage": final.usage, "answer_tokens": len(final.tokens),
                                                          "fallbacks": 0, "decoders": None}

    def close(self) -> None:
        self.backend.close()


class EnsembleSubject:
    """A bundle under one strategy."""

    def __init__(self, config: Configuration):
        self.ens = variant(Ensemble.load(config.path), config.strategy, config.strategy_options or {}, config.threads)
        self.strategy = config.strategy

    def fits(self, pieces: list[str]) -> list[bool]:
        return [True] * len(pieces)  # its members are the member configurations: they check

    def quality(self, pieces: list[str], items: list[MCItem]) -> dict[str, Any]:
        nll, n_bytes, fallbacks = 0.0, 0, 0
        for piece in pieces:
            r = self.ens.score(piece)
            nll -= r.logprob
            n_bytes += len(piece.encode("utf-8"))
            fallbacks += len(r.fallbacks)
        item_correct = []
        for item in items:
            r = self.ens.choose(item.context, item.choices)
            item_correct.append(int(r.choice == item.answer))
            fallbacks += len(r.fallbacks)
        return {"nll_nats": nll, "n_bytes": n_bytes, "mc_correct": sum(item_correct), "mc_items": len(items),
                "mc_item_correct": item_correct, "fallbacks": fallbacks}

    def _answer_tokens(self, resp) -> int:
        if self.strategy == "route":  # one member generated the answer: its own count
            return resp.usage.completion_tokens
        with self.ens.use(resp.members[0]) as b:  # cascade / vote: usage sums every member that ran
            return len(b.tokenize(resp.text)) if resp.text else 0

    def _decoders(self, resp) -> list[str]:
        """The members that decoded tokens for this answer: route's answering member and mixture's mixed members
        (``resp.members``), every vote candidate's author, every cascade level that ran (not only the winner)."""
        if self.strategy == "vote":
            return list(resp.details.get("candidates") or resp.members)
        if self.strategy == "cascade":
            return [r["member"] for r in resp.details.get("levels", []) if "confidence" in r] or list(resp.members)
        return list(resp.members)

    def stream(self, prompt: str, cfg: GenerationConfig) -> Iterator[tuple[str, dict | None]]:
        for chunk in self.ens.generate(prompt, cfg, stream=True):
            final = chunk.final
            yield ("" if chunk.restart else chunk.text), None if final is None else {
                "usage": final.usage, "answer_tokens": self._answer_tokens(final), "fallbacks": len(final.fallbacks),
                "decoders": self._decoders(final)}

    def close(self) -> None:
        self.ens.close()


SUBJECTS: dict[str, Callable[[Configuration], Any]] = {"member": BackendSubject, "baseline": BackendSubject,
                                                       "model": BackendSubject, "ensemble": EnsembleSubject}


# --- requests -----------------------------------------------------------------------------------

def generate(subject, vram: VramProbe, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One greedy streamed request: own timestamps per text chunk, and energy over the whole request."""
    cfg = GenerationConfig(max_tokens=max_tokens, temperature=0.0, seed=0)
    meter = default_meter()
    arrivals: list[float] = []
    final: dict | None = None
    token = meter.start()
    t0 = time.perf_counter()
    for text, fin in subject.stream(prompt, cfg):
        if text:
            arrivals.append(time.perf_counter() - t0)
        final = fin or final
    latency = time.perf_counter() - t0
    measurement = meter.stop(token)
    vram.sample()
    u = final["usage"]
    return {"latency_s": latency, "ttft_s": arrivals[0] if arrivals else latency, "usage_ttft_s": u.ttft_s,
            "usage_tokens_per_s": u.tokens_per_s, "prompt_tokens": u.prompt_tokens,
            "truncated_tokens": u.truncated_tokens, "answer_tokens": final["answer_tokens"],
            "gaps_s": [b - a for a, b in zip(arrivals, arrivals[1:])], "joules": measurement.joules,
            "energy_source": measurement.source, "usage_joules": u.joules, "fallbacks": final["fallbacks"],
            "decoders": final["decoders"]}


def quality(subject, vram: VramProbe, data: dict[str, tuple[list[str], list]]) -> dict[str, Any]:
    out = {d: subject.quality(pieces, [MCItem(*i) for i in items]) for d, (pieces, items) in data.items()}
    vram.sample()
    return out


HANDLERS: dict[str, Callable[..., Any]] = {
    "fits": lambda s, v, pieces: s.fits(pieces),
    "quality": quality,
    "generate": generate,
    "memory": lambda s, v: {"peak_rss_mb": peak_rss_mb(), "rss_mb": rss_mb(), "vram_peak_mb": v.peak_mb},
}


def _describe(e: BaseException) -> str:
    from ..errors import EdgeDownscaleError

    return str(e) if isinstance(e, EdgeDownscaleError) else f"{type(e).__name__}: {e}"


class Duplex:
    """Two one-way pipe ends as one connection (``send``, ``recv``, ``poll``, ``close``)."""

    def __init__(self, read_fd: int, write_fd: int):
        from multiprocessing.connection import Connection

        self.r = Connection(read_fd, writable=False)
        self.w = Connection(write_fd, readable=False)

    def send(self, obj: Any) -> None:
        self.w.send(obj)

    def recv(self) -> Any:
        return self.r.recv()

    def poll(self, timeout: float) -> bool:
        return self.r.poll(timeout)

    def close(self) -> None:
        self.r.close()
        self.w.close()


def serve(conn, config: dict) -> None:
    """The worker's main loop: open the configuration, then answer ``(command, args)`` until "close"."""
    started = {"rss_before_load_mb": rss_mb()}
    vram = VramProbe()
    try:
        c = Configuration(**config)
        t0 = time.perf_counter()
        subject = SUBJECTS[c.kind](c)
        started["load_s"] = time.perf_counter() - t0
        started["rss_after_load_mb"] = rss_mb()
        vram.sample()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", _describe(e)))
        return
    conn.send(("ok", started))
    try:
        while True:
            try:
                command, args = conn.recv()
            except (EOFError, KeyboardInterrupt):
                break
            if command == "close":
                break
            try:
                result = HANDLERS[command](subject, vram, *args)
            except Exception as e:  # noqa: BLE001
                conn.send(("error", _describe(e)))
                continue
            conn.send(("ok", result))
    finally:
        subject.close()
        conn.close()



# What a worker interpreter runs (``python -c WORKER_CODE READ_FD WRITE_FD``; not ``-m``: the package
# imports this module first, which runpy warns about).
WORKER_CODE = "from edge_downscale.bench.worker import main; main()"


def main(argv: list[str] | None = None) -> None:
    """Serve on the pipe fds in ``argv`` (default ``sys.argv[1:]``); the configuration is the first message."""
    read_fd, write_fd = (int(a) for a in (argv or sys.argv[1:]))
    conn = Duplex(read_fd, write_fd)
    serve(conn, conn.recv())
