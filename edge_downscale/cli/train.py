"""`adapt` and `distill`: recovery training; every option with a TrainConfig/DistillConfig field reads its default there."""
from __future__ import annotations

import click

from ..compress.train.config import CURRICULA, DEVICES, DIVERGENCES, PRECISIONS, TRAIN_MODES, DistillConfig, TrainConfig
from ._options import _apply, config_option

_TRAIN_EPILOG = ("OUT ends up a standard HF model directory (safetensors + tokenizer) with run.json, "
                 "train_log.jsonl (one JSON object per step/eval) and eval_summary.json. Runs on the CPU, one CUDA "
                 "GPU (bf16 autocast), or many GPUs without code change: "
                 "`accelerate launch -m edge_downscale.cli adapt ...`. Ctrl-C writes a checkpoint; rerun the same "
                 "command with --resume to continue.")

_TRAIN_OPTIONS = [
    click.option("--domain", required=True, help="Domain corpus: a demo domain (code, docs, legal) or a `data build` directory."),
    click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory."),
    config_option(TrainConfig, "token_budget", "--tokens", "token_budget", help="Training token budget (domain + replay)."),
    config_option(TrainConfig, "seq_len", help="Tokens per training sequence."),
    config_option(TrainConfig, "batch_size", help="Sequences per optimizer step."),
    config_option(TrainConfig, "micro_batch", help="Sequences per forward pass (gradient accumulation); 0 = batch size."),
    config_option(TrainConfig, "lr", help="Peak learning rate (linear warm-up, cosine decay)."),
    config_option(TrainConfig, "train", "--train", "train_mode", choices=TRAIN_MODES,
                  help="What trains: the FFNs only (what pruning changed; ~1.5x faster on CPU), all weights, or LoRA adapters (merged when saved)."),
    config_option(TrainConfig, "lora_rank"),
    click.option("--replay", default=None, help="General corpus mixed in to prevent forgetting (a demo domain or corpus directory)."),
    config_option(TrainConfig, "domain_share",
                  help="Share r of domain tokens in the mixture; < 1 needs --replay. `laws dcpt` proposes one."),
    config_option(TrainConfig, "eval_every", help="Validation loss every N steps (0 = start and end)."),
    config_option(TrainConfig, "checkpoint_every", help="Checkpoint every N steps (0 = never)."),
    click.option("--keep-checkpoints", is_flag=True, help="Keep the checkpoints after a finished run."),
    click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint (same settings only)."),
    config_option(TrainConfig, "device", choices=DEVICES),
    config_option(TrainConfig, "precision", choices=PRECISIONS, help="auto = bf16 on a CUDA GPU that supports it, else fp32."),
    config_option(TrainConfig, "seed"),
    click.option("--quiet", is_flag=True, help="No progress bar."),
]

# TrainConfig fields that `adapt`/`distill` options set under the same name (--train sets `train`).
_TRAIN_FIELDS = ("token_budget", "seq_len", "batch_size", "micro_batch", "lr", "lora_rank", "domain_share", "eval_every",
                 "checkpoint_every", "keep_checkpoints", "device", "precision", "seed")


def _train_options(f):
    """Options shared by `adapt` and `distill`: they build one TrainConfig."""
    return _apply(_TRAIN_OPTIONS, f)


def _train_config(kw: dict) -> TrainConfig:
    return TrainConfig(train=kw["train_mode"], **{name: kw[name] for name in _TRAIN_FIELDS})


def _report_training(summary: dict, out_dir: str) -> None:
    replay = summary.get("replay_val_loss")
    extra = f", replay validation loss {replay:.4f}" if replay is not None else ""
    click.echo(f"{out_dir}: {summary['steps']} steps, {summary['tokens']:,} tokens at {summary['tokens_per_s']} tokens/s "
               f"({summary['device']}, {summary['precision']}); validation loss {summary['val_loss']:.4f}{extra}")


@click.command("adapt", short_help="Domain-continual pretraining (optionally with replay).", epilog=_TRAIN_EPILOG)
@click.argument("model")
@_train_options
def adapt_cmd(model, **kw):
    """Continue pretraining MODEL (a name, HF directory or GGUF) on a domain corpus.

    Mix in a general corpus with --replay and --domain-share r (the D-CPT law's mixture ratio) to
    keep general ability; train the FFNs, all weights or LoRA.
    """
    from ..compress.adapt import adapt

    summary = adapt(model, kw["domain"], kw["out_dir"], config=_train_config(kw), replay=kw["replay"],
                    resume=kw["resume"], progress=not kw["quiet"])
    _report_training(summary, kw["out_dir"])


@click.command("distill", short_help="Knowledge distillation teacher -> student on a domain.", epilog=_TRAIN_EPILOG)
@click.option("--teacher", required=True, help="Teacher: a name, HF directory or GGUF (best: one adapted to the domain).")
@click.option("--student", required=True, help="Student: e.g. a pruned HF directory from `edge-downscale prune`.")
@config_option(DistillConfig, "alpha", help="Weight of the hard-label cross-entropy.")
@config_option(DistillConfig, "tau", help="Softmax temperature of the soft targets.")
@config_option(DistillConfig, "divergence", choices=DIVERGENCES,
               help="KL(teacher||student), KL(student||teacher) or the generalised JSD (GKD).")
@config_option(DistillConfig, "hidden_weight",
               help="Weight of the hidden-state MSE between matched layers (needs the live teacher).")
@config_option(DistillConfig, "cache_topk",
               help="Cache the teacher's top-k logits once instead of running it every step (0 = live teacher).")
@config_option(DistillConfig, "curriculum", choices=CURRICULA,
               help="divergence: train each phase on the blocks where the student lags the teacher most.")
@_train_options
def distill_cmd(teacher, student, alpha, tau, divergence, hidden_weight, cache_topk, curriculum, **kw):
    """Distil TEACHER into STUDENT on a domain: alpha * CE + (1 - alpha) * tau^2 * D(teacher || student).

    Teacher and student must share a tokenizer. The research (shared/research) says: adapt the
    teacher to the domain first (`edge-downscale adapt`), then distil with tau = 2.
    """
    from ..compress.distill import distill

    if cache_topk and (divergence != "forward" or hidden_weight):
        cache_topk = 0  # reverse KL, JSD and hidden states need the live teacher
        click.echo("note: running the teacher live (--divergence/--hidden-weight need its full outputs)", err=True)
    kd = DistillConfig(alpha=alpha, tau=tau, divergence=divergence, hidden_weight=hidden_weight,
                       cache_topk=cache_topk, curriculum=curriculum)
    summary = distill(teacher, student, kw["domain"], kw["out_dir"], config=_train_config(kw), kd=kd,
                      replay=kw["replay"], resume=kw["resume"], progress=not kw["quiet"])
    _report_training(summary, kw["out_dir"])
