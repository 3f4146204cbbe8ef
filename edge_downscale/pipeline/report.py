"""Tables of a build: the dry-run plan and the final summary (per specialist: size, gate, quality, time)."""
from __future__ import annotations

from typing import Any

from ..eval import markdown_table

STAGE_COLUMNS = ("corpus", "dataprune", "adapt", "prune", "recover", "export")


def _mb(n: float | None) -> str:
    if n is None:
        return "-"
    mb = n / 2**20
    return f"{mb:,.0f}" if mb >= 10 else f"{mb:.2f}"


def format_plan(plan: dict[str, Any]) -> str:
    rows = [("task", "status", "key", "est. time", "from", "est. disk MB")]
    for r in plan["tasks"]:
        rows.append((r["task"], r["status"], r["key"], f"{r['seconds']:.0f} s" if r["seconds"] else "-",
                     r["estimate_from"] if r["status"] != "reuse" else "-", _mb(r["disk_bytes"]) if r["disk_bytes"] else "-"))
    lines = [markdown_table(rows), f"total: about {plan['seconds'] / 60:.1f} min and {_mb(plan['disk_bytes'])} MB "
             f"in {plan['work_dir']}"]
    pred = plan.get("predicted") or {}
    if pred.get("per_domain"):
        prow = [("specialist", "ratio", "dense bpb", "predicted bpb (pruned)")]
        for d, v in pred["per_domain"].items():
            prow.append((d, f"{v['ratio']:g}", f"{v['dense']:.3f}" if "dense" in v else "-",
                         f"{v['pruned_no_recovery']:.3f}" if "pruned_no_recovery" in v else v.get("note", "-")))
        lines += ["", f"compression law ({pred['method']}, fit on {pred['law']}):", markdown_table(prow)]
    if pred.get("note"):
        lines.append(f"note: {pred['note']}")
    return "\n".join(lines)


def stage_seconds(summary: dict[str, Any], domain: str) -> dict[str, str]:
    """Seconds per stage kind for one specialist; a task shared by all specialists is marked ``shared``."""
    out: dict[str, str] = {}
    for t in summary["tasks"]:
        if t["kind"] not in STAGE_COLUMNS or t["domain"] not in (domain, None):
            continue
        text = (f"{t['seconds']:.0f}" if t["seconds"] >= 10 else f"{t['seconds']:.1f}") if t.get("seconds") is not None else "?"
        if t["domain"] is None:
            text += " (shared)"
        if t.get("reused"):
            text += " (reused)"
        out[t["kind"]] = text
    return out


def format_summary(summary: dict[str, Any]) -> str:
    kinds = [k for k in STAGE_COLUMNS if any(t["kind"] == k for t in summary["tasks"])]
    rows = [("specialist", "quant", "MB", "gate (bpb delta, KL)", "held-out bpb", *[f"{k} s" for k in kinds])]
    for d, s in summary["specialists"].items():
        gate = s.get("parity") or {}
        gate_text = (f"{'pass' if gate.get('passed') else 'FAIL'} ({gate['bpb_rel_delta']:+.2%}, {gate['mean_kl']:.4f})"
                     if gate else "not checked")
        secs = stage_seconds(summary, d)
        rows.append((d, s.get("quant", "-"), _mb(s["bytes"]), gate_text, f"{s['heldout_bpb']:.4f}", *[secs.get(k, "-") for k in kinds]))
    return markdown_table(rows) + f"\nbuild time {summary['seconds'] / 60:.1f} min; bundle {summary['bundle']}"
