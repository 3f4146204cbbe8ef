"""``prune_``: one entry point for every method; ``prune_to_dirs`` + :class:`PruneConfig`: the ``prune`` stage."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ... import __version__
from ..._io import atomic_path, write_json_atomic
from ...config import StageConfig, check, check_int, is_number
from ...errors import ConfigError, require
from .ffn import PruneError, check_finite, ffn_layers, ffn_width, kept_width, layout_for, slice_ffn_
from .ffn_policy import FFNPolicyConfig
from .methods import CALIBRATION_FREE, METHODS, POLICIES, method_spec
from .prunenet import PruneNetConfig, spectrum_ks
from .refit import REFIT_MODES, ffn_grams, refit_ffns_, sequential_refit_

REPORT = "pruning_report.json"


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def row_scores(model, method, *, seed: int = 0, calibration: Sequence[Sequence[int]] | None = None,
               grams: list | None = None) -> tuple[str, list]:
    """(method name, per-layer row scores) for ``method``: a name, or a learned policy (PruneNet, ffn-policy).

    A policy's scores are its seeded action (their top-k is the sampled draw) or its ranking.
    ``grams`` (from :func:`ffn_grams`, when a refit computed them) spare ``activation`` its own pass.
    """
    if isinstance(method, POLICIES):
        return method.method, method.scores(model, seed=seed)
    spec = method_spec(method)
    if spec.learner is not None:
        raise ConfigError(f"{method} needs a learned policy: pass {spec.learner.learn.__name__}(model, ...) "
                          f"or {spec.learner.policy.__name__}.load(dir)")
    return method, spec.score(model, seed=seed, calibration=calibration, grams=grams)


def prune_(model, method, ratio: float, *, multiple: int = 64, seed: int = 0,
           calibration: Sequence[Sequence[int]] | None = None, scores: list | None = None,
           refit: bool = False, grams: list | None = None, refit_mode: str = "sequential") -> dict[str, Any]:
    """Remove ``ratio`` of every FFN's rows in place, keeping the highest-scoring ones.

    ``method``: a name from METHODS or a learned policy. Returns a report: widths, parameters
    before/after, per-layer KS of the gate_proj spectrum, a hash of the kept indices, the seed of
    any random draw, and the time taken. ``scores`` may be passed to reuse one scoring across
    several ratios (a policy's draw and a ranking are ratio-free: the kept rows nest). ``refit``:
    refit each ``down_proj`` by least squares on the calibration text, ``refit_mode`` ``sequential``
    or ``layer`` (see refit.py; ``grams`` reuses the statistics of a ``layer`` refit).
    """
    torch = require("torch", "compress")
    layout_for(model)
    check_finite(model)
    t0 = time.perf_counter()
    d_ff = ffn_width(model)
    k = kept_width(d_ff, ratio, multiple)
    if refit_mode not in REFIT_MODES:
        raise ConfigError(f"refit_mode must be one of {', '.join(REFIT_MODES)}, got {refit_mode!r}")
    if refit and refit_mode == "layer" and grams is None:
        grams = ffn_grams(model, calibration or [])
    if scores is None:
        name, scores = row_scores(model, method, seed=seed, calibration=calibration, grams=grams)
    else:
        name = method.method if isinstance(method, POLICIES) else str(method)
    params_before = n_params(model)
    kept = [torch.topk(s, k).indices.sort().values for s in scores]  # L x (k,)
    layer_ks = [spectrum_ks(f.gate.weight, idx.to(f.gate.weight.device)) for f, idx in zip(ffn_layers(model), kept)]
    digest = hashlib.sha256(b"".join(idx.to(torch.int32).numpy().tobytes() for idx in kept)).hexdigest()
    if refit and refit_mode == "sequential":
        sequential_refit_(model, calibration or [], kept)
    elif refit:
        refit_ffns_(model, grams, kept)
    else:
        slice_ffn_(model, kept)
    params_after = n_params(model)
    report = {
        "method": name, "calibration_free": CALIBRATION_FREE.get(name, True) and not refit, "refit": refit,
        **({"refit_mode": refit_mode} if refit else {}),
        "ratio": ratio, "seed": seed,
        "d_ff": d_ff, "kept_width": k, "multiple": multiple, "actual_ffn_ratio": 1 - k / d_ff,
        "params_before": params_before, "params_after": params_after,
        "param_reduction": 1 - params_after / params_before,
        "layer_ks": layer_ks, "mean_ks": sum(layer_ks) / len(layer_ks), "kept_indices_sha256": digest,
        "seconds": round(time.perf_counter() - t0, 3), "edge_downscale_version": __version__,
    }
    if isinstance(method, POLICIES):
        cfg = method.meta["config"]
        report["policy"] = {"select": cfg["select"], "gradient": cfg.get("gradient", "baselined"),
                            "train_ratio": method.meta.get("train_ratio"), "train_width": method.meta.get("train_width"),
                            "episodes": cfg["episodes"], "policy_seed": cfg["seed"]}
    return report


def save_pruned(model, tokenizer, out_dir: str | Path, report: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write a standard HF directory (safetensors + config + tokenizer + report), atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise PruneError(f"{out_dir} already exists: pass --overwrite to replace it")
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return out_dir


def calibration_sequences(tokenizer, domain: str = "docs", *, n: int = 16, length: int = 256) -> list[list[int]]:
    """``n`` token sequences of exactly ``length`` tokens from a corpus's *train* split (for 'activation')."""
    from ...data import load_corpus, resolve_corpus

    ids: list[int] = []
    for text in load_corpus(resolve_corpus(domain))["train"]["text"]:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= n * length:
            break
    seqs = [ids[i * length:(i + 1) * length] for i in range(min(n, len(ids) // length))]
    if not seqs:
        raise ConfigError(f"domain {domain!r} has too little training text for calibration")
    return seqs


@dataclasses.dataclass
class PruneConfig(StageConfig):
    """What :func:`prune_to_dirs` (the ``prune`` command) prunes, how, and where it writes.

    ``out_dir`` gets one HF directory per ratio (``r0.30/``), the learned policies (``policy-r0.30/``
    per ratio, or one ``policy/`` when it is learned once at ``train_ratio`` or loaded) and
    ``summary.json``. ``ratios``: fractions of each FFN's width to remove. ``policy_dir``: reuse a
    learned policy (of ``method``) at every ratio instead of learning one. ``prunenet`` /
    ``ffn_policy``: policy-learning settings of those methods (None = the defaults, with this
    ``multiple`` and ``seed``). ``seed`` also seeds a policy's sampled action and ``random``.
    ``calib_domain``: calibration text of the ``activation`` method and of ``refit`` (a least-squares
    refit of every ``down_proj`` over its kept rows, any method; ``refit_mode``: ``sequential`` block
    by block towards the dense output, or ``layer`` by layer); ``calib_sequences``: how many
    256-token sequences of it.
    """

    stage: ClassVar[str] = "prune"
    out_dir: str
    ratios: tuple[float, ...] = (0.2, 0.3, 0.5)
    method: str = "prunenet"
    policy_dir: str | None = None
    prunenet: PruneNetConfig | None = None
    ffn_policy: FFNPolicyConfig | None = None
    calib_domain: str = "docs"
    calib_sequences: int = 16
    refit: bool = False
    refit_mode: str = "sequential"
    multiple: int = 64
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.out_dir, os.PathLike):
            self.out_dir = os.fspath(self.out_dir)
        if isinstance(self.policy_dir, os.PathLike):
            self.policy_dir = os.fspath(self.policy_dir)
        if isinstance(self.prunenet, dict):  # the JSON form
            self.prunenet = PruneNetConfig.from_dict(self.prunenet)
        if isinstance(self.ffn_policy, dict):
            self.ffn_policy = FFNPolicyConfig.from_dict(self.ffn_policy)
        super().__post_init__()

    def validate(self) -> None:
        check(isinstance(self.out_dir, str) and bool(self.out_dir), f"out_dir must be a directory path, got {self.out_dir!r}")
        check(isinstance(self.ratios, tuple) and len(self.ratios) > 0, "give at least one ratio, e.g. --ratios 0.2,0.3,0.5")
        for r in self.ratios:
            check(is_number(r) and 0 < r < 1, f"ratio must be in (0, 1), got {r!r}")
        check(self.method in METHODS, f"unknown pruning method {self.method!r}; available: {', '.join(METHODS)}")
        check(self.policy_dir is None or isinstance(self.policy_dir, str), "policy_dir must be a directory path or None")
        check(self.prunenet is None or isinstance(self.prunenet, PruneNetConfig),
              "prunenet must be a PruneNetConfig (or its JSON object) or None")
        check(self.ffn_policy is None or isinstance(self.ffn_policy, FFNPolicyConfig),
              "ffn_policy must be an FFNPolicyConfig (or its JSON object) or None")
        check(isinstance(self.calib_domain, str), "calib_domain must be a demo domain or corpus directory")
        check_int(self, "calib_sequences", 1)
        check(isinstance(self.refit, bool), "refit must be true or false")
        check(self.refit_mode in REFIT_MODES, f"refit_mode must be one of {', '.join(REFIT_MODES)}, got {self.refit_mode!r}")
        check_int(self, "multiple", 1)
        check_int(self, "seed")
        check(isinstance(self.overwrite, bool), "overwrite must be true or false")


def learn_policies(model, method: str, ratios: Sequence[float], config, *, policy_dir: str | None = None,
                   progress: bool = True) -> dict[float, Any]:
    """ratio -> the learned policy that prunes at it: loaded, learned once at ``config.train_ratio``, or per ratio."""
    learner = method_spec(method).learner
    if policy_dir is not None:
        policy = learner.policy.load(policy_dir)
        return {r: policy for r in ratios}
    if config.train_ratio is not None:
        policy = learner.learn(model, config, progress=progress)
        return {r: policy for r in ratios}
    return {r: learner.learn(model, config, ratio=r, progress=progress) for r in ratios}


def prune_to_dirs(model_ref: str, config: PruneConfig, *, progress: bool = True) -> dict[str, Any]:
    """Learn (or load), prune at every ratio, write ``config.out_dir/r0.30/`` HF directories.

    ``out_dir`` also gets the policies and ``summary.json``. The whole directory appears
    atomically: an interrupted run leaves nothing that looks finished.
    """
    import copy

    from ...models import load_torch

    out_dir, ratios, method, multiple, seed = (Path(config.out_dir), config.ratios, config.method, config.multiple,
                                               config.seed)
    if out_dir.exists() and not config.overwrite:
        raise PruneError(f"{out_dir} already exists: pass --overwrite to replace it")
    model, tokenizer, info = load_torch(model_ref)
    layout_for(model)
    for r in ratios:  # fail on a bad ratio before minutes of policy learning
        kept_width(ffn_width(model), r, multiple)
    check_finite(model)
    summary: dict[str, Any] = {"model": model_ref, "source": info, "method": method, "ratios": list(ratios),
                               "seed": seed, "outputs": {}}
    t0 = time.perf_counter()
    calibration = (calibration_sequences(tokenizer, config.calib_domain, n=config.calib_sequences)
                   if method == "activation" or config.refit else None)
    # a layer refit's statistics also give the activation scores; a sequential refit gathers its own
    grams = ffn_grams(model, calibration) if config.refit and config.refit_mode == "layer" else None
    learner = method_spec(method).learner
    policies: dict[float, Any] = {}
    if learner is not None:
        cfg = getattr(config, learner.field) or learner.config(multiple=multiple, seed=seed)
        policies = learn_policies(model, method, ratios, cfg, policy_dir=config.policy_dir, progress=progress)
    shared = len({id(p) for p in policies.values()}) == 1
    scores: dict[int, list] = {}  # one scoring per policy (or one for the method)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for r in ratios:
            policy = policies.get(r)
            if id(policy) not in scores:
                scores[id(policy)] = row_scores(model, policy if policy is not None else method, seed=seed,
                                                calibration=calibration, grams=grams)[1]
                if policy is not None:
                    name = "policy" if shared else f"policy-r{r:.2f}"
                    policy.save(tmp / name)
                    summary.setdefault("policies", {})[name] = (
                        {"loaded_from": str(config.policy_dir)} if config.policy_dir is not None else
                        {"seconds": policy.meta["seconds"], "best_reward": policy.meta["best_reward"],
                         "train_ratio": policy.meta["train_ratio"]})
            pruned = copy.deepcopy(model)
            report = prune_(pruned, policy if policy is not None else method, r, multiple=multiple, seed=seed,
                            calibration=calibration, scores=scores[id(policy)], refit=config.refit, grams=grams,
                            refit_mode=config.refit_mode)
            report["source_model"] = model_ref
            name = f"r{r:.2f}"
            save_pruned(pruned, tokenizer, tmp / name, report)
            summary["outputs"][name] = {k: report[k] for k in ("kept_width", "params_after", "param_reduction", "mean_ks")}
            del pruned
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        write_json_atomic(tmp / "summary.json", summary)
    return summary
