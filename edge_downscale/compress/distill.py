"""Knowledge distillation: losses, the vocabulary check, the KD objective, a top-k teacher cache, a curriculum.

``kd_loss`` mixes the hard-label cross-entropy with a divergence between the temperature-softened
teacher and student distributions (Hinton et al. 2015):

    loss = alpha * CE(student, labels) + (1 - alpha) * tau^2 * D(p_teacher^tau, p_student^tau)

with D one of

* ``"forward"`` -- KL(p_t || p_s), the classic mode-covering objective;
* ``"reverse"`` -- KL(p_s || p_t), mode-seeking (MiniLLM, Gu et al. 2024);
* ``"jsd"``     -- the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024):
  beta * KL(p_t || m) + (1 - beta) * KL(p_s || m), m = beta * p_t + (1 - beta) * p_s.

The tau^2 factor keeps the soft-target gradients on the CE scale as tau changes. tau = 2 is the
default, as the evidence in ``shared/research/prunenet-and-laws.md`` suggests. Positions whose
label is ``ignore_index`` (padding) count in neither term.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

import numpy as np

from ..config import check
from ..errors import ConfigError, require
from .train.checkpoints import weights_fingerprint
from .train.config import DIVERGENCES, DistillConfig, TrainConfig
from .train.engine import Engine, Objective
from .train.packing import blocks_digest, load_splits


def kd_loss(student_logits, teacher_logits, labels, *, alpha: float = 0.5, tau: float = 2.0,
            divergence: str = "forward", beta: float = 0.5, ignore_index: int = -100):
    """Scalar KD loss. student/teacher logits: (B, T, V); labels: (B, T) next-token ids (shifted)."""
    torch = require("torch", "compress")
    F = torch.nn.functional
    check(0.0 <= alpha <= 1.0, f"alpha must be in [0, 1], got {alpha}")
    check(tau > 0, f"tau must be > 0, got {tau}")
    check(divergence in DIVERGENCES, f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
    check(0.0 < beta < 1.0, f"beta must be in (0, 1), got {beta}")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ: teacher and student must share a vocabulary")
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab).float()  # (N, V)
    t = teacher_logits.reshape(-1, vocab).float().detach()  # (N, V)
    y = labels.reshape(-1)  # (N,)
    mask = y != ignore_index  # (N,)
    n = mask.sum().clamp(min=1)
    ce = F.cross_entropy(s, y, ignore_index=ignore_index, reduction="sum") / n
    log_ps = F.log_softmax(s / tau, dim=-1)  # (N, V)
    log_pt = F.log_softmax(t / tau, dim=-1)
    if divergence == "forward":
        per_pos = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # KL(p_t || p_s): (N,)
    elif divergence == "reverse":
        per_pos = (log_ps.exp() * (log_ps - log_pt)).sum(-1)  # KL(p_s || p_t)
    else:
        log_m = torch.logsumexp(torch.stack([log_pt + torch.log(torch.tensor(beta)),
                                             log_ps + torch.log(torch.tensor(1 - beta))]), dim=0)  # (N, V)
        per_pos = (beta * (log_pt.exp() * (log_pt - log_m)).sum(-1)
                   + (1 - beta) * (log_ps.exp() * (log_ps - log_m)).sum(-1))
    soft = (per_pos * mask).sum() / n
    return alpha * ce + (1 - alpha) * tau ** 2 * soft


def check_same_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """Raise a ConfigError that says what to do unless the two tokenizers map text to the same ids."""
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if t_vocab == s_vocab:
        return
    only_t = len(set(t_vocab) - set(s_vocab))
    only_s = len(set(s_vocab) - set(t_vocab))
    moved = sum(1 for tok, i in t_vocab.items() if tok in s_vocab and s_vocab[tok] != i)
    raise ConfigError(
        f"teacher and student vocabularies differ ({len(t_vocab)} vs {len(s_vocab)} tokens; {only_t} only in the "
        f"teacher, {only_s} only in the student, {moved} with other ids): logit distillation needs the same "
        "tokenizer; distil from a teacher of the same family (e.g. the model the student was pruned from)")


def topk_kl(student_logits, topk_values, topk_index, topk_lse=None, *, tau: float = 2.0):
    """Per position, KL(teacher_tau || student_tau) over the teacher's top-k tokens plus one tail bin.

    ``student_logits`` (N, V); ``topk_values``/``topk_index`` (N, k); ``topk_lse`` (N,): the teacher's
    full-vocabulary ``logsumexp(logits / tau)``. With it the teacher's top-k probabilities are exact
    and the mass it leaves outside them is compared with the student's as one extra bin (a coarsened,
    unbiased target). Without it the teacher is renormalised over its k tokens, which overstates
    them: at tau = 2 a 49k-token vocabulary's tail holds much of the mass, and a student fitted to
    the renormalised target grows over-confident (its cross-entropy rises while the loss falls).
    """
    torch = require("torch", "compress")
    F = torch.nn.functional
    log_ps = F.log_softmax(student_logits.float() / tau, dim=-1).gather(-1, topk_index.long())  # (N, k)
    if topk_lse is None:
        log_pt = F.log_softmax(topk_values.float() / tau, dim=-1)  # (N, k)
        return (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    log_pt = topk_values.float() / tau - topk_lse.float().unsqueeze(-1)  # (N, k), exact teacher log-probs

    def log_tail(lp):  # log(1 - sum_k p): the mass outside the top-k, computed stably
        return torch.log1p(-torch.logsumexp(lp, -1).exp().clamp(max=1 - 1e-6))

    pt_tail, lt_tail, ls_tail = log_pt.exp().sum(-1).neg().add(1).clamp_min(0), log_tail(log_pt), log_tail(log_ps)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1) + pt_tail * (lt_tail - ls_tail)  # (N,)


def kd_loss_topk(student_logits, topk_values, topk_index, labels, topk_lse=None, *, alpha: float = 0.5,
                 tau: float = 2.0, ignore_index: int = -100):
    """:func:`kd_loss` (forward KL) against a cached top-k teacher: (B, T, V) student, (B, T, k) teacher.

    The divergence is :func:`topk_kl` (with ``topk_lse`` (B, T), the tail as one bin). With k = V this
    equals ``kd_loss(..., divergence="forward")``.
    """
    torch = require("torch", "compress")
    F = torch.nn.functional
    vocab = student_logits.shape[-1]
    k = topk_values.shape[-1]
    s = student_logits.reshape(-1, vocab).float()  # (N, V)
    y = labels.reshape(-1)  # (N,)
    mask = y != ignore_index
    n = mask.sum().clamp(min=1)
    ce = F.cross_entropy(s, y, ignore_index=ignore_index, reduction="sum") / n
    lse = topk_lse.reshape(-1) if topk_lse is not None else None
    per_pos = topk_kl(s, topk_values.reshape(-1, k), topk_index.reshape(-1, k), lse, tau=tau)  # (N,)
    soft = (per_pos * mask).sum() / n
    return alpha * ce + (1 - alpha) * tau ** 2 * soft


class TeacherCache:
    """The teacher's top-k logits for every block a run can visit, computed once, kept on disk.

    Key: teacher weights + block contents + k + tau, so any run with the same teacher and data reuses
    it (the dense-teacher and adapted-teacher arms of a benchmark each build theirs once). Besides the
    top-k logits it keeps each position's full-vocabulary ``logsumexp(logits / tau)`` (the tail bin).
    """

    def __init__(self, k: int, tau: float = 2.0):
        self.k, self.tau = k, tau
        self.values: dict[tuple[str, int], Any] = {}  # (source, block) -> (T, k) float16
        self.index: dict[tuple[str, int], Any] = {}  # (source, block) -> (T, k) int32
        self.lse: dict[tuple[str, int], Any] = {}  # (source, block) -> (T,) float32
        self.build_seconds = 0.0
        self.loaded_from_disk = 0

    def fill(self, teacher, blocks: dict[str, tuple[list[int], Any]], *, device, micro_batch: int,
             key: str, autocast, progress: bool = True) -> None:
        """``blocks``: source -> (block ids, (N, T+1) array). Computes what the disk cache lacks."""
        from safetensors.torch import load_file, save_file

        from .._io import atomic_path, cache_dir

        torch = require("torch", "compress")
        path = cache_dir("teacher-logits") / f"{key}-k{self.k}-tau{self.tau:g}.safetensors"
        if path.exists():
            stored = load_file(str(path))
            for name in {n.split("/")[0] for n in stored}:
                ids = stored[f"{name}/blocks"].tolist()
                for j, b in enumerate(ids):
                    self.values[(name, b)] = stored[f"{name}/values"][j]
                    self.index[(name, b)] = stored[f"{name}/index"][j]
                    self.lse[(name, b)] = stored[f"{name}/lse"][j]
            self.loaded_from_disk = len(self.values)
        todo = [(src, b) for src, (ids, _) in blocks.items() for b in sorted(set(ids)) if (src, b) not in self.values]
        if not todo:
            return
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="teacher top-k logits", unit="block", dynamic_ncols=True)
        teacher.eval()
        with torch.no_grad(), autocast():
            for i in range(0, len(todo), micro_batch):
                chunk = todo[i:i + micro_batch]
                rows = np.stack([blocks[src][1][b] for src, b in chunk])  # (b, T + 1)
                logits = teacher(input_ids=torch.from_numpy(rows[:, :-1]).to(device)).logits.float()  # (b, T, V)
                vals, idx = logits.topk(self.k, dim=-1)  # (b, T, k)
                lse = torch.logsumexp(logits / self.tau, dim=-1)  # (b, T)
                for j, item in enumerate(chunk):
                    self.values[item] = vals[j].half().cpu()
                    self.index[item] = idx[j].int().cpu()
                    self.lse[item] = lse[j].float().cpu()
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        self.build_seconds = time.perf_counter() - t0
        tensors = {}
        for name in {src for src, _ in self.values}:
            keys = sorted(b for src, b in self.values if src == name)
            tensors[f"{name}/blocks"] = torch.tensor(keys, dtype=torch.int64)
            tensors[f"{name}/values"] = torch.stack([self.values[(name, b)] for b in keys])
            tensors[f"{name}/index"] = torch.stack([self.index[(name, b)] for b in keys])
            tensors[f"{name}/lse"] = torch.stack([self.lse[(name, b)] for b in keys])
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))

    def batch(self, items, device):
        torch = require("torch", "compress")
        vals = torch.stack([self.values[it] for it in items]).to(device)  # (B, T, k)
        idx = torch.stack([self.index[it] for it in items]).to(device)
        lse = torch.stack([self.lse[it] for it in items]).to(device)  # (B, T)
        return vals, idx, lse


class KDObjective(Objective):
    """Teacher -> student: :func:`kd_loss` (or its cached top-k form) plus optional hidden-state MSE.

    Curriculum ("divergence", after MPDistil's student-aware curriculum, Sengupta et al. ICLR 2024):
    every ``curriculum_every`` steps, score ``curriculum_pool`` x the next phase's domain blocks by the
    current teacher-student KL and train the phase on the most divergent ones, hardest first. The
    quiz (held-out validation blocks) is the reward signal: when the student's quiz KL rose since
    the last refresh, the next phase takes its candidates in plain order instead.
    """

    name = "kd"

    def __init__(self, teacher, config: DistillConfig, *, teacher_id: str = ""):
        self.teacher, self.kd, self.teacher_id = teacher, config, teacher_id
        self.cache: TeacherCache | None = None
        self.state: dict[str, Any] = {"quiz_kl": None}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "teacher": self.teacher_id, **self.kd.to_dict()}

    # -- set-up: the teacher on the device, the cache for every block the run can visit -----------
    def setup(self, engine: Engine) -> None:
        self.engine = engine
        self.teacher.to(engine.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if not self.kd.cache_topk and self.kd.curriculum == "none":
            return
        self.cache = TeacherCache(self.kd.cache_topk or 64, self.kd.tau)
        cfg, sampler = engine.config, engine.sampler
        remaining = range(engine.state["step"], cfg.steps)
        need_domain = sum(sampler.domain_count(s) for s in remaining)
        factor = self.kd.curriculum_pool if self.kd.curriculum != "none" else 1.0
        want = {"domain": sampler.peek("domain", math.ceil(need_domain * factor) + cfg.batch_size)
                + list(sampler.state["queue"])}
        if "replay" in engine.sources:
            want["replay"] = sampler.peek("replay", len(remaining) * cfg.batch_size - need_domain + cfg.batch_size)
        blocks = {src: (ids, engine.sources[src].train) for src, ids in want.items()}
        quiz = engine.sources["domain"].validation[: self.kd.quiz_blocks]
        blocks["quiz"] = (list(range(len(quiz))), quiz)
        key = hashlib.sha256(json.dumps({"teacher": self.teacher_id, "data": {
            s: blocks_digest(a) for s, (_, a) in blocks.items()}}, sort_keys=True).encode()).hexdigest()[:24]
        mb = cfg.micro_batch or cfg.batch_size
        self.cache.fill(self.teacher, blocks, device=engine.device, micro_batch=mb, key=key,
                        autocast=engine.accelerator.autocast, progress=engine.progress)
        engine.log({"event": "teacher_cache", "k": self.cache.k, "blocks": len(self.cache.values),
                    "loaded_from_disk": self.cache.loaded_from_disk, "build_seconds": round(self.cache.build_seconds, 2)})

    # -- the loss ---------------------------------------------------------------------------------
    def loss(self, model, batch):
        torch = require("torch", "compress")
        kd = self.kd
        want_hidden = kd.hidden_weight > 0
        out = model(input_ids=batch["input_ids"], output_hidden_states=want_hidden)
        if kd.cache_topk:
            vals, idx, lse = self.cache.batch(batch["items"], batch["input_ids"].device)
            return kd_loss_topk(out.logits, vals, idx, batch["labels"], lse, alpha=kd.alpha, tau=kd.tau)
        with torch.no_grad():
            t_out = self.teacher(input_ids=batch["input_ids"], output_hidden_states=want_hidden)
        loss = kd_loss(out.logits, t_out.logits, batch["labels"], alpha=kd.alpha, tau=kd.tau,
                       divergence=kd.divergence, beta=kd.beta)
        if want_hidden:
            # Hidden-state alignment: FFN pruning keeps the residual width, so layer l maps onto layer l.
            pairs = list(zip(out.hidden_states[1:], t_out.hidden_states[1:]))  # L x ((B, T, C), (B, T, C))
            mse = sum(torch.nn.functional.mse_loss(s.float(), t.float()) for s, t in pairs) / len(pairs)
            loss = loss + kd.hidden_weight * mse
        return loss

    # -- the curriculum ---------------------------------------------------------------------------
    def _block_kl(self, model, items, rows) -> list[float]:
        """Mean per-token KL(teacher_tau || student_tau) of each block, from the cached teacher."""
        torch = require("torch", "compress")
        engine, tau = self.engine, self.kd.tau
        mb = engine.config.micro_batch or engine.config.batch_size
        out: list[float] = []
        model.eval()
        with torch.no_grad(), engine.accelerator.autocast():
            for i in range(0, len(items), mb):
                ids = torch.from_numpy(rows[i:i + mb][:, :-1]).to(engine.device)  # (b, T)
                vals, idx, lse = self.cache.batch(items[i:i + mb], engine.device)  # (b, T, k), (b, T)
                out += topk_kl(model(input_ids=ids).logits, vals, idx, lse, tau=tau).mean(-1).tolist()  # (b,)
        model.train()
        return out

    def on_step(self, engine: Engine, step: int) -> dict[str, Any] | None:
        kd, sampler, cfg = self.kd, engine.sampler, engine.config
        if kd.curriculum == "none" or step % kd.curriculum_every:
            return None
        phase = range(step, min(cfg.steps, step + kd.curriculum_every))
        need = sum(sampler.domain_count(s) for s in phase) - len(sampler.state["queue"])
        if need <= 0:
            return None
        model = engine.model
        quiz = engine.sources["domain"].validation[: kd.quiz_blocks]
        quiz_kl = float(np.mean(self._block_kl(model, [("quiz", i) for i in range(len(quiz))], quiz)))
        previous = self.state.get("quiz_kl")
        mode = "uniform" if previous is not None and quiz_kl > previous else "hard-first"
        cand = sampler.take("domain", math.ceil(need * kd.curriculum_pool))
        rows = engine.sources["domain"].train[cand]
        kl = self._block_kl(model, [("domain", b) for b in cand], rows)
        if mode == "hard-first":
            order = sorted(range(len(cand)), key=lambda j: -kl[j])[:need]
        else:
            order = list(range(need))
        sampler.state["queue"] = sampler.state["queue"] + [int(cand[j]) for j in order]
        self.state = {"quiz_kl": quiz_kl}
        return {"quiz_kl": quiz_kl, "mode": mode, "candidates": len(cand), "chosen": need,
                "kl_chosen": float(np.mean([kl[j] for j in order])), "kl_candidates": float(np.mean(kl))}


def distill(teacher: str, student: str, domain, out_dir, *, config: TrainConfig | None = None,
            kd: DistillConfig | None = None, replay=None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` on ``domain``; the student lands in ``out_dir`` as an HF directory.

    ``teacher``/``student``: registry names, HF directories or GGUF files; ``domain``/``replay``: demo
    domain names, corpus directories or :class:`TextSplits`. Returns the eval summary.
    """
    from ..models import load_torch

    config = config or TrainConfig()
    kd = kd or DistillConfig()
    t_model, t_tok, t_info = load_torch(teacher)
    s_model, s_tok, s_info = load_torch(student)
    check_same_vocabulary(t_tok, s_tok)
    if kd.hidden_weight and t_model.config.hidden_size != s_model.config.hidden_size:
        raise ConfigError(f"hidden-state alignment needs equal hidden sizes (teacher {t_model.config.hidden_size}, "
                          f"student {s_model.config.hidden_size}); set --hidden-weight 0")
    if kd.hidden_weight and t_model.config.num_hidden_layers != s_model.config.num_hidden_layers:
        raise ConfigError("hidden-state alignment matches layer l to layer l: teacher and student need as many "
                          "layers; set --hidden-weight 0")
    objective = KDObjective(t_model, kd, teacher_id=weights_fingerprint(t_model))
    engine = Engine(s_model, s_tok, objective, load_splits(domain), config, out_dir,
                    replay=load_splits(replay) if replay is not None else None, kind="distill",
                    meta={"teacher": t_info, "student": s_info}, resume=resume, progress=progress)
    return engine.run()
