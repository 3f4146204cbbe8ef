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
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import __version__
from .._io import atomic_path, write_json_atomic
from ..config import StageConfig, check, check_int
from ..errors import ConfigError, EdgeDownscaleError, require

TRAIN_MODES = ("all", "ffn", "lora")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOG = "train_log.jsonl"
RUN = "run.json"
SUMMARY = "eval_summary.json"
CHECKPOINTS = "checkpoints"
FFN_NAMES = ("gate_proj", "up_proj", "down_proj")


class TrainingError(EdgeDownscaleError):
    """Training cannot start or had to stop (too little data, NaN loss, out of memory, foreign checkpoint)."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C: a checkpoint was written; rerun with resume to continue."""

    exit_code = 130


@dataclasses.dataclass
class TrainConfig(StageConfig):
    """How long and how to train. Shared by ``adapt`` and ``distill``."""

    stage = "train"
    token_budget: int = 65536  # tokens trained on (domain + replay), the budget D of the laws
    seq_len: int = 256
    batch_size: int = 8  # sequences per optimizer step (all processes together)
    micro_batch: int = 0  # sequences per forward/backward; 0 = batch_size (no accumulation)
    lr: float = 2e-4
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train: str = "ffn"  # all | ffn (only the FFNs, the part pruning changed) | lora
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple = ("gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj")
    domain_share: float = 1.0  # r: share of domain tokens in the mixture (1 = no replay)
    eval_every: int = 0  # steps between validation passes (0 = at the start and the end only)
    eval_tokens: int = 8192  # validation tokens per pass, per corpus
    checkpoint_every: int = 50  # steps between checkpoints (0 = none)
    keep_checkpoints: bool = False  # keep checkpoints after a finished run
    precision: str = "auto"  # auto = bf16 on CUDA when supported, else fp32
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def validate(self) -> None:
        for name in ("token_budget", "seq_len", "batch_size", "micro_batch", "eval_every", "eval_tokens",
                     "checkpoint_every", "lora_rank", "seed", "threads"):
            check_int(self, name, 0)
        check(self.token_budget > 0 and self.seq_len >= 8 and self.batch_size > 0,
              "token_budget, batch_size must be > 0 and seq_len >= 8")
        check(self.micro_batch == 0 or self.batch_size % self.micro_batch == 0,
              f"batch_size ({self.batch_size}) must be a multiple of micro_batch ({self.micro_batch})")
        check(self.lr > 0 and 0 <= self.warmup_ratio < 1 and 0 <= self.min_lr_ratio <= 1,
              "lr must be > 0, warmup_ratio in [0, 1), min_lr_ratio in [0, 1]")
        check(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm must be >= 0")
        check(self.train in TRAIN_MODES, f"train must be one of {', '.join(TRAIN_MODES)}, got {self.train!r}")
        check(self.lora_rank > 0 and self.lora_alpha > 0, "lora_rank and lora_alpha must be > 0")
        check(0 < self.domain_share <= 1, f"domain_share must be in (0, 1], got {self.domain_share}")
        check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        check(self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def steps(self) -> int:
        return max(1, self.token_budget // self.tokens_per_step)

    def fingerprint_dict(self) -> dict[str, Any]:
        """The fields that change what is learned (resume must match them); logging cadence does not."""
        d = self.to_dict()
        for k in ("eval_every", "eval_tokens", "checkpoint_every", "keep_checkpoints", "device", "threads"):
            d.pop(k)
        return d


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``lr * min_lr_ratio`` (step counts from 0)."""
    total = config.steps
    warm = int(config.warmup_ratio * total)
    if step < warm:
        return config.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass
class TextSplits:
    """A corpus as lists of documents: train (what is learned) and validation (what is scored)."""

    name: str
    train: list[str]
    validation: list[str]


def load_splits(source: str | os.PathLike | TextSplits) -> TextSplits:
    """A demo domain name (``docs``), a corpus directory (``data build`` output) or :class:`TextSplits`."""
    if isinstance(source, TextSplits):
        return source
    from ..data import load_corpus, resolve_corpus

    ds = load_corpus(resolve_corpus(source))
    return TextSplits(name=str(source), train=list(ds["train"]["text"]), validation=list(ds["validation"]["text"]))


def pack(tokenizer, texts: Iterable[str], block: int, *, max_blocks: int | None = None) -> np.ndarray:
    """Tokenize documents, join them with EOS, cut into non-overlapping blocks: (N, block) int64."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_blocks and len(ids) >= max_blocks * block:
            break
    n = len(ids) // block
    if max_blocks:
        n = min(n, max_blocks)
    return np.asarray(ids[:n * block], dtype=np.int64).reshape(n, block)


def blocks_digest(blocks: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(blocks).tobytes()).hexdigest()[:16]


@dataclasses.dataclass
class Source:
    """One corpus packed into blocks of ``seq_len + 1`` tokens (inputs are [:-1], labels [1:])."""

    name: str
    train: np.ndarray  # (N, seq_len + 1)
    validation: np.ndarray  # (M, seq_len + 1)


def make_source(tokenizer, splits: TextSplits, config: TrainConfig, *, need_blocks: int, role: str) -> Source:
    """Pack a corpus; refuse one too small to train on, saying how many tokens it needs."""
    block = config.seq_len + 1
    train = pack(tokenizer, splits.train, block)
    val = pack(tokenizer, splits.validation, block, max_blocks=max(1, config.eval_tokens // block))
    need = max(need_blocks, 1)
    minimum = min(need, config.batch_size) * block
    if len(train) * block < minimum:
        have = len(train) * block
        raise TrainingError(
            f"{role} corpus {splits.name!r} has {have} training tokens in whole blocks; at least {minimum} are needed "
            f"(batch_size {config.batch_size} x seq_len+1 {block}); add text or lower --batch-size/--seq-len")
    if len(val) == 0:
        raise TrainingError(f"{role} corpus {splits.name!r} has fewer than {block} validation tokens; "
                            "add validation text or lower --seq-len")
    return Source(splits.name, train, val)


class Sampler:
    """Which blocks each optimizer step trains on; its whole state is JSON (saved in checkpoints).

    Each source walks a seeded permutation of its blocks (a new permutation each epoch). Per step the
    number of domain sequences follows the share r exactly over time: round((s+1)*B*r) - round(s*B*r).
    A curriculum may push a queue of chosen domain blocks that is served before the permutation.
    """

    def __init__(self, sizes: dict[str, int], share: float, batch: int, seed: int):
        self.sizes, self.share, self.batch, self.seed = sizes, share, batch, seed
        self.state: dict[str, Any] = {"cursor": {k: 0 for k in sizes}, "queue": []}

    def _perm(self, name: str, epoch: int) -> np.ndarray:
        salt = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        return np.random.default_rng([self.seed, salt, epoch]).permutation(self.sizes[name])

    def peek(self, name: str, count: int) -> list[int]:
        """The next ``count`` block indices of ``name``'s permutation, without consuming them."""
        start, n = self.state["cursor"][name], self.sizes[name]
        perms = {e: self._perm(name, e) for e in range(start // n, (start + count - 1) // n + 1)}  # each epoch once
        return [int(perms[(start + i) // n][(start + i) % n]) for i in range(count)]

    def take(self, name: str, count: int) -> list[int]:
        out = self.peek(name, count)
        self.state["cursor"][name] += count
        return out

    def domain_count(self, step: int) -> int:
        b, r = self.batch, self.share
        return int(round((step + 1) * b * r) - round(step * b * r))

    def batch_at(self, step: int) -> list[tuple[str, int]]:
        """(source, block) pairs of step ``step``: domain first, then replay."""
        nd = self.domain_count(step)
        queue = self.state["queue"]
        from_queue, self.state["queue"] = queue[:nd], queue[nd:]
        domain = list(from_queue) + self.take("domain", nd - len(from_queue))
        items = [("domain", i) for i in domain]
        if self.batch - nd:
            items += [("replay", i) for i in self.take("replay", self.batch - nd)]
        return items


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


def trainable_named(model) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def finished_model(model, config: TrainConfig):
    """The plain HF model to save: LoRA adapters merged into the weights."""
    if config.train == "lora":
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- checkpoints
def _save_checkpoint(path: Path, model, optimizer, state: dict[str, Any]) -> None:
    """Trainable weights + AdamW moments (safetensors) and the JSON state, atomically."""
    from safetensors.torch import save_file

    named = trainable_named(model)
    index = {id(p): i for i, (_, p) in enumerate(named)}
    moments = {}
    for p, st in optimizer.state.items():
        i = index[id(p)]
        for key, value in st.items():
            moments[f"{i}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in named}, str(tmp / "trainable.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def _load_checkpoint(path: Path, model, optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    torch = require("torch", "compress")
    named = trainable_named(model)
    weights = load_file(str(path / "trainable.safetensors"))
    if set(weights) != {n for n, _ in named}:
        raise TrainingError(f"{path}: its weights do not match this model's trainable parameters; "
                            "it belongs to another run: start afresh without --resume")
    with torch.no_grad():
        for n, p in named:
            p.copy_(weights[n].to(p.device, p.dtype))
    moments = load_file(str(path / "optimizer.safetensors"))
    for i, (_, p) in enumerate(named):
        st = {k.split(".", 1)[1]: v.to(p.device) for k, v in moments.items() if k.split(".", 1)[0] == str(i)}
        if st:
            if "step" in st:
                st["step"] = st["step"].cpu()  # AdamW keeps its step counter on the CPU
            optimizer.state[p] = st
    return json.loads((path / "state.json").read_text())


def list_checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith("step-") and (p / "state.json").exists()),
                  key=lambda p: int(p.name.split("-")[1]))


def weights_fingerprint(model) -> str:
    """A hash of a strided sample of every weight (LoRA adapters excluded): fast, still specific."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        t = p.detach().float().cpu().flatten()
        h.update(name.split("base_model.model.")[-1].encode())
        h.update(t[:: max(1, t.numel() // 4096)].numpy().tobytes())
    return h.hexdigest()[:24]


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
        _save_checkpoint(path, self.accelerator.unwrap_model(self.model), optimizer, state)
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
        state = _load_checkpoint(path, self.accelerator.unwrap_model(self.model), optimizer)
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


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(out_dir) / LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

