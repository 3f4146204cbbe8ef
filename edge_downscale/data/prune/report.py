"""What ``prune_corpus`` writes besides the corpus: the report, the per-document decisions, histograms."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .pipeline import PruneResult
from .selection import KEPT, progress_bar

REPORT = "data_prune_report.json"
DECISIONS = "decisions.jsonl"


def histograms(result: PruneResult) -> dict[str, bytes]:
    """PNG histograms (matplotlib, Agg): reference bits-per-byte, cluster sizes, DSIR weights, gaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out[name] = buf.getvalue()

    for step, fname, xlabel in (("quality", "hist_perplexity.png", "bits per byte under the reference model"),
                                ("relevance", "hist_relevance.png", "DSIR log importance weight"),
                                ("active", "hist_active_gap.png", "student - teacher bits per byte")):
        if step not in result.scores:
            continue
        s = result.scores[step]
        seen = np.isfinite(s)
        if not seen.any():
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.histogram_bin_edges(s[seen], bins=40)
        ax.hist(s[seen & result.keep], bins=bins, alpha=0.7, label="kept")
        ax.hist(s[seen & ~result.keep], bins=bins, alpha=0.7, label="dropped")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("documents")
        ax.legend()
        ax.set_title(f"{step}: {int(seen.sum())} documents scored")
        save(fig, fname)
    for sel in result.selections:
        if sel.step == "diversity" and sel.stats.get("cluster_sizes"):
            fig, ax = plt.subplots(figsize=(6, 3.5))
            sizes = sel.stats["cluster_sizes"]
            ax.hist(sizes, bins=min(40, max(5, len(sizes))))
            ax.set_xlabel("k-means cluster size (documents)")
            ax.set_ylabel("clusters")
            ax.set_title(f"diversity: {len(sizes)} clusters")
            save(fig, "hist_cluster_sizes.png")
    return out


def measure(texts: Iterable[str], backend, progress: bool, desc: str) -> dict[str, Any]:
    docs = n_bytes = words = tokens = 0
    with progress_bar(None, desc, progress) as bar:
        for t in texts:
            t = t if isinstance(t, str) else ""
            docs += 1
            n_bytes += len(t.encode("utf-8", "replace"))
            words += len(t.split())
            if backend is not None:
                try:
                    tokens += len(backend.tokenize(t))
                except Exception:  # noqa: BLE001 - counted elsewhere as unscorable
                    pass
            bar.update()
    out: dict[str, Any] = {"documents": docs, "bytes": n_bytes, "words": words}
    if backend is not None:
        out["tokens"] = tokens
    return out


def build_report(src: Path, out: Path, recipe, result: PruneResult, before: dict[str, Any], after: dict[str, Any],
                 n_train: int, hist: dict[str, bytes]) -> dict[str, Any]:
    """The ``data_prune_report.json`` content (``seconds`` is filled in last, by the caller)."""
    return {
        "input": str(src.resolve()), "output": str(out.resolve()), "recipe": recipe.to_dict(),
        "keep": recipe.keep, "budget_documents": result.budget,
        "before": before, "after": after,
        "kept_fraction": {"documents": int(result.keep.sum()) / n_train,
                          "bytes": after["bytes"] / before["bytes"] if before["bytes"] else None},
        "dropped": {k: v for k, v in result.counts().items() if k != KEPT},
        "steps": [s.summary() for s in result.selections],
        "untouched_splits": ["validation", "test"],
        "histograms": sorted(hist),
        "seconds": None,
    }


def decision_lines(train: Any, result: PruneResult) -> list[str]:
    """One JSON line per input train document: index, source, kept, step, reason and every step's score."""
    ids = train["source"] if "source" in train.column_names else None
    lines = []
    for i in range(len(train)):
        row = {"index": i, "source": ids[i] if ids is not None else None, "kept": bool(result.keep[i]),
               "step": result.step[i], "reason": result.reason[i]}
        row.update({f"score_{k}": (None if not np.isfinite(v[i]) else round(float(v[i]), 6))
                    for k, v in result.scores.items()})
        lines.append(json.dumps(row))
    return lines


def report_files(report: dict[str, Any], lines: list[str], hist: dict[str, bytes]) -> dict[str, bytes]:
    """File name -> bytes of everything written next to the pruned corpus."""
    return {REPORT: (json.dumps(report, indent=2) + "\n").encode("utf-8"),
            DECISIONS: ("\n".join(lines) + "\n").encode("utf-8"), **hist}


def digest_dir(path: str | os.PathLike) -> str:
    """sha256 over every file's relative path and bytes under ``path`` (to check it is unchanged)."""
    h = hashlib.sha256()
    root = Path(path)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()
