"""PruneNet: calibration-free structured FFN pruning by a learned policy.

Sengupta, Chaudhary, Chakraborty, "You Only Prune Once: Designing Calibration-Free Model
Compression With Policy Learning" (ICLR 2025). Re-implemented from the paper's description:

* The state is the weight matrix itself (``gate_proj``, d_ff x d_model); no data is used.
* One policy network shared by all layers: ``H = Linear(d_model -> d_ff)(W)`` (d_ff x d_ff) and
  keep-probabilities ``alpha = sigmoid(H @ v)`` with ``v ~ U(0, 1)`` (d_ff x 1).
* An action samples a binary-Concrete (relaxed Bernoulli, temperature 1) vector from ``alpha`` and
  draws k rows from it by multinomial sampling *without replacement*.
* Reward of layer l: ``R_l = 1 / KS(svals(W_l), svals(W_l[kept]))``, the two-sample
  Kolmogorov-Smirnov statistic between the singular values before and after slicing: a good
  subset preserves the *shape* of the spectrum.
* REINFORCE without a baseline: walking the layers in order, ``G_l = gamma^l * R_l`` and
  ``loss_l = -G_l * sum_{j in kept} log keep_l[j]``; AdamW; the policy of the episode with the
  largest summed reward is kept.
* Prune once, compress many: the policy ranks rows independently of the ratio, so one learned
  policy prunes at any ratio (here: the top-k rows by ``alpha``, a deterministic choice).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, ClassVar

from ..._io import atomic_path
from ...config import StageConfig, check
from ...errors import require
from .ffn import PruneError, check_finite, ffn_layers, ffn_width, kept_width, layout_for

POLICY_WEIGHTS = "policy.safetensors"
POLICY_CONFIG = "policy.json"


@dataclasses.dataclass
class PruneNetConfig(StageConfig):
    """Policy learning settings (defaults follow the paper: 15-20 episodes, AdamW 1e-4, discount 0.99)."""

    stage: ClassVar[str] = "prunenet"
    train_ratio: float = 0.4  # the ratio the policy is learned at (the paper reuses a 40% policy at 10-30%)
    episodes: int = 20
    lr: float = 1e-4
    discount: float = 0.99
    temperature: float = 1.0  # binary-Concrete temperature
    multiple: int = 64  # kept widths are rounded to this
    baseline: bool = False  # paper: no baseline; True subtracts a per-layer running mean of the reward
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU

    def validate(self) -> None:
        check(0 < self.train_ratio < 1, f"train_ratio must be in (0, 1), got {self.train_ratio}")
        check(self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}")
        check(self.lr > 0, "lr must be > 0")
        check(0 < self.discount <= 1, "discount must be in (0, 1]")
        check(self.temperature > 0, "temperature must be > 0")
        check(self.multiple >= 1, "multiple must be >= 1")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
              f"device must be auto, cpu or cuda[:N], got {self.device!r}")


def _device(name: str):
    torch = require("torch", "compress")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _policy_module(d_model: int, d_ff: int):
    """The shared policy network: W (d_ff, d_model) -> keep-probabilities alpha (d_ff,)."""
    torch = require("torch", "compress")
    nn = torch.nn

    class PolicyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(d_model, d_ff)  # applied to each row of W
            self.v = nn.Parameter(torch.rand(d_ff, 1))  # U(0, 1), as in the paper

        def forward(self, w):  # w: (d_ff, d_model)
            h = self.proj(w)  # (d_ff, d_ff)
            return torch.sigmoid(h @ self.v).squeeze(-1)  # (d_ff,)

    return PolicyNet()


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (scipy), on CPU float64 copies."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()).statistic)


def spectrum_ks(weight, index) -> float:
    """KS distance between the singular values of ``weight`` and of its rows ``index``."""
    torch = require("torch", "compress")
    w = weight.detach().float()
    return ks_statistic(torch.linalg.svdvals(w), torch.linalg.svdvals(w.index_select(0, index)))


class PruneNetPolicy:
    """A learned PruneNet policy: scores FFN rows of any layer with matching shape."""

    def __init__(self, net, meta: dict[str, Any]):
        self.net = net
        self.meta = meta

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    @property
    def d_ff(self) -> int:
        return int(self.meta["d_ff"])

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

    def save(self, out_dir: str | Path) -> Path:
        """Write ``policy.safetensors`` + ``policy.json`` atomically (one directory)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
            save_file(state, str(tmp / POLICY_WEIGHTS), metadata={"format": "pt"})
            (tmp / POLICY_CONFIG).write_text(json.dumps(self.meta, indent=2) + "\n")
        return out_dir

    @classmethod
    def load(cls, path: str | Path) -> "PruneNetPolicy":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / POLICY_WEIGHTS).exists() or not (path / POLICY_CONFIG).exists():
            raise PruneError(f"{path} is not a PruneNet policy (needs {POLICY_WEIGHTS} and {POLICY_CONFIG})")
        meta = json.loads((path / POLICY_CONFIG).read_text())
        net = _policy_module(int(meta["d_model"]), int(meta["d_ff"]))
        net.load_state_dict(load_file(str(path / POLICY_WEIGHTS)))
        net.eval()
        return cls(net, meta)


def learn_policy(model, config: PruneNetConfig | None = None, *, progress: bool = True) -> PruneNetPolicy:
    """Learn a PruneNet policy from the model's FFN weights alone (no calibration data)."""
    torch = require("torch", "compress")
    from tqdm.auto import tqdm

    config = config or PruneNetConfig()
    layout_for(model)
    check_finite(model)
    device = _device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)

    # States: every layer's gate_proj weight (L x (d_ff, d_model)), and its spectrum (computed once).
    states = [f.gate.weight.detach().to(device=device, dtype=torch.float32) for f in ffn_layers(model)]
    d_ff, d_model = states[0].shape
    if d_ff != ffn_width(model):
        raise PruneError("FFN widths differ between layers: pruning needs a uniform intermediate_size")
    k = kept_width(d_ff, config.train_ratio, config.multiple)
    svals = [torch.linalg.svdvals(w) for w in states]  # L x (min(d_ff, d_model),)

    policy = _policy_module(d_model, d_ff).to(device)
    opt = torch.optim.AdamW(policy.parameters(), lr=config.lr)
    best_reward, best_state, best_ks = -float("inf"), None, None
    running = [None] * len(states)  # per-layer reward baselines (only with config.baseline)
    history = []
    t0 = time.perf_counter()
    bar = tqdm(total=config.episodes * len(states), desc="PruneNet policy", unit="layer", disable=not progress)
    for episode in range(config.episodes):
        total_reward, layer_ks = 0.0, []
        for l, w in enumerate(states):
            alpha = policy(w).clamp(1e-6, 1 - 1e-6)  # (d_ff,) keep-probabilities
            keep = torch.distributions.RelaxedBernoulli(
                torch.tensor(config.temperature, device=device), probs=alpha).rsample()  # (d_ff,) in (0, 1)
            idx = torch.multinomial(keep.detach() + 1e-12, k, replacement=False, generator=gen).sort().values
            with torch.no_grad():
                ks = ks_statistic(svals[l], torch.linalg.svdvals(w.index_select(0, idx)))
            reward = 1.0 / max(ks, 1e-3)  # guard KS = 0 (identical spectra)
            advantage = reward
            if config.baseline:  # variance reduction: reinforce only better-than-usual subsets
                advantage = reward - (running[l] if running[l] is not None else reward)
                running[l] = reward if running[l] is None else 0.9 * running[l] + 0.1 * reward
            ret = config.discount ** l * advantage  # G_l
            loss = -ret * torch.log(keep.index_select(0, idx).clamp_min(1e-8)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_reward += reward
            layer_ks.append(ks)
            bar.update()
        history.append({"episode": episode, "reward": total_reward, "mean_ks": sum(layer_ks) / len(layer_ks)})
        if total_reward > best_reward:
            best_reward, best_ks = total_reward, layer_ks
            best_state = copy.deepcopy(policy.state_dict())
        bar.set_postfix(episode=episode + 1, reward=f"{total_reward:.1f}", best=f"{best_reward:.1f}")
    bar.close()
    policy.load_state_dict(best_state)
    policy.eval()
    meta = {
        "method": "prunenet", "d_model": int(d_model), "d_ff": int(d_ff), "n_layers": len(states),
        "architecture": model.config.model_type, "config": config.to_dict(), "train_width": k,
        "best_reward": best_reward, "best_layer_ks": best_ks, "history": history,
        "seconds": round(time.perf_counter() - t0, 2), "device": str(device),
    }
    return PruneNetPolicy(policy, meta)
