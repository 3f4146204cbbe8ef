"""The report: report.json (with the environment), report.md (tables and notes) and PNG plots (matplotlib).

Everything is written into a temporary directory renamed onto ``out`` at the end, so an interrupted
run leaves no half report. A non-empty ``out`` is refused unless ``overwrite``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_path, write_result
from ..errors import BenchError
from ..eval import markdown_table

PLOTS = {"quality": "quality_vs_energy.png", "domains": "bpb_by_domain.png"}


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory (or a file there) unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file; pass a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BenchError(f"{out} is not empty; pass --overwrite or choose another --out")


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None else f"{a:.1f} / {_f(b, 1)}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table_rows(records: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The main table: one row per configuration."""
    domains = list(records[0]["domains"]) if records else []
    head = (["configuration", "kind", "MB", "bpb mixed"] + [f"bpb {d}" for d in domains]
            + ["MC acc", "TTFT ms", "prefill tok/s", "decode tok/s", "roofline tok/s", "% of roofline",
               "ITL p50/p95 ms", "tok/s e2e", "J/token", "energy", "peak RSS MB", "VRAM MB"])
    rows = [head]
    for r in records:
        rows.append([r["name"], r["kind"], _f(r["size_mb"], 1), _f(r["bpb_mixed"])]
                    + [_f(r["domains"][d]["bpb"]) for d in domains]
                    + [_f(r["mc_acc_mixed"]), _f(r["ttft_s"] and r["ttft_s"] * 1e3, 1), _f(r["prefill_tok_s"], 1),
                       _f(r["decode_tok_s"], 1), _f(r.get("roofline_tok_s"), 1), _pct(r.get("decode_share")),
                       _pair(r["itl_p50_ms"], r["itl_p95_ms"]), _f(r["throughput_tok_s"], 1),
                       _f(r["j_per_token"], 4), r["energy_source"] or "-", _f(r["peak_rss_mb"], 0),
                       _f(r["vram_peak_mb"], 0)])
    return rows


RATIO_COLUMNS = {"bpb": "bpb_mixed", "MC acc": "mc_acc_mixed", "TTFT": "ttft_s", "prefill": "prefill_tok_s",
                 "decode": "decode_tok_s", "tok/s e2e": "throughput_tok_s", "J/token": "j_per_token",
                 "peak RSS": "peak_rss_mb", "MB": "size_mb"}


def ratio_rows(records: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = [["configuration"] + list(RATIO_COLUMNS) + ["total J/token, 95%"]]
    for r in records:
        ci = r.get("j_per_token_ratio_95")
        rows.append([r["name"]] + [_f(r["ratios"].get(k), 2) for k in RATIO_COLUMNS.values()] +
                    [f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"])
    return rows


def notes(report: dict[str, Any], plots_note: str | None) -> list[str]:
    """What a reader needs to interpret the figures (methods, sources, what was skipped)."""
    b, records = report["bench"], report["records"]
    cfg = b["config"]
    out = [
        f"Reference for the ratios: {b['reference']} (ratios of per-round figures are medians of per-round ratios; "
        "'total J/token, 95%': a bootstrap interval of the J/token column's ratio, total joules over total tokens "
        "on each side, the rounds resampled within each prompt).",
        "Isolation: each configuration ran in its own worker process (a fresh interpreter, as multiprocessing's "
        "spawn); peak RSS is that process's peak resident set (VmHWM), interpreter and libraries included (rss_before_load_mb in report.json is the "
        "part before the model loaded). Requests ran one at a time, the order rotated each round.",
        f"Quality: held-out data from {b['eval_data']['source']}, at most {cfg['max_bytes']} bytes per domain cut into "
        f"pieces of at most {cfg['piece_chars']} characters (halved where a model's window was too short); every "
        "configuration scores the same pieces, each in one window from BOS: bits_per_byte for single models, "
        "Ensemble.score for ensembles (which scores one window only: the same numbers). Mixed = total nats / total "
        "bytes. MC: the eval files' items, the option log-probability after the context, in the model's context.",
        f"Speed: {cfg['warmup']} warmup + {cfg['rounds']} rounds of greedy generation of {cfg['max_tokens']} tokens, "
        f"prompts = the first {cfg['prompt_chars']} characters of {len(b['prompts'])} held-out texts. TTFT from the "
        "worker's clock (request start to the first text chunk); prefill tok/s = prompt tokens / TTFT; decode tok/s "
        "from the runtime's usage; ITL from chunk arrival times; tok/s e2e = answer tokens / latency.",
        "J/token: the energy meter's reading over the whole request (auto_meter: NVML, else RAPL, else "
        "'estimated' = CPU seconds x assumed watts) / answer tokens; usage_j_per_token in report.json is the "
        "runtime's own Usage.joules (generation only, summed over the members that ran).",
    ]
    out += roofline_notes(report)
    if any(not r["streams"] for r in records):
        out.append("Cascade and vote answer only when finished: their TTFT is their latency and prefill, decode "
                   "and ITL are not defined (-); compare them by tok/s e2e and J/token.")
    if any(r["energy_source"] == "estimated" for r in records):
        out.append("Energy marked 'estimated' is not a measurement (no RAPL/NVML readable here).")
    for s in b["skipped"]:
        out.append(f"Not measured: {s['bundle']} under {s['strategy']}: {s['reason']}.")
    for r in records:
        if r["quality_fallbacks"] or r["generation_fallbacks"]:
            out.append(f"{r['name']}: members failed and were replaced {r['quality_fallbacks']} times in quality "
                       f"and {r['generation_fallbacks']} times in generation: its figures mix members.")
        if r["truncated_prompt_tokens"]:
            out.append(f"{r['name']}: {r['truncated_prompt_tokens']} prompt tokens were truncated to fit its context.")
    if cfg["profile"] == "quick":
        out.append("--quick profile: few rounds and little data; orientation only.")
    if plots_note:
        out.append(plots_note)
    return out


def roofline_notes(report: dict[str, Any]) -> list[str]:
    """How the roofline columns were computed, and which configurations have none."""
    device = report.get("device") or {}
    bw = device.get("bandwidth_gb_s") or {}
    n = str(device.get("roofline_threads"))
    if n not in bw:
        return []
    measured = ", ".join(f"{k} thread{'s' if k != '1' else ''}: {_f(v, 1)} GB/s" for k, v in bw.items())
    out = [f"Roofline (Williams, Waterman & Patterson 2009): decoding one token reads every weight once, so decode "
           f"tok/s <= memory bandwidth / weight bytes per token. Bandwidth measured by this run before any model "
           f"loaded ({measured}; {device.get('bandwidth_method', '')}); the ceiling uses {n} thread"
           f"{'s' if n != '1' else ''}. Weight bytes per token: every weight tensor but an input embedding only "
           "gathered (a tied embedding is the LM head and counts), summed over the models that decoded: the routed "
           "member for route, the mixed members for mixture, every member that generated for vote and cascade. "
           "KV cache and activations are not counted, so the ceiling is optimistic. Roofline tok/s and % of roofline "
           "(decode tok/s / the ceiling, round by round) are medians over the rounds."]
    unknown = [r["name"] for r in report["records"] if r.get("bytes_per_token") is None]
    if unknown:
        out.append(f"No roofline for {', '.join(unknown)}: the bytes its weights read per token could not be told "
                   "(not a GGUF or ONNX export, or an ONNX export without the onnx package: pip install "
                   "'edge-downscale[export]').")
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better), by x."""
    front = [i for i, (x, y) in enumerate(points)
             if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i])


def write_plots(records: Sequence[dict[str, Any]], directory: Path) -> list[str]:
    """The two PNGs; raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    pts = [(r["j_per_token"], r["bpb_mixed"], r["name"]) for r in records
           if r["j_per_token"] is not None and r["bpb_mixed"] is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    for x, y, name in pts:
        ax.scatter(x, y)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front([(x, y) for x, y, _ in pts])
    if front:
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=1, label="Pareto front")
        ax.legend()
    ax.set_xlabel("joules per token (" + "+".join(sorted({r["energy_source"] or "?" for r in records})) + ")")
    ax.set_ylabel("bits per byte, mixed domains (lower is better)")
    ax.set_title("Quality vs energy")
    fig.tight_layout()
    fig.savefig(directory / PLOTS["quality"], dpi=120)
    plt.close(fig)
    written.append(PLOTS["quality"])

    domains = list(records[0]["domains"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(records) * len(domains) / 2 + 2), 4.5))
    width = 0.8 / max(len(records), 1)
    for j, r in enumerate(records):
        ax.bar([i + j * width for i in range(len(domains))], [r["domains"][d]["bpb"] or 0 for d in domains],
               width, label=r["name"])
    ax.set_xticks([i + width * (len(records) - 1) / 2 for i in range(len(domains))], domains)
    ax.set_ylabel("bits per byte")
    ax.set_title("Held-out bits per byte by domain")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / PLOTS["domains"], dpi=120)
    plt.close(fig)
    written.append(PLOTS["domains"])
    return written


def markdown(report: dict[str, Any]) -> str:
    b, records = report["bench"], report["records"]
    lines = ["# On-device benchmark", "", f"{len(records)} configurations, reference {b['reference']}, "
             f"{b['config']['profile']} profile, {b['seconds']:.0f} s.", "", markdown_table(table_rows(records)), "",
             f"## Ratios to {b['reference']}", "", markdown_table(ratio_rows(records)), ""]
    lines += [f"![{k}]({v})" for k, v in PLOTS.items() if v in b.get("plots", [])]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in b["notes"]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> list[str]:
    """Write report.json / report.md / plots into ``out`` at once; returns the notes (also in the report)."""
    plots_note = None
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        report["bench"]["plots"] = []
        if report["bench"]["config"]["plots"]:
            try:
                report["bench"]["plots"] = write_plots(report["records"], tmp)
            except ImportError:
                plots_note = "No plots: matplotlib is not installed (pip install matplotlib)."
                print(f"bench: {plots_note}", file=sys.stderr)
        report["bench"]["notes"] = notes(report, plots_note)
        write_result(tmp / "report.json", report)
        (tmp / "report.md").write_text(markdown(report), encoding="utf-8")
    return report["bench"]["notes"]
