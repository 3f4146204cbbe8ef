"""``ffn-policy``: calibration-free FFN row pruning by a policy that reads the whole FFN and is
rewarded for keeping the FFN's output.

It keeps PruneNet's framework (Sengupta, Chaudhary, Chakraborty, ICLR 2025: one policy shared by all
layers, learned by policy gradient from the model alone, no calibration data) and changes what it
sees, what it is rewarded for and how it learns:

* State, per row j of layer l: features of the gate row g_j, the up row u_j, the down column w_j
  and the layer's input-norm scale gamma (``post_attention_layernorm``): log ||gamma g_j||,
  log ||gamma u_j||, log ||w_j||, log ||g_j||, log ||u_j||, the gamma-weighted cosine of g_j and
  u_j, log rms_x(a_j) and log(rms_x(a_j) ||w_j||), with a_j = act(g_j . x)(u_j . x) on the
  reward's inputs; standardised within the layer (L x (d_ff, F)). The policy is linear,
  ``logits = features @ beta`` (beta zero at start: every row alike), so what it learned is F numbers.
* Reward of a kept set S: ``-||FFN(X) - FFN_S(X)||^2 / ||FFN(X)||^2``, the FFN's relative output
  change on inputs X (n x d_model per layer, fixed) that no text of ours produces (``INPUTS``):
  ``self-generated`` (the default): the FFN inputs on text the model samples itself, as LLM-QAT
  (Liu et al., 2023) distils on self-generated data; ``random-tokens``: on uniformly random ids;
  ``norm``: ``gamma * z, z ~ N(0, I)``, the layer's norm statistics alone, as ZeroQ (Cai et al.,
  CVPR 2020) and DFQ (Nagel et al., ICCV 2019) synthesise inputs from BatchNorm statistics. The
  output-change objective is the data-free counterpart of Wanda's ||h_j|| ||W_:,j|| (Sun et al., 2023).
  Chosen by measurement on SmolLM2-135M at 30% (README): norm closes about a fifth of the random ->
  activation-aware gap, self-generated about 90%.
* Gradient: Plackett-Luce draws of k rows from ``softmax(logits)``, ``samples`` per layer per
  episode, advantages standardised around their mean reward, one AdamW step per episode (policy.py).
* Pruning keeps the k rows of highest logit (``select="topk"``) or a seeded draw (``"sample"``).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

from ...config import StageConfig, check, check_int, is_number
from ...errors import require
from .ffn import PruneError, check_finite, ffn_layers, ffn_width, layout_for
from .policy import draw_order, generator, gumbel, plackett_luce_log_prob, standardised
from .prunenet import SELECTIONS, LearnedPolicy, _device, train_width

FEATURES = ("log_norm_gamma_gate", "log_norm_gamma_up", "log_norm_down", "log_norm_gate", "log_norm_up",
            "cos_gate_up", "log_rms_act", "log_rms_act_x_down")


@dataclasses.dataclass
class FFNPolicyConfig(StageConfig):
    """ffn-policy learning settings."""

    stage: ClassVar[str] = "ffn_policy"
    train_ratio: float | None = None  # null: learn at each target ratio; a ratio: learn once, reuse at every ratio
    episodes: int = 20
    lr: float = 0.05  # AdamW on the F feature weights
    samples: int = 4  # draws per layer per episode (their mean reward is the baseline)
    inputs: str = "self-generated"  # the reward's inputs: self-generated | random-tokens | norm (gamma * N(0, I))
    sequences: int = 8  # input sequences (norm: sequences * length Gaussian inputs per layer)
    length: int = 128  # tokens per sequence
    multiple: int = 64  # kept widths are rounded to this
    select: str = "topk"  # at pruning: topk (rows of highest logit) | sample (a seeded draw)
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU

    def validate(self) -> None:
        check(self.train_ratio is None or (is_number(self.train_ratio) and 0 < self.train_ratio < 1),
              f"train_ratio must be in (0, 1) or null (learn at the target ratio), got {self.train_ratio!r}")
        check_int(self, "episodes", 1)
        check(is_number(self.lr) and self.lr > 0, "lr must be > 0")
        check_int(self, "samples", 2)
        check(self.inputs in INPUTS, f"inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")
        check_int(self, "sequences", 1)
        check_int(self, "length", 2)
        check_int(self, "multiple", 1)
        check(self.select in SELECTIONS, f"select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        check_int(self, "seed")
        check(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")),
              f"device must be auto, cpu or cuda[:N], got {self.device!r}")


def norm_inputs(model, config: "FFNPolicyConfig", gen) -> list:
    """Per layer, ``sequences * length`` inputs from its norm statistics: ``gamma * z``, z ~ N(0, I) (weights only)."""
    torch = require("torch", "compress")
    n = config.sequences * config.length
    out = []
    for f in ffn_layers(model):
        gamma = f.norm_scale().float().cpu()  # (d_model,)
        out.append(torch.randn(n, gamma.numel(), generator=gen) * gamma)  # (n, d_model)
    return out


def _ffn_inputs(model, ids) -> list:
    """Per layer, the FFN's inputs (B*T, d_model) when the model reads ``ids`` (B, T)."""
    torch = require("torch", "compress")
    layers = ffn_layers(model)
    seen: dict[int, Any] = {}

    def hook_for(i: int):
        def hook(_module, inputs):
            seen[i] = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).cpu()
        return hook

    handles = [f.mlp.register_forward_pre_hook(hook_for(i)) for i, f in enumerate(layers)]
    try:
        with torch.inference_mode():
            model(input_ids=ids.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(layers))]


def random_token_inputs(model, config: "FFNPolicyConfig", gen) -> list:
    """The FFN inputs when the model reads uniformly random token ids (no text)."""
    torch = require("torch", "compress")
    ids = torch.randint(0, model.config.vocab_size, (config.sequences, config.length), generator=gen)  # (B, T)
    return _ffn_inputs(model, ids)


def self_generated_inputs(model, config: "FFNPolicyConfig", gen) -> list:
    """The FFN inputs on text the model samples itself from its start token (no text of ours)."""
    torch = require("torch", "compress")
    device = next(model.parameters()).device
    bos = model.config.bos_token_id if model.config.bos_token_id is not None else 0
    ids = torch.full((config.sequences, 1), int(bos), dtype=torch.long)  # (B, 1)
    with torch.inference_mode():
        out = model(input_ids=ids.to(device), use_cache=True)
        for _ in range(config.length - 1):
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1).cpu()  # (B, vocab)
            nxt = torch.multinomial(probs, 1, generator=gen)  # (B, 1): plain sampling, temperature 1
            ids = torch.cat([ids, nxt], dim=1)
            out = model(input_ids=nxt.to(device), past_key_values=out.past_key_values, use_cache=True)
    return _ffn_inputs(model, ids)


# Where the inputs of the reward come from; none reads text.
INPUTS = {"norm": norm_inputs, "random-tokens": random_token_inputs, "self-generated": self_generated_inputs}


@dataclasses.dataclass
class LayerState:
    """One layer as the policy and its reward see it."""

    features: Any  # (d_ff, F), standardised
    act: Any  # (n, d_ff) intermediate activations a(X)
    down: Any  # (d_model, d_ff)
    out_sq: float  # ||FFN(X)||^2

    def reward(self, kept) -> float:
        """Relative output change, negated, when only rows ``kept`` remain."""
        torch = require("torch", "compress")
        drop = torch.ones(self.act.shape[1], dtype=torch.bool, device=self.act.device)
        drop[kept] = False
        delta = self.act[:, drop] @ self.down[:, drop].T  # (n, d_model): what the removed rows contributed
        return -float(delta.pow(2).sum()) / max(self.out_sq, 1e-30)


def layer_state(f, x) -> LayerState:
    """Features (d_ff, F) and reward terms of one FFN ``f`` on inputs ``x`` (n, d_model)."""
    torch = require("torch", "compress")
    g = f.gate.weight.detach().float().to(x.device)  # (d_ff, d_model)
    u = f.up.weight.detach().float().to(x.device)  # (d_ff, d_model)
    w = f.down.weight.detach().float().to(x.device)  # (d_model, d_ff)
    gamma = f.norm_scale().float().to(x.device)  # (d_model,)
    with torch.no_grad():
        act = f.mlp.act_fn(x @ g.T) * (x @ u.T)  # (n, d_ff)
        out_sq = float((act @ w.T).pow(2).sum())
        eps = 1e-12
        gg, gu = g * gamma, u * gamma  # (d_ff, d_model): the rows as the normalised input sees them
        rms_act = act.pow(2).mean(0).sqrt()  # (d_ff,)
        cols = [gg.norm(dim=1), gu.norm(dim=1), w.norm(dim=0), g.norm(dim=1), u.norm(dim=1)]
        feats = [torch.log(c + eps) for c in cols]
        feats.append((gg * gu).sum(1) / (cols[0] * cols[1] + eps))  # cosine of g and u in the gamma metric
        feats += [torch.log(rms_act + eps), torch.log(rms_act * cols[2] + eps)]
        feats = torch.stack(feats, dim=1)  # (d_ff, F)
        feats = (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)  # standardised within the layer
    return LayerState(feats, act, w, out_sq)


_LAST: dict[str, Any] = {}  # the last layer states computed (one entry): learning then pruning reuses them


def layer_states(model, config: "FFNPolicyConfig", device) -> list[LayerState]:
    """Every layer's features and reward terms, on inputs from ``config.inputs`` (seeded by ``config.seed``)."""
    key = (_fingerprint(model), config.inputs, config.sequences, config.length, config.seed, str(device))
    if _LAST.get("key") != key:
        _LAST.clear()
        xs = INPUTS[config.inputs](model, config, generator(config.seed))  # L x (n, d_model)
        _LAST.update(key=key, states=[layer_state(f, x.to(device)) for f, x in zip(ffn_layers(model), xs)])
    return _LAST["states"]


def _fingerprint(model) -> tuple:
    """A cheap identity of the FFN weights (sums), to reuse layer states computed for the same model."""
    return tuple(round(float(getattr(f, n).weight.detach().double().sum()), 6)
                 for f in ffn_layers(model) for n in ("gate", "up", "down"))


def _policy_module(n_features: int):
    torch = require("torch", "compress")
    net = torch.nn.Linear(n_features, 1, bias=False)  # logits = features @ beta
    torch.nn.init.zeros_(net.weight)  # start: every row alike, the first draws are uniform
    return net


class FFNPolicy(LearnedPolicy):
    """A learned ffn-policy: per-row logits from the FFN's features."""

    method: ClassVar[str] = "ffn-policy"

    @staticmethod
    def _new_net(meta: dict[str, Any]):
        return _policy_module(len(FEATURES))

    @property
    def config(self) -> FFNPolicyConfig:
        return FFNPolicyConfig.from_dict(self.meta["config"])

    @property
    def weights(self) -> dict[str, float]:
        """beta, by feature name: what the policy learned."""
        return dict(zip(FEATURES, (float(b) for b in self.net.weight.detach().reshape(-1))))

    def logits(self, features):
        torch = require("torch", "compress")
        p = self.net.weight
        with torch.no_grad():
            return self.net(features.to(device=p.device, dtype=p.dtype)).squeeze(-1).cpu()  # (d_ff,)

    def scores(self, model, *, seed: int = 0) -> list:
        """Per-layer row scores: the logits (``topk``) or logits + Gumbel noise (``sample``, seeded)."""
        config = self.config
        states = layer_states(model, config, self.net.weight.device)
        gen = generator(seed)
        out = []
        for s in states:
            z = self.logits(s.features)
            out.append(z if config.select == "topk" else z + gumbel(z.shape, gen))
        return out



def learn_ffn_policy(model, config: FFNPolicyConfig | None = None, *, ratio: float | None = None,
                     progress: bool = True) -> FFNPolicy:
    """Learn an ffn-policy from the model's weights alone; ``meta["history"]`` logs reward and score spread.

    ``history`` has ``episodes + 1`` entries: the reward of the policy before each step and after the
    last; the parameters with the best one are kept. ``score_std`` is the std of the logits over rows
    (0 at the start: a uniform draw), averaged over layers.
    """
    torch = require("torch", "compress")
    from tqdm.auto import tqdm

    config = config or FFNPolicyConfig()
    layout_for(model)
    check_finite(model)
    device = _device(config.device)
    d_ff = ffn_width(model)
    if any(f.gate.weight.shape[0] != d_ff for f in ffn_layers(model)):
        raise PruneError("FFN widths differ between layers: pruning needs a uniform intermediate_size")
    r, k = train_width(d_ff, config, ratio)
    t0 = time.perf_counter()
    states = layer_states(model, config, device)  # L x LayerState
    gen = generator(config.seed + 1, device)  # the draws
    net = _policy_module(len(FEATURES)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=0.0)
    best_reward, best_state, history = -float("inf"), None, []
    bar = tqdm(total=config.episodes, desc="ffn-policy", unit="episode", disable=not progress)
    for episode in range(config.episodes + 1):  # the last pass only measures the policy after the last step
        opt.zero_grad()
        rewards, spreads = [], []
        for s in states:
            logits = net(s.features).squeeze(-1)  # (d_ff,)
            draws, log_probs = [], []
            for _ in range(config.samples):
                order = draw_order(logits, k, gen)  # (k,) in draw order
                draws.append(s.reward(order))
                log_probs.append(plackett_luce_log_prob(logits, order))
            adv = standardised(draws).to(device)  # (samples,)
            (-(adv * torch.stack(log_probs)).mean() / len(states)).backward()  # one step after the episode
            rewards.append(sum(draws) / len(draws))
            spreads.append(float(logits.detach().std()))
        total = sum(rewards)
        history.append({"episode": episode, "reward": total, "score_std": sum(spreads) / len(spreads),
                        "beta": [float(b) for b in net.weight.detach().reshape(-1)]})
        if total > best_reward:  # keep the parameters that earned it (before this episode's step)
            best_reward, best_state = total, copy.deepcopy(net.state_dict())
        if episode < config.episodes:
            opt.step()
            bar.update()
            bar.set_postfix(reward=f"{total:.3f}", best=f"{best_reward:.3f}")
    bar.close()
    net.load_state_dict(best_state)
    net.eval()
    meta = {"method": "ffn-policy", "d_model": int(states[0].down.shape[0]), "d_ff": int(d_ff),
            "n_layers": len(states), "architecture": model.config.model_type, "config": config.to_dict(),
            "features": list(FEATURES), "train_ratio": r, "train_width": k, "best_reward": best_reward,
            "history": history, "seconds": round(time.perf_counter() - t0, 2), "device": str(device)}
    return FFNPolicy(net, meta)
