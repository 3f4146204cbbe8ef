"""Knowledge-distillation losses and the teacher/student vocabulary check (groundwork for issue 7).

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

from typing import Any

from ..config import check
from ..errors import ConfigError, require

DIVERGENCES = ("forward", "reverse", "jsd")


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
