"""Load benchmark of `edge-downscale serve` on loopback, beside llama-cpp-python's own server.

    .venv/bin/python benchmarks/serve_load.py [--bundle demo-bundle] [--llama-deps DIR] [--max-tokens 32]

Streaming chat clients (greedy, ``max_tokens`` each) send held-out prompts of the demo domains:

* **one model**: N = 1, 4, 16 concurrent clients against one member of the bundle served by us
  (``model`` = the member) and the same GGUF served by ``python -m llama_cpp.server`` (same
  ``n_ctx``, ``n_threads``), the two runs interleaved level by level (the order alternates).
  Per run: requests/s, tokens/s, TTFT and latency p50/p95/p99, errors, wrong replies (a reply
  that differs from that server's single-client greedy reply for its prompt), peak RSS of the
  server process (sampled every 50 ms) against ``--memory-budget-mb``.
* **routed**: the three-member bundle (each member on 1 thread, so two can decode at once on
  2 cores) under mixed-domain traffic, beside one member (on every core) serving all of it.

llama-cpp-python's server needs fastapi, sse-starlette, starlette-context and pydantic-settings,
which are not in this project's locks: install them into a separate directory and pass it,
``pip install --target /tmp/llama-server-deps fastapi sse-starlette starlette-context pydantic-settings``.
Bounded: a few requests per level, each with a timeout, and ``--max-seconds`` for the whole run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402

OURS = """
import sys
from edge_downscale.runtime import Ensemble
from edge_downscale.serve import ServeConfig, serve
bundle, port, threads, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ens = Ensemble.load(bundle)
for m in ens.members.values():  # the benchmark sets the threads per member (the bundle's own otherwise)
    m.spec.options["n_threads"] = threads
serve(ens, ServeConfig(port=port, memory_budget_mb=budget, queue_size=64, max_tokens_limit=512), log=lambda m: None)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on a free loopback port; ``rss_peak`` while sampling."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None):
        self.name, self.port = name, free_port()
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.ps = psutil.Process(self.proc.pid)
        self._peak, self._stop = 0, threading.Event()

    def wait_up(self, path: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.base + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start in {timeout} s")

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def sample(self):
        self._peak, self._stop = self.rss_mb(), threading.Event()

        def loop():
            while not self._stop.wait(0.05):
                try:
                    self._peak = max(self._peak, self.rss_mb())
                except psutil.Error:
                    return
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        return t

    def peak(self) -> float:
        self._stop.set()
        return self._peak

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def chat(base: str, model: str, prompt: str, max_tokens: int, timeout: float) -> dict:
    """One streamed greedy chat request: text, TTFT, latency, completion tokens, answering member."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, pieces, usage, members, n_chunks = None, [], None, None, 0
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=timeout) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {r.read()[:200]!r}"}
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    break
                obj = json.loads(line[6:])
                if "error" in obj:
                    return {"error": str(obj["error"])[:200]}
                for choice in obj.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        ttft = ttft if ttft is not None else time.perf_counter() - t0
                        pieces.append(piece)
                        n_chunks += 1
                usage = obj.get("usage") or usage
                members = (obj.get("ensemble") or {}).get("members") or members
    except (httpx.HTTPError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"[:200]}
    tokens = usage["completion_tokens"] if usage else n_chunks
    return {"text": "".join(pieces), "ttft_s": ttft, "latency_s": time.perf_counter() - t0, "tokens": tokens,
            "members": members, "energy": (usage or {}).get("energy")}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def load(server: Server, model: str, prompts: list[str], clients: int, n_requests: int, max_tokens: int,
         reference: dict[str, str] | None, timeout: float) -> dict:
    """``clients`` threads sending ``n_requests`` requests in all (round-robin over the prompts)."""
    jobs = [prompts[i % len(prompts)] for i in range(n_requests)]
    results: list = [None] * n_requests
    nxt, lock = iter(range(n_requests)), threading.Lock()
    barrier = threading.Barrier(clients)

    def client():
        barrier.wait()
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            results[i] = chat(server.base, model, jobs[i], max_tokens, timeout)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    server.sample()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    peak = server.peak()
    ok = [(p, r) for p, r in zip(jobs, results) if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    wrong = sum(1 for p, r in ok if reference is not None and r["text"] != reference.get(p))
    lat = [r["latency_s"] for _, r in ok]
    ttft = [r["ttft_s"] for _, r in ok if r["ttft_s"] is not None]
    answered: dict[str, int] = {}
    for _, r in ok:
        for m in r["members"] or []:
            answered[m] = answered.get(m, 0) + 1
    return {"server": server.name, "model": model, "clients": clients, "requests": n_requests, "seconds": wall,
            "errors": len(errors), "error_samples": errors[:3], "wrong": wrong,
            "req_s": len(ok) / wall, "tok_s": sum(r["tokens"] for _, r in ok) / wall,
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95),
            "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95), "latency_p99_s": pct(lat, 99),
            "rss_peak_mb": peak, "answered_by": answered,
            "joules": sum((r["energy"] or {}).get("joules") or 0 for _, r in ok),
            "replies": {p: r["text"] for p, r in ok} if reference is None else None}


def find_bundle(arg: str, log) -> Path:
    for cand in (Path(arg), Path("/tmp/demo-bundle")):
        if (cand / "ensemble.json").is_file():
            return cand
    from edge_downscale._io import cache_dir

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from runtime_ensemble import demo_bundle

    out = cache_dir("bench") / "serve-demo-bundle"
    if not (out / "ensemble.json").is_file():
        log(f"{arg} not found: building the SmolLM2 demo bundle into {out} (once)")
        demo_bundle(out, n_threads=1, log=log)
    return out


def held_out(n_per_domain: int, chars: int) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from runtime_ensemble import held_out_prompts

    return [p for _, p in held_out_prompts(n_per_domain, chars)]


def row(r: dict) -> list[str]:
    f = lambda v, k=1e3: "-" if v is None else f"{v * k:.0f}"  # noqa: E731 - seconds -> ms
    return [r["server"], str(r["clients"]), str(r["requests"]), str(r["errors"]), str(r["wrong"]),
            f"{r['req_s']:.2f}", f"{r['tok_s']:.1f}", f(r["ttft_p50_s"]), f(r["ttft_p95_s"]), f(r["latency_p50_s"]),
            f(r["latency_p95_s"]), f(r["latency_p99_s"]), f"{r['rss_peak_mb']:.0f}"]


HEADER = ["server", "N", "requests", "errors", "wrong", "req/s", "tok/s", "TTFT p50 ms", "TTFT p95 ms",
          "latency p50 ms", "p95 ms", "p99 ms", "peak RSS MB"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="demo-bundle", help="a SmolLM2 bundle (make demo); built if missing")
    ap.add_argument("--member", default=None, help="the member of the one-model comparison (default: the first)")
    ap.add_argument("--levels", default="1,4,16", help="concurrent clients per run")
    ap.add_argument("--requests", type=int, default=16, help="requests per run at N > 1 (N=1: one per prompt)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-chars", type=int, default=200)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (one-model runs)")
    ap.add_argument("--memory-budget-mb", type=float, default=1024.0)
    ap.add_argument("--llama-deps", default="/tmp/llama-server-deps",
                    help="a --target directory holding llama_cpp.server's extra dependencies")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--max-seconds", type=float, default=450.0, help="skip what is left after this long")
    ap.add_argument("--out", default=str(ROOT / "results" / "serve_load.json"))
    args = ap.parse_args()
    results_note = ("llama_cpp.server runs with --interrupt_requests False: by default a new request interrupts the "
                    "one streaming, which cuts replies short under concurrency")
    t_start = time.time()
    log = lambda m: print(f"[{time.time() - t_start:5.0f} s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    bundle = find_bundle(args.bundle, log)
    spec = json.loads((bundle / "ensemble.json").read_text())
    member = args.member or spec["members"][0]["name"]
    mspec = next(m for m in spec["members"] if m["name"] == member)
    gguf = (bundle / mspec["path"] / "model.gguf").resolve()
    n_ctx = int(mspec.get("options", {}).get("n_ctx", 2048))
    prompts = held_out(3, args.prompt_chars)
    levels = [int(x) for x in args.levels.split(",")]
    py = sys.executable
    ours = Server("edge-downscale serve", [py, "-c", OURS, str(bundle), "{port}", str(args.threads),
                                           str(args.memory_budget_mb)])
    theirs = Server("llama_cpp.server", [py, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", member,
                                         "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", str(n_ctx),
                                         "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                                         "--interrupt_requests", "False", "--verbose", "False"],
                    env={"PYTHONPATH": args.llama_deps})
    results: dict = {"bundle": str(bundle), "member": member, "gguf": str(gguf),
                     "quantization": json.loads((gguf.parent / "model.json").read_text()).get("quantization"),
                     "n_ctx": n_ctx, "threads": args.threads, "max_tokens": args.max_tokens, "prompts": len(prompts),
                     "memory_budget_mb": args.memory_budget_mb, "cpu_count": os.cpu_count(), "one_model": [],
                     "routed": [], "skipped": [], "note": results_note}
    try:
        ours.wait_up("/health")
        theirs.wait_up("/v1/models")
        log("both servers up")
        refs: dict[str, dict[str, str]] = {}
        for s in (ours, theirs):  # warm up: load the model, touch its pages
            chat(s.base, member, prompts[0], 4, args.timeout)
            refs[s.name] = load(s, member, prompts, 1, len(prompts), args.max_tokens, None, args.timeout)["replies"]
        results["ours_equals_theirs"] = sum(refs[ours.name].get(p) == refs[theirs.name].get(p) for p in prompts)
        for i, n in enumerate(levels):
            for s in ((ours, theirs) if i % 2 == 0 else (theirs, ours)):
                if time.time() - t_start > args.max_seconds:
                    results["skipped"].append(f"{s.name} N={n}")
                    continue
                count = len(prompts) if n == 1 else max(args.requests, n)
                r = load(s, member, prompts, n, count, args.max_tokens, refs[s.name], args.timeout)
                r.pop("replies")
                results["one_model"].append(r)
                log(" | ".join(row(r)))
    finally:
        theirs.close()
    # the routed bundle (1 thread per member) beside one member on every core, mixed-domain traffic
    routed = Server("edge-downscale serve (routed, 1 thread/member)", [py, "-c", OURS, str(bundle), "{port}", "1",
                                                                        str(args.memory_budget_mb)])
    try:
        routed.wait_up("/health")
        log("routed server up")
        name = bundle.resolve().name
        for p in prompts:  # load every member it routes to
            chat(routed.base, name, p, 2, args.timeout)
        n_mixed = min(6, max(levels))
        if time.time() - t_start < args.max_seconds:
            ref = load(routed, name, prompts, 1, len(prompts), args.max_tokens, None, args.timeout)["replies"]
            r = load(routed, name, prompts, n_mixed, max(args.requests, n_mixed), args.max_tokens, ref, args.timeout)
            r.pop("replies")
            r["loaded_mb"] = httpx.get(routed.base + "/health").json()["resident_mb"]
            results["routed"].append(r)
            log(" | ".join(row(r)))
            one_ref = load(ours, member, prompts, 1, len(prompts), args.max_tokens, None, args.timeout)["replies"]
            r = load(ours, member, prompts, n_mixed, max(args.requests, n_mixed), args.max_tokens, one_ref, args.timeout)
            r.pop("replies")
            r["server"] = f"edge-downscale serve (one member, {args.threads} threads)"
            results["routed"].append(r)
            log(" | ".join(row(r)))
        else:
            results["skipped"].append("routed")
    finally:
        routed.close()
        ours.close()
    by = {(r["server"], r["clients"]): r for r in results["one_model"]}
    results["ratios"] = {str(n): {"throughput_ours_over_theirs": by[(ours.name, n)]["tok_s"] / by[(theirs.name, n)]["tok_s"],
                                  "p99_ours_s": by[(ours.name, n)]["latency_p99_s"],
                                  "p99_theirs_s": by[(theirs.name, n)]["latency_p99_s"]}
                         for n in levels if (ours.name, n) in by and (theirs.name, n) in by}
    results["seconds"] = time.time() - t_start
    print(f"\none model ({member}: {gguf.name}, n_ctx {n_ctx}, {args.threads} threads), {len(prompts)} held-out "
          f"prompts, greedy, {args.max_tokens} tokens; budget {args.memory_budget_mb:.0f} MB")
    print(markdown_table([HEADER] + [row(r) for r in results["one_model"]]))
    for n, q in results["ratios"].items():
        print(f"N={n}: ours/theirs tokens/s = {q['throughput_ours_over_theirs']:.2f}; p99 {q['p99_ours_s']:.2f} s vs "
              f"{q['p99_theirs_s']:.2f} s")
    print(f"single-client greedy replies equal across the two servers: {results['ours_equals_theirs']}/{len(prompts)}")
    if results["routed"]:
        print("\nmixed-domain traffic: the routed bundle vs one member serving all of it")
        print(markdown_table([HEADER + ["answered by"]] + [row(r) + [json.dumps(r["answered_by"])]
                                                            for r in results["routed"]]))
    if results["skipped"]:
        print(f"skipped (over --max-seconds): {', '.join(results['skipped'])}")
    write_result(args.out, results)
    print(f"\nwrote {args.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
