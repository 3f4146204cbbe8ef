"""The run: start one worker per configuration, measure quality, then speed and energy in interleaved rounds.

Order of work: plan the configurations and verify every bundle (:mod:`.targets`), read the held-out
data, cut it into pieces that fit every model's window, start the workers (all at once, each loads
its configuration), score the pieces and the multiple-choice items on each configuration, then run
``warmup`` + ``rounds`` rounds of one greedy request per configuration (the order rotated by one
each round) and finally collect each worker's peak memory. Only one request runs at a time. The
memory bandwidth behind the roofline column is measured first, before any model is resident.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import BenchError
from ..eval import MCItem
from ..runtime.roofline import memory_bandwidth
from .config import BenchConfig
from .report import check_out, write_report
from .summary import add_ratios, record
from .targets import Configuration, eval_data as load_eval_data, plan_configurations
from .worker import WORKER_CODE, Duplex

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding edge_downscale/, for the workers

DEFAULT_OUT = "bench-report"
MAX_SPLITS = 8  # rounds of halving pieces that do not fit some model's window
BANDWIDTH_REPEATS = 5  # passes of the bandwidth measurement: the best counts
_SPACE = re.compile(r"\s")


def _cut(text: str, limit: int) -> int:
    """Where to cut ``text`` at most ``limit`` characters in: after the last whitespace of its second half."""
    if len(text) <= limit:
        return len(text)
    ws = [m.end() for m in _SPACE.finditer(text, limit // 2, limit)]
    return ws[-1] if ws else limit


def split_pieces(texts: Sequence[str], piece_chars: int, max_bytes: int) -> list[str]:
    """Consecutive pieces of at most ``piece_chars`` characters (cut at whitespace) of ``texts``, in order,
    until ``max_bytes`` UTF-8 bytes (at least one piece); joined, a text's pieces are the text."""
    pieces: list[str] = []
    total = 0
    for text in texts:
        while text:
            cut = _cut(text, piece_chars)
            piece, text = text[:cut], text[cut:]
            size = len(piece.encode("utf-8"))
            if pieces and total + size > max_bytes:
                return pieces
            pieces.append(piece)
            total += size
    return pieces


def halve(piece: str) -> list[str]:
    cut = _cut(piece, max(1, len(piece) // 2 + len(piece) // 8))
    return [p for p in (piece[:cut], piece[cut:]) if p]


def make_prompts(data: dict[str, tuple[Sequence[str], Sequence[MCItem]]], config: BenchConfig) -> list[dict[str, str]]:
    """``n_prompts`` prompts (the first ``prompt_chars`` characters of held-out texts, cut at whitespace),
    taken round-robin across domains, the i-th text of each domain before the (i+1)-th of any."""
    queues = {d: [t for t in texts if t.strip()] for d, (texts, _) in data.items()}
    prompts: list[dict[str, str]] = []
    i = 0
    while len(prompts) < config.n_prompts and any(i < len(q) for q in queues.values()):
        for d, q in queues.items():
            if i < len(q) and len(prompts) < config.n_prompts:
                text = q[i]
                prompts.append({"domain": d, "text": text[:_cut(text, config.prompt_chars)]})
        i += 1
    return prompts


def device_bandwidth(threads: int | None, mib: int) -> dict[int, float | None]:
    """{threads: read bandwidth in bytes/s} measured now with one thread and with ``threads`` (None: one per CPU).

    The roofline uses the second: with ``--threads`` the backends run that many threads; without, they
    pick their own (llama.cpp half the CPUs, onnxruntime the physical cores), never more than one per
    CPU, so every CPU reading at once gives the device's ceiling. None where the memory ran out.
    """
    out: dict[int, float | None] = {}
    for n in sorted({1, threads or os.cpu_count() or 1}):
        try:
            out[n] = memory_bandwidth(n, mib=mib, repeats=BANDWIDTH_REPEATS)
        except MemoryError:
            out[n] = None
    return out


def _start_worker(config: Configuration) -> tuple[Duplex, subprocess.Popen]:
    """A fresh interpreter running :mod:`.worker`, and the pipes to it (its configuration already sent)."""
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    paths = [str(PACKAGE_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # the workers import this very package
    proc = subprocess.Popen([sys.executable, "-c", WORKER_CODE, str(to_child), str(from_child)],
                            pass_fds=(to_child, from_child), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    os.close(to_child)
    os.close(from_child)
    conn = Duplex(to_parent, from_parent)
    conn.send(config.to_dict())
    return conn, proc


class Workers:
    """One worker process per configuration; :meth:`call` sends a request and waits for its answer."""

    def __init__(self, configs: Sequence[Configuration], timeout_s: float):
        self.timeout_s = timeout_s
        self.conns: dict[str, Duplex] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, dict] = {}
        try:
            for c in configs:  # all started first: their loading overlaps
                self.conns[c.name], self.procs[c.name] = _start_worker(c)
            for c in configs:
                self.started[c.name] = self._answer(c.name, "start")
        except BaseException:
            self.close()
            raise

    def _answer(self, name: str, what: str) -> Any:
        conn = self.conns[name]
        if not conn.poll(self.timeout_s):
            raise BenchError(f"{name}: no answer to {what} within {self.timeout_s:.0f} s (raise --timeout-s?)")
        try:
            status, value = conn.recv()
        except (EOFError, ConnectionError):
            code = self.procs[name].wait(10)
            raise BenchError(f"{name}: the worker process died during {what} (exit code {code}); "
                             "out of memory?") from None
        if status == "error":
            raise BenchError(f"{name}: {value}")
        return value

    def call(self, name: str, command: str, *args: Any) -> Any:
        self.conns[name].send((command, args))
        return self._answer(name, command)

    def close(self) -> None:
        for name, conn in self.conns.items():
            try:
                conn.send(("close", ()))
            except (OSError, ValueError):
                pass
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for conn in self.conns.values():
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fit_pieces(pool: Workers, names: Sequence[str], pieces: dict[str, list[str]]) -> dict[str, list[str]]:
    """Halve, for every configuration alike, each piece some model cannot score in one window."""
    for _ in range(MAX_SPLITS):
        flat = [(d, p) for d, ps in pieces.items() for p in ps]
        ok = [True] * len(flat)
        for name in names:
            ok = [a and b for a, b in zip(ok, pool.call(name, "fits", [p for _, p in flat]))]
        if all(ok):
            return pieces
        out: dict[str, list[str]] = {d: [] for d in pieces}
        for (d, p), fits in zip(flat, ok):
            out[d] += [p] if fits else halve(p)
        pieces = out
    raise BenchError(f"held-out pieces still exceed a model's context after {MAX_SPLITS} halvings; "
                     "lower --piece-chars or raise the models' n_ctx")


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", desc="bench", disable=not progress, leave=False)


def run_bench(targets: Sequence[Any], config: BenchConfig | None = None, *,
              baselines: Sequence[Any] = (), eval_data: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Measure ``targets`` (bundles, GGUF files, export directories) and ``baselines`` on this device.

    ``targets`` and ``baselines``: paths, or ``(label, path)`` pairs (the label names the rows); the
    first baseline is the reference of every ratio (else the first configuration). ``eval_data``: a directory of ``<domain>.jsonl`` instead of the
    first bundle's ``eval/``. Writes report.json, report.md and plots to ``out`` (default
    ``bench-report/``) and returns the report.
    """
    config = config or BenchConfig()
    out = Path(out if out is not None else DEFAULT_OUT)
    check_out(out, config.overwrite)
    t_start = time.perf_counter()
    configs, bundles, skipped = plan_configurations(targets, baselines, config.threads)
    data, source = load_eval_data(bundles, eval_data)
    pieces = {d: split_pieces(texts, config.piece_chars, config.max_bytes) for d, (texts, _) in data.items()}
    items = {d: [(i.context, list(i.choices), i.answer) for i in its[: config.mc_items]] for d, (_, its) in data.items()}
    prompts = make_prompts(data, config)
    names = [c.name for c in configs]
    singles = [c.name for c in configs if c.kind != "ensemble"]
    steps = len(configs) * (2 + config.warmup + config.rounds)
    bandwidth = device_bandwidth(config.threads, config.bandwidth_mib)  # before the workers: nothing else runs
    roofline_threads = max(bandwidth)
    with _bar(steps, progress) as bar, Workers(configs, config.timeout_s) as pool:
        bar.set_postfix_str("loading")
        bar.update(len(configs))
        pieces = fit_pieces(pool, singles, pieces)
        quality = {}
        for name in names:
            bar.set_postfix_str(f"quality {name}")
            quality[name] = pool.call(name, "quality", {d: (pieces[d], items[d]) for d in data})
            bar.update(1)
        rounds: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(config.warmup + config.rounds):
            prompt = prompts[r % len(prompts)]["text"]
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:  # rotate: no configuration always goes first
                bar.set_postfix_str(f"{'warmup' if r < config.warmup else f'round {r - config.warmup + 1}'} {name}")
                answer = pool.call(name, "generate", prompt, config.max_tokens)
                if r >= config.warmup:
                    rounds[name].append({"round": r - config.warmup, "prompt": r % len(prompts), **answer})
                bar.update(1)
        memory = {name: pool.call(name, "memory") for name in names}
        started = pool.started
    records = [record(c, quality[c.name], rounds[c.name], memory[c.name], started[c.name], bandwidth[roofline_threads])
               for c in configs]
    reference = next((c.name for c in configs if c.kind == "baseline"), configs[0].name)
    add_ratios(records, reference)
    report = {
        "bench": {"config": config.to_dict(), "targets": [str(t[1] if isinstance(t, tuple) else t) for t in targets],
                  "baselines": [str(b[1] if isinstance(b, tuple) else b) for b in baselines], "reference": reference,
                  "isolation": "one spawned worker process per configuration; requests sent one at a time",
                  "eval_data": {"source": source, "domains": {d: {"pieces": len(pieces[d]),
                                                                  "bytes": sum(len(p.encode("utf-8")) for p in pieces[d]),
                                                                  "mc_items": len(items[d])} for d in data}},
                  "prompts": prompts, "skipped": skipped, "seconds": time.perf_counter() - t_start},
        "device": {"bandwidth_gb_s": {str(n): bw and bw / 1e9 for n, bw in bandwidth.items()},
                   "roofline_threads": roofline_threads, "bandwidth_mib": config.bandwidth_mib,
                   "bandwidth_method": f"best of {BANDWIDTH_REPEATS} passes of numpy int64 sums, one array per "
                                       f"thread ({config.bandwidth_mib} MiB in all), the threads released at once"},
        "records": records,
    }
    report["bench"]["notes"] = write_report(out, report)
    return report
