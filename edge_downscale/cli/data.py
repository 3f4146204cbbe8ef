"""`data build/info/prune`: corpora from demo domains or your own files, and data pruning."""
from __future__ import annotations

import click

from ..data import CorpusConfig
from ..data.corpus import SPLITS
from ._options import _echo_json, _Group, config_option

_RECIPE = "edge_downscale.data.prune:PruneRecipe"  # imports numpy: its defaults are read lazily


@click.group(cls=_Group)
def data():
    """Build and inspect corpora (demo domains or your own files)."""


@data.command("build")
@click.argument("source")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@config_option(CorpusConfig, "near_dup_threshold", help="Jaccard threshold for near-duplicates.")
@config_option(CorpusConfig, "max_docs",
               help="Keep at most this many documents (counted after filtering and exact dedup).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def data_build(source, out_dir, overwrite, near_dup_threshold, max_docs, quiet):
    """Build a corpus from SOURCE (a demo domain: code, docs, legal; or a directory, .txt or .jsonl).

    Documents are deduplicated (exact and MinHash near-duplicates) and split train/validation/test by
    a hash of their duplicate group, so near-duplicates never straddle splits.
    """
    from ..data import build_corpus

    config = CorpusConfig(near_dup_threshold=near_dup_threshold, max_docs=max_docs)
    manifest = build_corpus(source, out_dir, config, progress=not quiet, overwrite=overwrite)
    _echo_json({k: manifest[k] for k in ("splits", "skipped") if k in manifest} or manifest)


@data.command("info")
@click.argument("corpus_dir", type=click.Path())
def data_info(corpus_dir):
    """Print a built corpus's manifest (sources, counts per split, hashes)."""
    from ..data import corpus_info

    _echo_json(corpus_info(corpus_dir))


@data.command("prune")
@click.argument("in_dir")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output corpus directory.")
@config_option(_RECIPE, "keep", type=float, help="Fraction of train documents to keep, in (0, 1].")
@click.option("--steps", default="dedup,near-dedup,quality,diversity", show_default=True,
              help="Comma-separated, in order: dedup, near-dedup, quality, relevance, diversity, active.")
@click.option("--reference", default=None, help="Reference (teacher) model for quality/diversity/active, e.g. smollm2-135m.")
@click.option("--student", default=None, help="Student model for the active step.")
@config_option("edge_downscale.data.prune:QualityConfig", "band", choices=["low", "middle", "high"],
               help="Perplexity band kept.")
@click.option("--target", default=None, help="Relevance target: a corpus directory or demo domain.")
@config_option(_RECIPE, "target_split", choices=SPLITS)
@config_option("edge_downscale.data.prune:NearDedupConfig", "threshold", "--near-threshold", "near_threshold",
               type=float, help="Near-duplicate Jaccard threshold.")
@config_option("edge_downscale.data.prune:DiversityConfig", "threshold", "--semantic-threshold", "semantic_threshold",
               type=float, help="SemDeDup cosine threshold.")
@config_option("edge_downscale.data.prune:DiversityConfig", "clusters", type=int,
               help="k-means clusters for diversity (0 = sqrt(N/2)).")
@click.option("--max-tokens", type=int, default=None, help="Tokens scored per document by the models (512).")
@config_option(_RECIPE, "seed", type=int)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def data_prune(in_dir, out_dir, keep, steps, reference, student, band, target, target_split, near_threshold,
               semantic_threshold, clusters, max_tokens, seed, overwrite, quiet):
    """Prune the train split of corpus IN_DIR (or a demo domain) into a new corpus OUT.

    Dedup steps drop what they drop; the score-based steps share the cut down to --keep. OUT also
    gets data_prune_report.json, decisions.jsonl and PNG histograms; IN_DIR is never modified.
    """
    from ..data.prune import PruneRecipe, parse_steps, prune_corpus

    sub: dict = {"quality": {"band": band}, "diversity": {"seed": seed, "threshold": semantic_threshold,
                 "clusters": clusters}, "near_dedup": {"threshold": near_threshold}, "active": {},
                 "relevance": {"seed": seed}}
    if max_tokens is not None:
        for k in ("quality", "diversity", "active"):
            sub[k]["max_tokens"] = max_tokens
    recipe = PruneRecipe.from_dict({"steps": list(parse_steps(steps)), "keep": keep, "seed": seed,
                                    "reference": reference, "student": student, "target": target,
                                    "target_split": target_split, **sub})
    report = prune_corpus(in_dir, out_dir, recipe, progress=not quiet, overwrite=overwrite)
    b, a = report["before"], report["after"]
    for s in report["steps"]:
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "none"
        click.echo(f"{s['step']:<10} in {s['documents_in']:>6}  kept {s['kept']:>6}  dropped: {dropped}  "
                   f"({s['docs_per_second'] or 0:.1f} docs/s)")
    unit = "tokens" if "tokens" in b else "bytes"
    click.echo(f"documents {b['documents']} -> {a['documents']}, {unit} {b[unit]:,} -> {a[unit]:,}; "
               f"wrote {out_dir} (data_prune_report.json, decisions.jsonl)")
