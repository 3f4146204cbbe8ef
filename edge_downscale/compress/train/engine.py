"""One training engine for recovery and specialisation (domain-continual pretraining and distillation).

The engine runs a causal LM over packed token blocks drawn from a domain corpus, optionally mixed
with a general "replay" corpus at a domain share ``r`` (the D-CPT law's mixture ratio, Que et al.
2024). What the model is trained *towards* is an :class:`Objective`: next-token cross-entropy for
adaptation (``compress.adapt``), the KD loss for distillation (``compress.distill``).

It is built on HF accelerate, so the same code runs on the CPU, one CUDA GPU (bf16/fp16 autocast) or
many GPUs/nodes under ``accelerate launch`` (each process takes its share of every global batch).

What a run guarantees:

* a cosine learning-rate schedule with linear warm-up over exactly ``token_budget`` tokens;
* gradient accumulation (``batch_size`` sequences per optimizer step, ``micro_batch`` per forward);
* deterministic under ``seed``: the block order is drawn from seeded permutations, the sampler's
  state is part of every checkpoint, so a resumed run equals an uninterrupted one;
* checkpoints every ``checkpoint_every`` steps (trainable weights and AdamW moments as safetensors,
  the rest as JSON: no pickle), written atomically; a checkpoint from a different run (other config,
  model or data: a fingerprint) is refused;
* Ctrl-C finishes the current step, writes a checkpoint and stops; a kill loses at most one
  checkpoint interval;
* a non-finite loss stops training at once and keeps the last good checkpoint;
* a progress bar (loss, tokens/s, ETA), a JSONL log, validation loss at intervals.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ... import __version__
from ..._io import write_json_atomic
from ...errors import ConfigError, require
from .checkpoints import (
    CHECKPOINTS, LOG, RUN, SUMMARY, list_checkpoints, load_checkpoint, save_checkpoint, trainable_named,
    weights_fingerprint,
)
from .config import TrainConfig, TrainingError, TrainingInterrupted, lr_at
from .packing import Sampler, TextSplits, blocks_digest, make_source

FFN_NAMES = ("gate_proj", "up_proj", "down_proj")


# ----------------------------------------------------------------------------- objective
class Objective:
    """What the model is trained towards. ``loss`` gets the student and a batch and returns a scalar.

    ``batch``: ``input_ids`` (B, T), ``labels`` (B, T) and ``items`` (the (source, block) pairs).
    """

    name = "objective"

    def setup(self, engine: "Engine") -> None:
        """Called once the engine knows its device and data (e.g. to build a teacher-logit cache)."""

    def loss(self, model, batch: dict[str, Any]):
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What makes this objective distinct (part of the run fingerprint)."""
        return {"name": self.name}

    def on_step(self, engine: "Engine", step: int) -> dict[str, Any] | None:
        """Hook before each step (a curriculum refresh); returns a log record or None."""
        return None


class LMObjective(Objective):
    """Next-token cross-entropy: domain-continual pretraining."""

    name = "lm"

    def loss(self, model, batch):
        torch = require("torch", "compress")
        logits = model(input_ids=batch["input_ids"]).logits  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten())


# ----------------------------------------------------------------------------- trainable parameters
def select_trainable(model, config: TrainConfig):
    """Freeze what need not train. Returns the model (wrapped by peft for LoRA)."""
    if config.train == "lora":
        peft = require("peft", "compress")
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = [t for t in config.lora_targets if t in present]
        if not targets:
            raise ConfigError(f"none of the LoRA targets {', '.join(config.lora_targets)} is a module of this model")
        lcfg = peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                               target_modules=targets, bias="none", task_type="CAUSAL_LM")
        return peft.get_peft_model(model, lcfg)
    for name, p in model.named_parameters():
        p.requires_grad_(config.train == "all" or name.rsplit(".", 2)[-2] in FFN_NAMES)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("train='ffn' found no gate_proj/up_proj/down_proj weights: use --train all or lora")
    return model


def finished_model(model, config: TrainConfig):
    """The plain HF model to save: LoRA adapters merged into the weights."""
    if config.train == "lora":
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- engine
class Engine:
    """Runs one training job: ``Engine(model, tokenizer, objective, domain, config, out_dir).run()``."""

    def __init__(self, model, tokenizer, objective: Objective, domain: TextSplits, config: TrainConfig,
                 out_dir: str | os.PathLike, *, replay: TextSplits | None = None, kind: str = "train",
                 meta: dict[str, Any] | None = None, resume: bool = False, progress: bool = True):
        torch = require("torch", "compress")
        accelerate = require("accelerate", "compress")
        self.torch, self.config, self.objective = torch, config, objective
        self.out_dir, self.kind, self.meta = Path(out_dir), kind, dict(meta or {})
        self.resume, self.progress = resume, progress
        if config.domain_share < 1 and replay is None:
            raise ConfigError(f"domain_share {config.domain_share} < 1 needs a replay corpus (--replay)")
        if config.threads:
            torch.set_num_threads(config.threads)
        use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' asked for, but torch sees no CUDA GPU: use --device cpu")
        precision = config.precision
        if precision == "auto":
            precision = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "fp32"
        self.precision = precision
        self.accelerator = accelerate.Accelerator(cpu=not use_cuda,
                                                  mixed_precision="no" if precision == "fp32" else precision)
        self.device = self.accelerator.device
        self.tokenizer = tokenizer
        torch.manual_seed(config.seed)  # LoRA's initial A matrices come from here
        self.model = select_trainable(model, config).to(self.device)
        # Data: enough domain blocks for the budget, replay blocks for the rest.
        steps = config.steps
        need_domain = math.ceil(steps * config.batch_size * config.domain_share)
        self.sources = {"domain": make_source(tokenizer, domain, config, need_blocks=need_domain, role="domain")}
        if replay is not None and config.domain_share < 1:
            need_replay = steps * config.batch_size - need_domain
            self.sources["replay"] = make_source(tokenizer, replay, config, need_blocks=need_replay, role="replay")
        self.sampler = Sampler({k: len(s.train) for k, s in self.sources.items()}, config.domain_share,
                               config.batch_size, config.seed)
        self.state: dict[str, Any] = {"step": 0, "tokens": 0, "domain_tokens": 0}
        self._stop_requested = False

    # -- identity ---------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Config + objective + starting weights + data: a checkpoint must match all of them."""
        h = hashlib.sha256()
        h.update(json.dumps({"kind": self.kind, "config": self.config.fingerprint_dict(),
                             "objective": self.objective.describe(),
                             "data": {k: blocks_digest(s.train) for k, s in self.sources.items()}},
                            sort_keys=True).encode())
        h.update(weights_fingerprint(self.model).encode())
        return h.hexdigest()[:24]

    # -- batches ----------------------------------------------------------------------------------
    def tensors(self, items: Sequence[tuple[str, int]]) -> dict[str, Any]:
        rows = np.stack([self.sources[src].train[i] for src, i in items])  # (B, T + 1)
        ids = self.torch.from_numpy(rows).to(self.device)
        return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "items": list(items)}

    def evaluate(self) -> dict[str, float]:
        """Mean next-token cross-entropy (nats/token) on each source's validation blocks."""
        torch = self.torch
        self.model.eval()
        out = {}
        mb = self.config.micro_batch or self.config.batch_size
        with torch.no_grad(), self.accelerator.autocast():
            for name, src in self.sources.items():
                total, count = 0.0, 0
                for i in range(0, len(src.validation), mb):
                    ids = torch.from_numpy(src.validation[i:i + mb]).to(self.device)
                    logits = self.model(input_ids=ids[:, :-1]).logits.float()  # (b, T, V)
                    total += torch.nn.functional.cross_entropy(
                        logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
                    count += ids[:, 1:].numel()
                out["val_loss" if name == "domain" else "replay_val_loss"] = total / count
        self.model.train()
        return out

    # -- log and checkpoints ----------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.out_dir / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint(self, optimizer) -> Path | None:
        self.accelerator.wait_for_everyone()  # every process has finished the step
        if not self.accelerator.is_main_process:
            return None
        step = self.state["step"]
        path = self.out_dir / CHECKPOINTS / f"step-{step:06d}"
        state = dict(self.state, fingerprint=self.run_id, sampler=self.sampler.state,
                     objective_state=getattr(self.objective, "state", None), time=time.time())
        save_checkpoint(path, self.accelerator.unwrap_model(self.model), optimizer, state)
        for old in list_checkpoints(self.out_dir)[:-1]:  # keep the newest only: a kill loses < 1 interval
            shutil.rmtree(old, ignore_errors=True)
        self.last_checkpoint = path
        return path

    def _restore(self, optimizer) -> None:
        found = list_checkpoints(self.out_dir)
        if not found:
            return
        path = found[-1]
        state = json.loads((path / "state.json").read_text())
        if state.get("fingerprint") != self.run_id:
            raise TrainingError(
                f"{path} comes from another run (fingerprint {state.get('fingerprint')} != {self.run_id}: a different "
                "model, data, objective or training config); refusing to resume from it. Resume with the same "
                "settings, or pick a new --out")
        state = load_checkpoint(path, self.accelerator.unwrap_model(self.model), optimizer)
        self.sampler.state = state["sampler"]
        if state.get("objective_state") is not None:
            self.objective.state = state["objective_state"]
        self.state = {k: state[k] for k in ("step", "tokens", "domain_tokens")}
        self.last_checkpoint = path
        self.log({"event": "resume", "step": self.state["step"], "checkpoint": str(path)})

    def _prepare_out_dir(self) -> None:
        run_path = self.out_dir / RUN
        if self.out_dir.exists() and any(self.out_dir.iterdir()):
            if (self.out_dir / SUMMARY).exists():
                raise TrainingError(f"{self.out_dir} already holds a finished run (nothing to resume): pick a new --out")
            if not self.resume:
                raise TrainingError(f"{self.out_dir} is not empty: pass --resume to continue the run in it, "
                                    "or pick a new --out")
            if run_path.exists():
                old = json.loads(run_path.read_text()).get("fingerprint")
                if old != self.run_id:
                    raise TrainingError(
                        f"{self.out_dir} holds another run (fingerprint {old} != {self.run_id}: a different model, "
                        "data, objective or training config); refusing to resume it. Use the same settings or a new --out")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        run = {"kind": self.kind, "fingerprint": self.run_id, "domain_share": self.config.domain_share,
               "config": self.config.to_dict(), "objective": self.objective.describe(),
               "sources": {k: {"name": s.name, "train_blocks": len(s.train), "validation_blocks": len(s.validation)}
                           for k, s in self.sources.items()},
               "precision": self.precision, "device": str(self.device),
               "processes": self.accelerator.num_processes, "edge_downscale_version": __version__, **self.meta}
        if self.accelerator.is_main_process:
            write_json_atomic(run_path, run)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the budget; returns the eval summary. The finished model is at ``out_dir``."""
        torch, config, acc = self.torch, self.config, self.accelerator
        self.run_id = self.fingerprint()
        self.last_checkpoint = None
        self._prepare_out_dir()
        params = [p for _, p in trainable_named(self.model)]
        optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
        if self.resume:
            self._restore(optimizer)
        self.objective.setup(self)
        self.model, optimizer = acc.prepare(self.model, optimizer)
        self.model.train()
        steps, mb = config.steps, config.micro_batch or config.batch_size
        if self.state["step"] == 0:
            self.log({"event": "eval", "step": 0, "tokens": 0, **self.evaluate()})
        n_trainable = sum(p.numel() for p in params)
        bar = None
        if self.progress and acc.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=self.state["step"], desc=f"{self.kind} {self.sources['domain'].name}",
                       unit="step", dynamic_ncols=True)
        previous = signal.getsignal(signal.SIGINT)
        in_main = _main_thread()
        if in_main:
            signal.signal(signal.SIGINT, self._request_stop)
        t_start, tokens_start = time.perf_counter(), self.state["tokens"]
        try:
            while self.state["step"] < steps:
                step = self.state["step"]
                extra = self.objective.on_step(self, step)
                if extra:
                    self.log({"event": "curriculum", "step": step, **extra})
                items = self.sampler.batch_at(step)
                mine = items[acc.process_index::acc.num_processes]  # this process's share of the global batch
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(step, config)
                loss_sum, t0 = 0.0, time.perf_counter()
                chunks = [mine[i:i + mb] for i in range(0, len(mine), mb)]
                for j, chunk in enumerate(chunks):
                    batch = self.tensors(chunk)
                    sync = j == len(chunks) - 1
                    ctx = acc.no_sync(self.model) if not sync else contextlib.nullcontext()
                    with ctx, acc.autocast():
                        try:
                            loss = self.objective.loss(self.model, batch)
                        except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
                            raise TrainingError(
                                f"out of GPU memory at micro-batch {mb} x seq_len {config.seq_len}: lower --micro-batch "
                                "(gradient accumulation keeps the batch), --seq-len, or use --train lora") from e
                        if not torch.isfinite(loss):
                            last = self.last_checkpoint or "none (no checkpoint was written yet)"
                            raise TrainingError(
                                f"loss became {loss.item()} at step {step}: training stopped; the last good checkpoint "
                                f"is {last}; resume from it with a lower --lr (now {config.lr})")
                        acc.backward(loss * len(chunk) / len(mine))
                    loss_sum += loss.item() * len(chunk)
                if config.max_grad_norm:
                    acc.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                n_domain = sum(1 for src, _ in items if src == "domain")
                self.state["step"] = step + 1
                self.state["tokens"] += len(items) * config.seq_len
                self.state["domain_tokens"] += n_domain * config.seq_len
                dt = time.perf_counter() - t0
                loss_mean = loss_sum / max(1, len(mine))
                tok_s = len(items) * config.seq_len / dt
                self.log({"event": "step", "step": step + 1, "tokens": self.state["tokens"], "loss": loss_mean,
                          "lr": lr_at(step, config), "tokens_per_s": tok_s, "seconds": dt})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_mean:.3f}", tok_s=f"{tok_s:.0f}")
                    bar.update(1)
                done = self.state["step"] == steps
                if config.eval_every and self.state["step"] % config.eval_every == 0 and not done:
                    self.log({"event": "eval", "step": self.state["step"], "tokens": self.state["tokens"],
                              **self.evaluate()})
                if config.checkpoint_every and self.state["step"] % config.checkpoint_every == 0 and not done:
                    self.checkpoint(optimizer)
                if self._stop_requested and not done:
                    path = self.checkpoint(optimizer)
                    raise TrainingInterrupted(f"interrupted at step {self.state['step']}/{steps}; checkpoint {path}; "
                                              "rerun the same command with --resume to continue")
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t_start
        final = self.evaluate()
        trained = self.state["tokens"] - tokens_start
        summary = {"kind": self.kind, "steps": steps, "tokens": self.state["tokens"],
                   "domain_tokens": self.state["domain_tokens"], "train_seconds": round(seconds, 2),
                   "tokens_per_s": round(trained / seconds, 1) if seconds > 0 else None,
                   "trainable_params": n_trainable, "precision": self.precision, "device": str(self.device),
                   **final}
        self.log({"event": "eval", "step": steps, "tokens": self.state["tokens"], **final})
        acc.wait_for_everyone()
        if acc.is_main_process:
            self._save_final(acc.unwrap_model(self.model), summary)
        return summary

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop_requested = True

    def _save_final(self, model, summary: dict[str, Any]) -> None:
        """A standard HF directory in ``out_dir``; each file lands by rename, the summary last."""
        model = finished_model(model, self.config)
        staging = self.out_dir / ".final.partial"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, safe_serialization=True)
        self.tokenizer.save_pretrained(staging)
        for f in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):  # config.json last
            os.replace(f, self.out_dir / f.name)
        staging.rmdir()
        if not self.config.keep_checkpoints:
            shutil.rmtree(self.out_dir / CHECKPOINTS, ignore_errors=True)
        write_json_atomic(self.out_dir / SUMMARY, summary)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
