"""PruneNet: calibration-free structured FFN pruning by a learned policy.

Sengupta, Chaudhary, Chakraborty, "You Only Prune Once: Designing Calibration-Free Model
Compression With Policy Learning" (ICLR 2025), following the authors' code (LCS2-IIITD/PruneNet,
``experiments/prunenet.py``, ``SparsityPredictor.py``):

* The state is the weight matrix itself (``gate_proj``, d_ff x d_model); no data is used.
* One policy network shared by all layers: ``alpha = sigmoid(Linear(d_model -> d_ff)(W) @ v)``,
  v initialised from U(0, 1) (d_ff x 1): keep-probabilities (d_ff,).
* The action: a binary-Concrete (relaxed Bernoulli) sample ``keep`` from alpha, then k rows drawn
  from ``keep`` without replacement (multinomial), at training *and* at pruning time (seeded here).
* Reward of layer l: ``R_l = 1 / KS(svals(W_l), svals(W_l[kept]))``, the two-sample
  Kolmogorov-Smirnov statistic between the singular values before and after slicing.
* ``gradient="reinforce"`` (their code): the whole episode is sampled, then for each layer, in
  order, ``loss_l = -gamma^l R_l sum_{j in kept} log keep'_l[j]`` with ``keep'`` a fresh relaxed
  sample, one AdamW step per layer; the policy after the episode with the largest summed reward is kept.
* ``gradient="baselined"`` (ours, variance-reduced): ``samples`` draws per layer, advantages
  standardised around their mean reward, the exact log-probability of each draw (policy.py), one
  AdamW step per episode.
* ``train_ratio=None`` learns at the ratio it prunes at (their code); a number learns once there and
  reuses the policy at every ratio (the paper's "prune once" claim).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..._io import atomic_path
from ...config import StageConfig, check, check_int, is_number
from ...errors import ConfigError, require
from .ffn import PruneError, check_finite, ffn_layers, ffn_width, kept_width, layout_for
from .policy import draw_order, generator, gumbel, plackett_luce_log_prob, standardised

POLICY_WEIGHTS = "policy.safetensors"
POLICY_CONFIG = "policy.json"
GRADIENTS = ("reinforce", "baselined")
SELECTIONS = ("sample", "topk")


@dataclasses.dataclass
class PruneNetConfig(StageConfig):
    """Policy learning settings (defaults follow the paper and the authors' code: 20 episodes, discount 0.99)."""

    stage: ClassVar[str] = "prunenet"
    train_ratio: float | None = None  # null: learn at each target ratio (their code); a ratio: learn once, reuse
    episodes: int = 20
    lr: float = 1e-4  # AdamW (the paper's value; their code's default is 1e-3 under fp16 autocast)
    discount: float = 0.99  # reinforce: layer l's reward is weighted gamma^l
    temperature: float = 1.0  # binary-Concrete temperature
    multiple: int = 64  # kept widths are rounded to this
    gradient: str = "reinforce"  # reinforce (their code) | baselined (several draws per layer, standardised advantages)
    samples: int = 4  # baselined: draws per layer per episode
    select: str = "sample"  # at pruning: sample (their code: a seeded draw) | topk (highest keep-probabilities)
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU

    def validate(self) -> None:
        check(self.train_ratio is None or (is_number(self.train_ratio) and 0 < self.train_ratio < 1),
              f"train_ratio must be in (0, 1) or null (learn at the target ratio), got {self.train_ratio!r}")
        check_int(self, "episodes", 1)
        check(is_number(self.lr) and self.lr > 0, "lr must be > 0")
        check(is_number(self.discount) and 0 < self.discount <= 1, "discount must be in (0, 1]")
        check(is_number(self.temperature) and self.temperature > 0, "temperature must be > 0")
        check_int(self, "multiple", 1)
        check(self.gradient in GRADIENTS, f"gradient must be one of {', '.join(GRADIENTS)}, got {self.gradient!r}")
        check_int(self, "samples", 1)
        check(self.gradient != "baselined" or self.samples >= 2,
              f"the baselined gradient needs samples >= 2 (their mean is the baseline), got {self.samples}")
        check(self.select in SELECTIONS, f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        check_int(self, "seed")
        check(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")),
              f"device must be auto, cpu or cuda[:N], got {self.device!r}")


def _device(name: str):
    torch = require("torch", "compress")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_width(d_ff: int, config, ratio: float | None) -> tuple[float, int]:
    """The ratio a policy learns at (``config.train_ratio``, else ``ratio``) and its kept width."""
    r = config.train_ratio if config.train_ratio is not None else ratio
    if r is None:
        raise ConfigError("the policy learns at the target ratio: pass ratio=..., or set train_ratio to learn "
                          "once and reuse the policy at every ratio")
    return float(r), kept_width(d_ff, r, config.multiple)


def _policy_module(d_model: int, d_ff: int):
    """The shared policy network: W (d_ff, d_model) -> keep-probabilities alpha (d_ff,)."""
    torch = require("torch", "compress")
    nn = torch.nn

    class PolicyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(d_model, d_ff)  # applied to each row of W
            self.v = nn.Parameter(torch.rand(d_ff, 1))  # U(0, 1), as in their code

        def forward(self, w):  # w: (d_ff, d_model)
            # sigmoid(proj(W) @ v) without the (d_ff, d_ff) product: (W P^T + 1 b^T) v = W (P^T v) + b.v,
            # the same function of the same parameters (same gradients), O(d_ff d_model) instead of O(d_ff^2 d_model)
            u = self.proj.weight.T @ self.v  # (d_model, 1)
            return torch.sigmoid(w @ u + self.proj.bias @ self.v).squeeze(-1)  # (d_ff,)

    return PolicyNet()


def relaxed_keep(alpha, temperature: float, gen):
    """A binary-Concrete sample (d_ff,) in (0, 1) from keep-probabilities alpha, noise from ``gen``.

    ``sigmoid((logit alpha + log u - log(1 - u)) / t)``, u ~ U(0, 1): differentiable in alpha.
    """
    torch = require("torch", "compress")
    alpha = alpha.clamp(1e-6, 1 - 1e-6)
    u = torch.rand(alpha.shape, generator=gen, device=alpha.device).clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid((torch.logit(alpha) + torch.log(u) - torch.log1p(-u)) / temperature).clamp_min(1e-12)


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (scipy), on CPU float64 copies."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()).statistic)


def spectrum_ks(weight, index) -> float:
    """KS distance between the singular values of ``weight`` and of its rows ``index``."""
    torch = require("torch", "compress")
    w = weight.detach().float()
    return ks_statistic(torch.linalg.svdvals(w), torch.linalg.svdvals(w.index_select(0, index)))


class LearnedPolicy:
    """A learned pruning policy: a small torch module and its JSON metadata, saved as one directory.

    Subclasses name their ``method`` and build an empty module from the metadata (``_new_net``).
    """

    method: ClassVar[str]

    def __init__(self, net, meta: dict[str, Any]):
        self.net = net
        self.meta = meta

    @staticmethod
    def _new_net(meta: dict[str, Any]):
        raise NotImplementedError

    def save(self, out_dir: str | Path) -> Path:
        """Write ``policy.safetensors`` + ``policy.json`` atomically (one directory)."""
        return save_policy(self.net, self.meta, out_dir)

    @classmethod
    def load(cls, path: str | Path):
        meta, state = load_policy_files(path, cls.method)
        net = cls._new_net(meta)
        net.load_state_dict(state)
        net.eval()
        return cls(net, meta)


class PruneNetPolicy(LearnedPolicy):
    """A learned PruneNet policy: scores FFN rows of any layer with matching shape."""

    method: ClassVar[str] = "prunenet"

    @staticmethod
    def _new_net(meta: dict[str, Any]):
        return _policy_module(int(meta["d_model"]), int(meta["d_ff"]))

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    @property
    def d_ff(self) -> int:
        return int(self.meta["d_ff"])

    @property
    def config(self) -> PruneNetConfig:
        return PruneNetConfig.from_dict(self.meta["config"])

    def keep_probabilities(self, weight):
        """alpha for one gate_proj weight (d_ff, d_model) -> (d_ff,)."""
        torch = require("torch", "compress")
        if tuple(weight.shape) != (self.d_ff, self.d_model):
            raise PruneError(
                f"policy was learned for FFN {self.d_ff}x{self.d_model}, this layer is "
                f"{tuple(weight.shape)[0]}x{tuple(weight.shape)[1]}: learn a policy for this model"
            )
        p = next(self.net.parameters())
        with torch.no_grad():
            return self.net(weight.detach().to(device=p.device, dtype=p.dtype)).cpu()

    def scores(self, model, *, seed: int = 0) -> list:
        """Per-layer row scores whose top-k is the action: a seeded draw (``select="sample"``) or top-k alpha.

        The draw is their code's: a relaxed sample ``keep`` from alpha, then rows drawn from ``keep``
        without replacement, as the top-k of ``log keep + Gumbel`` (the same distribution, policy.py).
        """
        torch = require("torch", "compress")
        config = self.config
        gen = generator(seed)
        out = []
        for f in ffn_layers(model):
            alpha = self.keep_probabilities(f.gate.weight)  # (d_ff,)
            if config.select == "topk":
                out.append(alpha)
            else:
                keep = relaxed_keep(alpha, config.temperature, gen)
                out.append(torch.log(keep) + gumbel(keep.shape, gen))  # (d_ff,)
        return out



def save_policy(net, meta: dict[str, Any], out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / POLICY_WEIGHTS), metadata={"format": "pt"})
        (tmp / POLICY_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def load_policy_files(path: str | Path, method: str) -> tuple[dict[str, Any], dict]:
    """(meta, state dict) of a saved policy of ``method``; a typed error for anything else."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / POLICY_WEIGHTS).exists() or not (path / POLICY_CONFIG).exists():
        raise PruneError(f"{path} is not a PruneNet policy (needs {POLICY_WEIGHTS} and {POLICY_CONFIG})")
    meta = json.loads((path / POLICY_CONFIG).read_text())
    if meta.get("method", "prunenet") != method:
        raise PruneError(f"{path} holds a {meta.get('method')!r} policy, not {method!r}: "
                         f"use --method {meta.get('method')} or learn a {method} policy")
    return meta, load_file(str(path / POLICY_WEIGHTS))


# ----------------------------------------------------------------------------------------- learning
@dataclasses.dataclass
class _Episode:
    """What one episode needs: the policy, its optimizer, the states and their spectra, the width, the RNG."""

    policy: Any
    opt: Any
    states: list  # L x (d_ff, d_model)
    svals: list  # L x (min(d_ff, d_model),)
    k: int
    config: PruneNetConfig
    gen: Any

    def reward(self, l: int, idx) -> tuple[float, float]:
        """(1 / KS, KS) of layer l keeping rows ``idx``."""
        torch = require("torch", "compress")
        with torch.no_grad():
            ks = ks_statistic(self.svals[l], torch.linalg.svdvals(self.states[l].index_select(0, idx)))
        return 1.0 / max(ks, 1e-3), ks  # guard KS = 0 (identical spectra); their code returns 99999


def _reinforce_episode(ep: _Episode) -> tuple[list[float], list[float]]:
    """Their code: sample the episode, then per layer ``-gamma^l R_l sum log keep'[kept]``, one step each."""
    torch = require("torch", "compress")
    actions, rewards, layer_ks = [], [], []
    with torch.no_grad():
        for l, w in enumerate(ep.states):
            keep = relaxed_keep(ep.policy(w), ep.config.temperature, ep.gen)  # (d_ff,)
            idx = draw_order(torch.log(keep), ep.k, ep.gen).sort().values  # (k,)
            r, ks = ep.reward(l, idx)
            actions.append(idx)
            rewards.append(r)
            layer_ks.append(ks)
    for l, (w, idx) in enumerate(zip(ep.states, actions)):
        keep = relaxed_keep(ep.policy(w), ep.config.temperature, ep.gen)  # a fresh relaxed sample, as theirs
        loss = -(ep.config.discount ** l * rewards[l]) * torch.log(keep.index_select(0, idx)).sum()
        ep.opt.zero_grad()
        loss.backward()
        ep.opt.step()
    return rewards, layer_ks


def _baselined_episode(ep: _Episode) -> tuple[list[float], list[float]]:
    """``samples`` draws per layer, advantages standardised around their mean, the draws' exact log-probability.

    Gradients accumulate over the layers and one step follows the episode: every draw comes from the
    same parameters. The discount does not apply: each layer is its own bandit, its advantages unit-scaled.
    """
    torch = require("torch", "compress")
    ep.opt.zero_grad()
    rewards, layer_ks = [], []
    n_layers = len(ep.states)
    for l, w in enumerate(ep.states):
        alpha = ep.policy(w)  # (d_ff,)
        draws, log_probs = [], []
        for _ in range(ep.config.samples):
            log_keep = torch.log(relaxed_keep(alpha, ep.config.temperature, ep.gen))  # (d_ff,)
            order = draw_order(log_keep, ep.k, ep.gen)  # (k,) in draw order
            draws.append(ep.reward(l, order.sort().values))
            log_probs.append(plackett_luce_log_prob(log_keep, order))
        adv = standardised([r for r, _ in draws]).to(alpha.device)  # (samples,)
        loss = -(adv * torch.stack(log_probs)).mean() / n_layers
        loss.backward()
        rewards.append(sum(r for r, _ in draws) / len(draws))
        layer_ks.append(sum(ks for _, ks in draws) / len(draws))
    ep.opt.step()
    return rewards, layer_ks


EPISODES: dict[str, Callable[[_Episode], tuple[list[float], list[float]]]] = {
    "reinforce": _reinforce_episode, "baselined": _baselined_episode,
}


def learn_policy(model, config: PruneNetConfig | None = None, *, ratio: float | None = None,
                 progress: bool = True) -> PruneNetPolicy:
    """Learn a PruneNet policy from the model's FFN weights alone (no calibration data).

    It learns at ``config.train_ratio`` if set, else at ``ratio`` (the ratio it will prune at).
    ``meta["history"]`` has, per episode, the summed reward, the mean KS and the spread (std) of the
    keep-probabilities: whether it learns can be read off it.
    """
    torch = require("torch", "compress")
    from tqdm.auto import tqdm

    config = config or PruneNetConfig()
    layout_for(model)
    check_finite(model)
    device = _device(config.device)
    torch.manual_seed(config.seed)  # the policy's initial weights
    gen = generator(config.seed, device)  # every sample of the episodes

    # States: every layer's gate_proj weight (L x (d_ff, d_model)), and its spectrum (computed once).
    states = [f.gate.weight.detach().to(device=device, dtype=torch.float32) for f in ffn_layers(model)]
    d_ff, d_model = states[0].shape
    if d_ff != ffn_width(model):
        raise PruneError("FFN widths differ between layers: pruning needs a uniform intermediate_size")
    r, k = train_width(d_ff, config, ratio)
    svals = [torch.linalg.svdvals(w) for w in states]  # L x (min(d_ff, d_model),)

    policy = _policy_module(d_model, d_ff).to(device)
    ep = _Episode(policy, torch.optim.AdamW(policy.parameters(), lr=config.lr), states, svals, k, config, gen)
    best_reward, best_state, best_ks = -float("inf"), None, None
    history = []
    t0 = time.perf_counter()
    bar = tqdm(total=config.episodes, desc=f"PruneNet policy ({config.gradient})", unit="episode",
               disable=not progress)
    for episode in range(config.episodes):
        with torch.no_grad():  # the spread of the scores the episode was sampled from
            alphas = [policy(w) for w in states]
        rewards, layer_ks = EPISODES[config.gradient](ep)
        total = sum(rewards)
        history.append({"episode": episode, "reward": total, "mean_ks": sum(layer_ks) / len(layer_ks),
                        "alpha_mean": sum(float(a.mean()) for a in alphas) / len(alphas),
                        "alpha_std": sum(float(a.std()) for a in alphas) / len(alphas)})
        if total > best_reward:  # their code keeps the policy as it stands after the best episode's update
            best_reward, best_ks = total, layer_ks
            best_state = copy.deepcopy(policy.state_dict())
        bar.update()
        bar.set_postfix(reward=f"{total:.1f}", best=f"{best_reward:.1f}", alpha_std=f"{history[-1]['alpha_std']:.3f}")
    bar.close()
    policy.load_state_dict(best_state)
    policy.eval()
    meta = {
        "method": "prunenet", "d_model": int(d_model), "d_ff": int(d_ff), "n_layers": len(states),
        "architecture": model.config.model_type, "config": config.to_dict(), "train_ratio": r, "train_width": k,
        "best_reward": best_reward, "best_layer_ks": best_ks, "history": history,
        "seconds": round(time.perf_counter() - t0, 2), "device": str(device),
    }
    return PruneNetPolicy(policy, meta)
