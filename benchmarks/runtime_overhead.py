"""Runtime overhead: our generation loop against the libraries it wraps, on SmolLM2-135M (CPU).

    .venv/bin/python benchmarks/runtime_overhead.py            # ~8 min on 2 cores
    .venv/bin/python benchmarks/runtime_overhead.py --quick    # smoke run, ~2 min

In one run, on the same prompt (``PROMPT_CHARS`` characters of ``textwrap.TextWrapper``'s source)
and the same number of greedy tokens:

1. llama.cpp: ``LlamaCppBackend.generate`` vs raw ``llama_cpp.Llama.generate`` on the same GGUF
   (the SmolLM2 Q4_1 teacher), same threads and context. Target: ours >= 0.95x.
2. ONNX: ``OnnxBackend.generate`` vs optimum's ``ORTModelForCausalLM.generate`` on the same
   ``model.onnx`` (fp32 and int8). Target: ours >= 2x. Also shown: our runtime before IOBinding
   (the same ``generate`` with the previous ``_decode``: numpy feeds, the KV cache and all logits
   copied to numpy each step), the same at a ~1000-token prompt, and, per loop, the onnxruntime
   time alone ("ORT-only": tokens / time inside ``session.run``), which bounds any Python loop.
3. Formats through our runtime: ONNX int8 / int4 vs GGUF Q8_0 / Q4_0, tokens/s and file sizes.
4. ``router_and_ensemble``: a marked place for router latency/accuracy and the ensemble
   concurrency test (not implemented here).

Decode tokens/s is ``(n - 1) / (t_last - t_first)`` between the first and the last generated
token on every side, so prompt processing is excluded; prefill tokens/s (prompt tokens / time to
the first token) is reported separately. Each comparison alternates its sides (A, B, A, B, ...)
and reports medians; ratios are medians of the per-round ratios. Both sides of a pair generate
the same number of tokens (ours stops at an end-of-turn token; the other side is then held to the
same count) and their greedy tokens are compared. Writes results/runtime_overhead.json.
"""
from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import sys
import textwrap
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from _exports import artifact_bytes, cached_exports  # noqa: E402
from edge_downscale import __version__  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402

MODEL = "smollm2-135m"
PROMPT_CHARS = 700
LONG_PROMPT_CHARS = 4000  # ~1000 tokens: where the KV cache's numpy round trip starts to cost
TARGETS = {"llamacpp": 0.95, "onnx": 2.0}


def fixed_prompt(chars: int = PROMPT_CHARS) -> str:
    """Real text: the start of ``textwrap.TextWrapper``'s source (docstring, then code), whole lines."""
    src = inspect.getsource(textwrap.TextWrapper)  # ~14.7k characters
    return src[: src.rfind("\n", 0, chars) + 1]


def median(xs):
    return float(statistics.median(xs))


# --------------------------------------------------------------------------- one timed generation


def ours(backend, prompt: str, n_new: int) -> dict:
    """Our ``Backend.generate`` (greedy, unmetered): decode tok/s from its own usage."""
    gen = backend.generate(prompt, max_tokens=n_new, temperature=0.0, meter=None)
    u = gen.usage
    return {"tokens": gen.tokens, "prompt_tokens": u.prompt_tokens, "decode_tok_s": u.tokens_per_s,
            "prefill_tok_s": u.prompt_tokens / u.ttft_s, "finish": gen.finish_reason}


def raw_llama(llm, prompt_ids: list[int], n_new: int) -> dict:
    """llama-cpp-python's own greedy ``Llama.generate`` loop, cache reset first (no prefix reuse)."""
    llm.reset()
    tokens, t_first = [], None
    t0 = time.perf_counter()
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        tokens.append(int(tok))
        if t_first is None:
            t_first = time.perf_counter()
        if len(tokens) == n_new:
            break
    t_last = time.perf_counter()
    return {"tokens": tokens, "decode_tok_s": (len(tokens) - 1) / (t_last - t_first),
            "prefill_tok_s": len(prompt_ids) / (t_first - t0)}


class _Stamps:
    """A transformers streamer that timestamps every generated token (the first put is the prompt)."""

    def __init__(self):
        self.times, self.calls = [], 0

    def put(self, value):
        self.calls += 1
        if self.calls > 1:
            self.times.append(time.perf_counter())

    def end(self):
        pass


def optimum_generate(model, prompt_ids: list[int], n_new: int) -> dict:
    """optimum's ``ORTModelForCausalLM.generate``: greedy, exactly ``n_new`` tokens (EOS ignored)."""
    import torch

    ids = torch.tensor([prompt_ids])
    stamps = _Stamps()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                             do_sample=False, streamer=stamps, pad_token_id=model.config.eos_token_id)
    tokens = out[0, len(prompt_ids):].tolist()
    t = stamps.times
    return {"tokens": tokens, "decode_tok_s": (len(t) - 1) / (t[-1] - t[0]),
            "prefill_tok_s": len(prompt_ids) / (t[0] - t0)}


def previous_decode(self, prompt_ids: list[int]):
    """``OnnxBackend._decode`` before IOBinding, verbatim: numpy feeds every step, and every output
    (the whole KV cache, the logits of every prompt position) converted back to numpy."""
    from edge_downscale.runtime.generation import ContextOverflowError

    names = [o.name for o in self._session.get_outputs()]
    past = dict(self._past)
    step = np.asarray(prompt_ids, dtype=np.int64)[None, :]
    seen = 0
    while True:
        n = step.shape[1]
        if seen + n > self.context_length:
            raise ContextOverflowError(f"decoding past the context length {self.context_length}")
        feed = {"input_ids": step, **past}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = np.ones((1, seen + n), dtype=np.int64)
        if "position_ids" in self._inputs:
            feed["position_ids"] = np.arange(seen, seen + n, dtype=np.int64)[None, :]
        out = dict(zip(names, self._session.run(names, feed)))
        seen += n
        past = {k: out[k.replace("past_key_values", "present")] for k in past}
        token = yield np.asarray(out["logits"][0, -1], dtype=np.float32)
        step = np.array([[token]], dtype=np.int64)


def previous_generate(backend, prompt: str, n_new: int) -> dict:
    """:func:`ours` with the backend's ``_decode`` swapped for :func:`previous_decode`: the runtime before."""
    backend._decode = types.MethodType(previous_decode, backend)
    try:
        return ours(backend, prompt, n_new)
    finally:
        del backend._decode


class SessionClock:
    """Wraps an InferenceSession's run methods (on the instance) to time every call into onnxruntime."""

    def __init__(self, session):
        self.durations: list[float] = []
        for name in ("run", "run_with_iobinding"):
            setattr(session, name, self._timed(getattr(session, name)))

    def _timed(self, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.durations.append(time.perf_counter() - t0)
        return run

    def take(self) -> list[float]:
        out, self.durations = self.durations, []
        return out


# ---------------------------------------------------------------------------------- comparisons


class OtherLoad:
    """CPU used by *other* processes (in cores, averaged) between ``start`` and ``stop``; Linux /proc only.

    Timings on a shared 2-core machine are only comparable when nothing else runs: each round
    records this, and ``wait_quiet`` holds a round back until the machine is idle.
    """

    @staticmethod
    def _sample() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        return sum(vals) - vals[3] - vals[4], sum(vals), int(own[11]) + int(own[12])  # busy, total, ours (jiffies)

    def start(self) -> None:
        self._t0 = self._sample()

    def stop(self) -> float | None:
        t1 = self._sample()
        if self._t0 is None or t1 is None or t1[1] <= self._t0[1]:
            return None
        busy, total, own = (b - a for a, b in zip(self._t0, t1))
        return max(busy - own, 0) / total * (os.cpu_count() or 1)

    def wait_quiet(self, max_s: float, threshold: float = 0.15, window_s: float = 1.0) -> float | None:
        """Wait (up to ``max_s``) for a ``window_s`` window where others use < ``threshold`` cores."""
        deadline = time.monotonic() + max_s
        while True:
            self.start()
            time.sleep(window_s)
            load = self.stop()
            if load is None or load < threshold or time.monotonic() > deadline:
                return load


def interleave(sides: dict, rounds: int, warmup: int = 1, quiet_s: float = 0.0) -> dict[str, list[dict]]:
    """Run each side's zero-argument callable in turn, ``warmup`` + ``rounds`` times; keep the rounds.

    Every kept result records ``other_load``: the CPU (cores) other processes used meanwhile.
    ``quiet_s`` > 0 waits up to that long for an idle machine before each round.
    """
    out = {name: [] for name in sides}
    load = OtherLoad()
    for r in range(warmup + rounds):
        if quiet_s > 0 and r >= warmup:
            load.wait_quiet(quiet_s)
        for name, fn in sides.items():
            load.start()
            result = fn()
            result["other_load"] = load.stop()
            if r >= warmup:
                out[name].append(result)
    return out


def summarise(runs: dict[str, list[dict]], base: str) -> dict:
    """Median decode/prefill tok/s per side and, per side, the median per-round ratio to ``base``."""
    out = {}
    for name, rs in runs.items():
        out[name] = {"decode_tok_s": median([r["decode_tok_s"] for r in rs]),
                     "prefill_tok_s": median([r["prefill_tok_s"] for r in rs]),
                     "decode_tok_s_runs": [round(r["decode_tok_s"], 2) for r in rs],
                     "other_load_max": max((r["other_load"] or 0.0 for r in rs), default=None),
                     "tokens": len(rs[0]["tokens"])}
        for key in ("session_tok_s", "session_share"):
            if key in rs[0]:
                out[name][key] = median([r[key] for r in rs])
        if name != base:
            out[name]["ratio"] = median([r["decode_tok_s"] / b["decode_tok_s"] for r, b in zip(rs, runs[base])])
    return out


def compare_llamacpp(gguf: Path, prompt: str, n_new: int, rounds: int, threads: int, n_ctx: int,
                     quiet_s: float = 0.0) -> dict:
    import llama_cpp

    from edge_downscale.runtime.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(gguf, n_ctx=n_ctx, n_threads=threads)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads, verbose=False)
    ref = ours(backend, prompt, n_new)
    n = len(ref["tokens"])
    prompt_ids = backend.prompt_ids(prompt, n_new)[0]
    raw = raw_llama(llm, prompt_ids, n)
    runs = interleave({"ours": lambda: ours(backend, prompt, n_new), "raw": lambda: raw_llama(llm, prompt_ids, n)},
                      rounds, quiet_s=quiet_s)
    result = summarise(runs, base="raw")
    result["same_tokens"] = raw["tokens"] == ref["tokens"]
    result["prompt_tokens"] = len(prompt_ids)
    result["finish"] = ref["finish"]
    backend.close()
    llm.close()
    return result


def compare_onnx(art: Path, prompt: str, n_new: int, rounds: int, threads: int | None, with_plain: bool,
                 quiet_s: float = 0.0) -> dict:
    from optimum.onnxruntime import ORTModelForCausalLM

    from edge_downscale.artifacts import model_file
    from edge_downscale.runtime.onnx import OnnxBackend

    backend = OnnxBackend(art, n_threads=threads)
    opts = None
    if threads:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
    opt = ORTModelForCausalLM.from_pretrained(art, file_name=model_file(art).name, use_cache=True,
                                              provider="CPUExecutionProvider", session_options=opts)
    ours_clock, opt_clock = SessionClock(backend._session), SessionClock(opt.session)
    prompt_ids = backend.prompt_ids(prompt, n_new)[0]

    def with_session(fn, clock):
        def run():
            clock.take()
            r = fn()
            calls = clock.take()[1:]  # the first call is the prompt; then one call per token
            r["session_tok_s"] = len(calls) / sum(calls)
            r["session_share"] = r["decode_tok_s"] / r["session_tok_s"]
            return r
        return run

    first = ours(backend, prompt, n_new)
    n = len(first["tokens"])
    check = optimum_generate(opt, prompt_ids, n)
    sides = {"ours": with_session(lambda: ours(backend, prompt, n_new), ours_clock),
             "optimum": with_session(lambda: optimum_generate(opt, prompt_ids, n), opt_clock)}
    if with_plain:
        sides["plain"] = with_session(lambda: previous_generate(backend, prompt, n_new), ours_clock)
    runs = interleave(sides, rounds, quiet_s=quiet_s)
    result = summarise(runs, base="optimum")
    result["same_tokens"] = check["tokens"] == first["tokens"]
    result["prompt_tokens"] = len(prompt_ids)
    result["finish"] = first["finish"]
    backend.close()
    del opt
    return result


def compare_formats(onnx_arts: dict[str, Path], gguf_arts: dict[str, Path], prompt: str, n_new: int, rounds: int,
                    threads: int | None, n_ctx: int, quiet_s: float = 0.0) -> list[dict]:
    """ONNX int8 vs GGUF Q8_0 and ONNX int4 vs GGUF Q4_0, all through our runtime, pairwise interleaved."""
    from edge_downscale.runtime import open_artifact

    rows = []
    for oq, gq in (("int8", "q8_0"), ("int4", "q4_0")):
        if oq not in onnx_arts or gq not in gguf_arts:
            continue
        onnx_b = open_artifact(onnx_arts[oq], n_threads=threads)
        gguf_b = open_artifact(gguf_arts[gq], n_ctx=n_ctx, n_threads=threads)
        runs = interleave({"onnx": lambda: ours(onnx_b, prompt, n_new), "gguf": lambda: ours(gguf_b, prompt, n_new)},
                          rounds, quiet_s=quiet_s)
        s = summarise(runs, base="gguf")
        for fmt, quant, art in (("onnx", oq, onnx_arts[oq]), ("gguf", gq, gguf_arts[gq])):
            rows.append({"format": fmt, "quant": quant, "mb": artifact_bytes(art) / 1e6, **s[fmt],
                         "vs": f"gguf {gq}" if fmt == "onnx" else None})
        onnx_b.close()
        gguf_b.close()
    return rows


# ------------------------------------------------------------------------ router and ensemble


def router_and_ensemble(results: dict, args: argparse.Namespace) -> None:
    """Route accuracy/latency, routing overhead, 8-thread concurrency, cascade and vote on choices.

    The measurements live in ``benchmarks/runtime_ensemble.py`` (also runnable on its own); here
    they run in the same process, after the decode comparisons, and print with the rest.
    """
    from runtime_ensemble import ensemble_section, print_choices, print_section

    section = ensemble_section(results, quick=args.quick)
    print_section(section)
    print_choices(section["choices"])


# -------------------------------------------------------------------------------------- main


def fmt(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def tables(results: dict) -> str:
    """The comparisons as Markdown tables; "others" is the most CPU (cores) other processes took in a round."""
    rows = [["comparison", "side", "decode tok/s", "ratio", "target", "met", "prefill tok/s", "ORT-only tok/s",
             "tokens", "others"]]

    def row(label, side, r, target=None, key=None):
        ratio = "1" if "ratio" not in r else f"{r['ratio']:.2f}x"
        met = "" if target is None else ("yes" if r["ratio"] >= TARGETS[key] else "NO")
        return [label, side, fmt(r["decode_tok_s"]), ratio, target or "", met, fmt(r["prefill_tok_s"], ".0f"),
                fmt(r.get("session_tok_s")), str(r["tokens"]), fmt(r.get("other_load_max"), ".2f")]

    lc = results["llamacpp"]
    rows.append(row(f"llama.cpp {lc['gguf']}", "ours (LlamaCppBackend.generate)", lc["ours"],
                    f">= {TARGETS['llamacpp']}x", "llamacpp"))
    rows.append(row("", "raw llama_cpp.Llama.generate", lc["raw"]))
    for quant, r in results["onnx"].items():
        rows.append(row(f"ONNX {quant}", "ours (OnnxBackend.generate)", r["ours"], f">= {TARGETS['onnx']}x", "onnx"))
        if "plain" in r:
            rows.append(row("", "before: generate, numpy-feed _decode", r["plain"]))
        rows.append(row("", "optimum ORTModelForCausalLM.generate", r["optimum"]))
    for quant, r in results.get("onnx_long", {}).items():
        rows.append(row(f"ONNX {quant}, {r['prompt_tokens']}-token prompt", "ours (OnnxBackend.generate)", r["ours"]))
        if "plain" in r:
            rows.append(row("", "before: generate, numpy-feed _decode", r["plain"]))
        rows.append(row("", "optimum ORTModelForCausalLM.generate", r["optimum"]))
    out = [markdown_table(rows)]
    if results["formats"]:
        frows = [["format", "quant", "MB", "decode tok/s", "vs GGUF", "prefill tok/s", "tokens", "others"]]
        for r in results["formats"]:
            frows.append([r["format"], r["quant"], f"{r['mb']:.1f}", fmt(r["decode_tok_s"]),
                          f"{r['ratio']:.2f}x" if "ratio" in r else "1", fmt(r["prefill_tok_s"], ".0f"), str(r["tokens"]),
                          fmt(r.get("other_load_max"), ".2f")])
        out.append(markdown_table(frows))
    for extra in results.get("extra_tables", []):
        out.append(markdown_table(extra))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per generation (greedy)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads on every side (default: llama.cpp os.cpu_count(), onnxruntime its default)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--onnx", default="fp32,int8", help="ONNX quantisations for the optimum comparison")
    ap.add_argument("--long-tokens", type=int, default=32,
                    help="new tokens for the long-prompt ONNX comparison (first --onnx quantisation); 0 skips it")
    ap.add_argument("--no-plain", action="store_true", help="skip the previous (numpy-feed) ONNX loop")
    ap.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                    help="before each round wait up to S seconds for other processes to leave the CPUs idle")
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 tokens, 2 rounds, int8 only, no plain loop")
    ap.add_argument("--out", default="results/runtime_overhead.json")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.rounds, args.onnx, args.no_plain, args.long_tokens = 32, 2, "int8", True, 0
    onnx_quants = [q.strip() for q in args.onnx.split(",") if q.strip()]

    from edge_downscale.models import pull

    t_start = time.perf_counter()
    prompt = fixed_prompt()
    gguf = pull(MODEL)
    onnx_arts = cached_exports(MODEL, "onnx", sorted(set(onnx_quants) | {"int8", "int4"}))
    gguf_arts = cached_exports(MODEL, "gguf", "q8_0,q4_0")
    llama_threads = args.threads or os.cpu_count()
    results = {"version": __version__, "model": MODEL, "cpu_count": os.cpu_count(), "machine": platform.processor()
               or platform.machine(), "prompt_chars": len(prompt), "new_tokens": args.tokens, "rounds": args.rounds,
               "threads": args.threads, "quick": args.quick, "quiet_wait_s": args.quiet_wait, "targets": TARGETS}

    print(f"llama.cpp: ours vs raw on {gguf.name}, {args.tokens} tokens x {args.rounds} rounds", flush=True)
    results["llamacpp"] = {"gguf": gguf.name, **compare_llamacpp(gguf, prompt, args.tokens, args.rounds,
                                                                 llama_threads, args.n_ctx, args.quiet_wait)}
    results["onnx"] = {}
    for q in onnx_quants:
        print(f"ONNX {q}: ours vs optimum{'' if args.no_plain else ' vs the previous loop'}", flush=True)
        results["onnx"][q] = compare_onnx(onnx_arts[q], prompt, args.tokens, args.rounds, args.threads,
                                          with_plain=not args.no_plain, quiet_s=args.quiet_wait)
    if args.long_tokens and onnx_quants:
        q = onnx_quants[0]
        print(f"ONNX {q}, long prompt: ours vs optimum vs the previous loop, {args.long_tokens} tokens", flush=True)
        results["onnx_long"] = {q: compare_onnx(onnx_arts[q], fixed_prompt(LONG_PROMPT_CHARS), args.long_tokens,
                                                args.rounds, args.threads, with_plain=True, quiet_s=args.quiet_wait)}
    print("formats: ONNX int8/int4 vs GGUF Q8_0/Q4_0 through our runtime", flush=True)
    results["formats"] = compare_formats(onnx_arts, gguf_arts, prompt, args.tokens, args.rounds, args.threads,
                                         args.n_ctx, args.quiet_wait)
    router_and_ensemble(results, args)
    results["seconds"] = round(time.perf_counter() - t_start, 1)

    print()
    print(tables(results))
    checks = [("llama.cpp", results["llamacpp"])] + [(f"ONNX {q}", r) for q, r in results["onnx"].items()]
    checks += [(f"ONNX {q} long prompt", r) for q, r in results.get("onnx_long", {}).items()]
    for name, r in checks:
        if not r["same_tokens"]:
            print(f"note: {name}: greedy tokens differ between the two sides")
        if r["finish"] != "length":
            print(f"note: {name}: ours stopped at an end-of-turn token; both sides timed on {r['ours']['tokens']} tokens")
    write_result(args.out, results)
    print(f"\n{results['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
