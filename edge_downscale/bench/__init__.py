"""On-device benchmark: bundles, their members and baseline models measured side by side on this machine.

Torch-free (imports only the base modules, the runtime and eval)::

    from edge_downscale.bench import BenchConfig, run_bench
    report = run_bench(["bundle/"], BenchConfig.quick(), baselines=["smollm2.gguf"], out="bench-report")

Per configuration (each member alone, the bundle under each strategy it supports, each baseline and
model): held-out bits-per-byte and multiple-choice accuracy per domain, TTFT, prefill / decode
tokens/s, inter-token latency p50/p95, joules per token with its source, peak RSS, VRAM and file size,
each also as a ratio to the first baseline; and the memory roofline of decoding (the weight bytes read
per token over the bandwidth the run measures, :mod:`edge_downscale.runtime.roofline`) with the share
of it decode reached.

**Why one process per configuration** (:mod:`.worker`): peak RSS only grows within a process, so in a
single process the second configuration's peak would include the first's (and freed llama.cpp
memory is not always returned to the OS); RSS deltas would understate whatever reuses freed pages.
A spawned worker per configuration makes ``ru_maxrss`` (and NVML's per-process VRAM, and the
CPU-time energy estimate, which counts this process's CPU seconds) that configuration's own. The
cost: every configuration is resident at once (memory is the sum of them all) and each worker pays
its interpreter (~30-60 MB, reported as ``rss_before_load_mb``). Requests are sent one at a time,
interleaved across workers, so idle workers do not compete for the CPU.
"""
from .config import QUICK, BenchConfig
from .run import DEFAULT_OUT, make_prompts, run_bench, split_pieces
from .summary import RATIO_METRICS
from .targets import Configuration, plan_configurations, strategy_plan
from .worker import piece_bits_per_byte

__all__ = ["QUICK", "BenchConfig", "DEFAULT_OUT", "make_prompts", "run_bench", "split_pieces", "RATIO_METRICS",
           "Configuration", "plan_configurations", "strategy_plan", "piece_bits_per_byte"]
