"""The entry point: :func:`prune_corpus` runs a recipe over a corpus's train split into a new corpus.

The output is a corpus directory in ``build_corpus``'s format (validation and test copied
untouched), plus ``data_prune_report.json``, ``decisions.jsonl`` (one line per input train
document: kept, step, reason, scores) and PNG histograms, all in one atomic rename. The input is
only read.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ...errors import ConfigError, CorpusError, require
from ..corpus import SPLITS, _check_out_dir, corpus_info, load_corpus, save_corpus, split_digest
from ..heldout import resolve_corpus
from .active import TrainCallback
from .config import PruneRecipe
from .pipeline import prune_texts
from .reference import load_backend
from .report import REPORT, build_report, decision_lines, histograms, measure, report_files
from .selection import Subset
from .steps import MODEL_STEPS


def prune_corpus(in_dir: str | os.PathLike, out_dir: str | os.PathLike, recipe: PruneRecipe | None = None, *,
                 reference=None, student=None, target_texts: Iterable[str] | None = None,
                 train_callback: TrainCallback | None = None, progress: bool = True,
                 overwrite: bool = False) -> dict[str, Any]:
    """Prune the train split of corpus ``in_dir`` into a new corpus ``out_dir``; returns the report.

    ``in_dir``: a corpus directory (``edge-downscale data build``) or a demo domain name. The
    validation and test splits are copied unchanged. ``out_dir`` gets the corpus (same format as
    ``build_corpus``), ``data_prune_report.json``, ``decisions.jsonl`` and ``hist_*.png``.
    """
    datasets = require("datasets", "compress")
    from ... import __version__

    recipe = recipe or PruneRecipe()
    if not isinstance(recipe, PruneRecipe):
        raise ConfigError(f"recipe must be a PruneRecipe, got {type(recipe).__name__}")
    src = resolve_corpus(in_dir, progress=False)
    out = Path(out_dir).expanduser()
    if src.exists() and out.exists() and src.resolve() == out.resolve():
        raise CorpusError(f"the output {out} is the input corpus: choose another --out (the input is never modified)")
    info = corpus_info(src)
    corpus = load_corpus(src)
    train = corpus["train"]
    if "text" not in train.column_names:
        raise CorpusError(f"{src}: the train split has no 'text' column (columns: {', '.join(train.column_names)}); "
                          "rebuild it with `edge-downscale data build`")
    if len(train) == 0:
        raise CorpusError(f"{src}: the train split is empty; nothing to prune (build a corpus with more documents)")
    _check_out_dir(out, overwrite)
    t0 = time.perf_counter()
    if any(st in MODEL_STEPS for st in recipe.steps):  # load once here, so tokens can be counted with it
        reference = load_backend(reference if reference is not None else recipe.reference, "reference")
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        result = prune_texts(train, recipe, reference=reference, student=student, target_texts=target_texts,
                             train_callback=train_callback, progress=progress)
        kept_idx = np.flatnonzero(result.keep)
        pruned = train.select(kept_idx)
        # tokens before/after with the reference tokenizer when one is loaded, bytes and words always
        ref_backend = reference if (reference is not None and not isinstance(reference, (str, os.PathLike))) else None
        before = measure(Subset(train, np.arange(len(train))), ref_backend, progress, "measuring input")
        after = measure(Subset(train, kept_idx), ref_backend, progress, "measuring output")
        manifest = json.loads(json.dumps(info))
        manifest["splits"]["train"] = {
            "documents": len(kept_idx), "bytes": after["bytes"],
            "groups": len(set(pruned["group"])) if "group" in pruned.column_names else None,
            "sha256": split_digest(Subset(train, kept_idx)),
        }
        manifest["documents"] = sum(s["documents"] for s in manifest["splits"].values())
        manifest["bytes"] = sum(s["bytes"] for s in manifest["splits"].values())
        manifest["empty_splits"] = [n for n in SPLITS if manifest["splits"][n]["documents"] == 0]
        manifest["pruned_from"] = {"path": str(src.resolve()), "train_sha256": info["splits"]["train"].get("sha256"),
                                   "recipe": recipe.to_dict(), "report": REPORT}
        manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest["edge_downscale_version"] = __version__
        hist = histograms(result)
        report = build_report(src, out, recipe, result, before, after, len(train), hist)
        lines = decision_lines(train, result)
        report["seconds"] = round(time.perf_counter() - t0, 3)
        parts = {"train": pruned, "validation": corpus["validation"], "test": corpus["test"]}
        save_corpus(out, parts, manifest, t0=t0, seconds_key="prune_seconds",
                    extra_files=report_files(report, lines, hist))
        return report
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
