"""Structured FFN pruning of SmolLM2-135M: every method, before and after one short fixed recovery (issue 16).

    .venv/bin/python benchmarks/prune_smollm2.py      # everything below; about 2 h on 2 quiet cores
    .venv/bin/python benchmarks/prune_smollm2.py --methods dense,random,ffn-policy --ratios 0.3 --domains docs \\
        --seeds 0 --max-bytes 1500 --mc-items 4 --episodes 2 --recovery-tokens 1024 --out /tmp/prune_smoke.json

Arms (``--methods``, in this order):
  dense               the unpruned model
  random              seeded random rows, one row per ``--seeds`` seed (summarised as mean and min-max)
  magnitude           row norm of gate_proj
  activation          structured Wanda, calibrated on ``--calib-sequences`` x 256 train tokens per domain
  prunenet            the authors' code: REINFORCE, sampled action, learned at each target ratio
  prunenet-baselined  the same policy with the variance-reduced gradient (draws per layer, standardised advantages)
  prunenet-reuse      prunenet learned once at ``--reuse-ratio`` and reused at every ratio (the paper's "prune once")
  ffn-policy          the new calibration-free method (ffn_policy.py)
For every arm x ratio: bits-per-byte per domain (test split) and MC accuracy without recovery, then after
``--recovery-tokens`` of FFN-only fine-tuning on the domains' train splits (the same budget, data order and
settings for every arm; 0 skips it); policy training time and learning curves; torch CPU decode speed
per kept width. Writes ``--out`` (rows, policies, and the no-recovery points that ``edge-downscale laws
fit`` reads), prints Markdown tables and the issue's targets.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from edge_downscale import __version__  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.compress.prune import (  # noqa: E402
    FFNPolicyConfig, PruneNetConfig, calibration_sequences, learn_ffn_policy, learn_policy, n_params, prune_,
)
from edge_downscale.compress.train.config import TrainConfig  # noqa: E402
from edge_downscale.compress.train.engine import Engine, LMObjective  # noqa: E402
from edge_downscale.compress.train.packing import TextSplits, load_splits  # noqa: E402
from edge_downscale.config import EvalConfig  # noqa: E402
from edge_downscale.data import heldout_by_domain  # noqa: E402
from edge_downscale.eval import evaluate, markdown_table  # noqa: E402
from edge_downscale.models import load_torch  # noqa: E402
from edge_downscale.models.torch_backend import TorchBackend  # noqa: E402

ALL_METHODS = "dense,random,magnitude,activation,prunenet,prunenet-baselined,prunenet-reuse,ffn-policy"


def decode_tokens_per_s(model, tok, n_new: int = 32, repeats: int = 3) -> float:
    """Greedy decode speed (new tokens / s) after a fixed 32-token prompt; best of ``repeats``."""
    ids = torch.tensor([tok("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
                            add_special_tokens=False)["input_ids"][:32]])
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                           do_sample=False, pad_token_id=tok.eos_token_id)
            best = min(best, time.perf_counter() - t0)
    return n_new / best


def score(model, tok, held, config) -> tuple[dict, float]:
    res = evaluate(TorchBackend(model, tok, context_length=config.max_length), held, config, progress=False)
    return ({d: {"bpb": r["bpb"]["bits_per_byte"], "mc": (r.get("mc") or {}).get("accuracy")}
             for d, r in res["domains"].items()}, res["mixed_bpb"])


def recovery_data(domains, budget: int) -> TextSplits:
    """The domains' train splits interleaved document by document, cut to a few times the budget."""
    splits = [load_splits(d) for d in domains]
    train, chars = [], 0
    for i in range(max(len(s.train) for s in splits)):
        for s in splits:
            if i < len(s.train):
                train.append(s.train[i])
                chars += len(s.train[i])
        if chars > 16 * budget:  # about 4 characters per token: 4x the budget
            break
    return TextSplits(name="+".join(domains), train=train, validation=[t for s in splits for t in s.validation[:4]])


def recover(model, tok, data: TextSplits, config: TrainConfig, work: Path):
    """``config.token_budget`` tokens of next-token fine-tuning (FFNs only); returns the trained model and seconds."""
    out = work / "recover"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    Engine(model, tok, LMObjective(), data, config, out, kind="recover", progress=False).run()
    seconds = time.perf_counter() - t0
    trained, _, _ = load_torch(str(out))
    return trained, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default=ALL_METHODS, help=f"comma-separated, from {ALL_METHODS}")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--domains", default="code,docs,legal")
    ap.add_argument("--seeds", default="0,1,2", help="random's seeds (every other arm uses --seed)")
    ap.add_argument("--seed", type=int, default=0, help="policies' seed and the seed of their sampled action")
    ap.add_argument("--max-bytes", type=int, default=8000, help="held-out bytes scored per domain")
    ap.add_argument("--mc-items", type=int, default=20, help="MC items per domain (0 = none)")
    ap.add_argument("--calib-sequences", type=int, default=6, help="activation: 256-token sequences per domain")
    ap.add_argument("--episodes", type=int, default=20, help="policy episodes (every learned arm)")
    ap.add_argument("--samples", type=int, default=4, help="draws per layer per episode (baselined, ffn-policy)")
    ap.add_argument("--reuse-ratio", type=float, default=0.4, help="prunenet-reuse learns here once")
    ap.add_argument("--recovery-tokens", type=int, default=8192, help="per pruned model; 0 = no recovery")
    ap.add_argument("--recovery-seq-len", type=int, default=256)
    ap.add_argument("--recovery-batch", type=int, default=4)
    ap.add_argument("--recovery-lr", type=float, default=5e-4)
    ap.add_argument("--no-speed", action="store_true", help="skip the decode-speed measurement")
    ap.add_argument("--holdout", type=float, default=0.3, help="ratio held out when checking the fitted law")
    ap.add_argument("--out", default="results/prune_smollm2.json")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the rows of an interrupted run with the same settings (OUT.partial.json)")
    args = ap.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",") if r]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(ALL_METHODS.split(",")))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {ALL_METHODS}")
    domains = [d for d in args.domains.split(",") if d]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    config = EvalConfig(max_bytes=args.max_bytes, mc_items=args.mc_items)
    held = heldout_by_domain(domains, config)
    train_cfg = TrainConfig(token_budget=max(1, args.recovery_tokens), seq_len=args.recovery_seq_len,
                            batch_size=args.recovery_batch, lr=args.recovery_lr, train="ffn", checkpoint_every=0,
                            eval_tokens=args.recovery_seq_len + 1, device="cpu", seed=0)
    torch.manual_seed(0)
    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="prune_smollm2-"))

    dense, tok, info = load_torch(args.model)
    data = recovery_data(domains, args.recovery_tokens) if args.recovery_tokens else None
    calibration = None
    if "activation" in methods:
        calibration = [s for d in domains for s in calibration_sequences(tok, d, n=args.calib_sequences, length=256)]

    # arm -> ratio -> (how to prune: a method name or a learned policy; the seed of prune_)
    def policy_arm(learn, cfg):
        return lambda r: learn(dense, cfg, ratio=r, progress=False)

    learners = {
        "prunenet": policy_arm(learn_policy, PruneNetConfig(episodes=args.episodes, seed=args.seed)),
        "prunenet-baselined": policy_arm(learn_policy, PruneNetConfig(episodes=args.episodes, seed=args.seed,
                                                                      gradient="baselined", samples=args.samples)),
        "ffn-policy": policy_arm(learn_ffn_policy, FFNPolicyConfig(episodes=args.episodes, seed=args.seed,
                                                                   samples=args.samples)),
    }
    reuse: dict = {}

    def reused(r):  # learned once, at --reuse-ratio
        if "policy" not in reuse:
            reuse["policy"] = learn_policy(dense, PruneNetConfig(episodes=args.episodes, seed=args.seed,
                                                                 train_ratio=args.reuse_ratio), progress=False)
            reuse["fresh"] = True
        else:
            reuse["fresh"] = False
        return reuse["policy"]

    learners["prunenet-reuse"] = reused
    runs = []  # (arm, seed, ratio)
    for m in methods:
        if m == "dense":
            continue
        for r in ratios:
            for s in (seeds if m == "random" else [args.seed]):
                runs.append((m, s, r))

    rows, policies, speed = [], [], {}
    partial = Path(args.out).with_suffix(".partial.json")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "methods")}
    if args.resume and partial.exists():
        saved = json.loads(partial.read_text())
        if saved.get("settings") != settings:
            ap.error(f"{partial} was written with other settings; rerun without --resume")
        rows, policies = saved["rows"], saved["policies"]
        speed = {int(k): v for k, v in saved["speed"].items()}
        print(f"resuming: {len(rows)} rows from {partial}", flush=True)
    done = {(row["method"], row["seed"], row["ratio"]) for row in rows}

    def checkpoint():
        write_result(partial, {"settings": settings, "rows": rows, "policies": policies,
                               "speed": {str(k): v for k, v in speed.items()}})

    def evaluate_model(model, row):
        s, mixed = score(model, tok, held, config)
        row.update(domains=s, mixed_bpb=mixed)
        if data is None:
            return
        trained, secs = recover(copy.deepcopy(model), tok, data, train_cfg, work)
        s2, mixed2 = score(trained, tok, held, config)
        row.update(recovered={"domains": s2, "mixed_bpb": mixed2, "seconds": round(secs, 1)})
        del trained

    if "dense" in methods and ("dense", None, 0.0) not in done:
        row = {"method": "dense", "seed": None, "ratio": 0.0, "params": n_params(dense),
               "kept_width": dense.config.intermediate_size}
        s, mixed = score(dense, tok, held, config)
        row.update(domains=s, mixed_bpb=mixed)  # recovery of the dense model is not what is compared
        rows.append(row)
        print(f"dense: {n_params(dense):,} params, mixed bpb {mixed:.4f}", flush=True)
    if not args.no_speed and dense.config.intermediate_size not in speed:
        speed[dense.config.intermediate_size] = decode_tokens_per_s(dense, tok)

    for m, seed, r in runs:
        if (m, seed, r) in done:
            continue
        t0 = time.perf_counter()
        policy = None
        if m in learners:
            policy = learners[m](r)
            learn_s = time.perf_counter() - t0
            fresh = (m != "prunenet-reuse" or reuse["fresh"]) and not any(
                p["method"] == m and (m == "prunenet-reuse" or p["ratio"] == r) for p in policies)
            if fresh:
                h = policy.meta["history"]
                policies.append({"method": m, "ratio": r if m != "prunenet-reuse" else args.reuse_ratio,
                                 "seconds": round(learn_s, 1), "train_width": policy.meta["train_width"],
                                 "best_reward": policy.meta["best_reward"], "history": h})
                spread = "alpha_std" if "alpha_std" in h[0] else "score_std"
                print(f"  {m} policy at r={policies[-1]['ratio']:.2f}: {learn_s:.0f} s, reward "
                      f"{h[0]['reward']:.3f} -> {h[-1]['reward']:.3f} (best {policy.meta['best_reward']:.3f}), "
                      f"{spread} {h[0][spread]:.3f} -> {h[-1][spread]:.3f}", flush=True)
        model = copy.deepcopy(dense)
        t1 = time.perf_counter()
        report = prune_(model, policy if policy is not None else m, r, seed=seed, calibration=calibration)
        row = {"method": m, "seed": seed, "ratio": r, "params": report["params_after"],
               "kept_width": report["kept_width"], "param_reduction": report["param_reduction"],
               "mean_ks": report["mean_ks"], "prune_s": round(time.perf_counter() - t1, 2),
               "kept_indices_sha256": report["kept_indices_sha256"]}
        if not args.no_speed and report["kept_width"] not in speed:
            speed[report["kept_width"]] = decode_tokens_per_s(model, tok)
        evaluate_model(model, row)
        rows.append(row)
        after = f", recovered {row['recovered']['mixed_bpb']:.4f}" if "recovered" in row else ""
        print(f"{m:>18} r={r:.2f} seed {seed}: width {report['kept_width']}, mixed bpb {row['mixed_bpb']:.4f}{after}"
              f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        del model
        checkpoint()
    shutil.rmtree(work, ignore_errors=True)

    dense_speed = speed.get(dense.config.intermediate_size)
    for row in rows:
        if dense_speed and row["kept_width"] in speed:
            row["speedup"] = speed[row["kept_width"]] / dense_speed
    summary = summarise(rows, ratios, domains)
    targets = check_targets(summary, ratios)
    print_tables(rows, summary, policies, domains, targets)

    points = []  # one per method x ratio x domain, without recovery (L0 = the dense bpb of that domain)
    dense_row = rows[0] if rows and rows[0]["method"] == "dense" else None
    for row in rows:
        if dense_row is None or row is dense_row:
            continue
        for d in domains:
            p = {"method": row["method"], "ratio": row["ratio"], "tokens": 0, "dense": dense_row["domains"][d]["bpb"],
                 "value": row["domains"][d]["bpb"]}
            if dense_speed and row["kept_width"] in speed:
                p.update(dense_time=1.0 / dense_speed, time=1.0 / speed[row["kept_width"]])
            points.append(p)
    result = {"version": __version__, "model": args.model, "source": info, "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "eval": config.to_dict(),
              "args": vars(args), "recovery": train_cfg.to_dict() if data is not None else None,
              "decode_tok_s_by_width": {str(k): v for k, v in speed.items()}, "policies": policies,
              "rows": rows, "summary": summary, "targets": targets, "seconds": round(time.perf_counter() - t_all, 1),
              "metric": "bpb", "time_metric": "s_per_token", "points": points}
    prunenet_points = [p for p in points if p["method"] == "prunenet"]
    if len(ratios) >= 3 and prunenet_points and all("time" in p for p in prunenet_points):
        result["laws"] = laws_report(prunenet_points, args.holdout)
    write_result(args.out, result)
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out} ({result['seconds'] / 60:.1f} min)")
    return 0


def summarise(rows, ratios, domains) -> dict:
    """Per method and ratio: mixed bpb before/after recovery; random as mean, min and max over its seeds."""
    out: dict = {}
    for row in rows:
        if row["method"] == "dense":
            continue
        cell = out.setdefault(row["method"], {}).setdefault(f"{row['ratio']:.2f}", {"none": [], "recovered": []})
        cell["none"].append(row["mixed_bpb"])
        if "recovered" in row:
            cell["recovered"].append(row["recovered"]["mixed_bpb"])
    for method, by_ratio in out.items():
        for key, cell in by_ratio.items():
            for stage in ("none", "recovered"):
                v = cell.pop(stage)
                if v:
                    cell[stage] = {"mean": mean(v), "min": min(v), "max": max(v), "n": len(v)}
    return out


def check_targets(summary, ratios) -> dict:
    """The issue's targets for ffn-policy: beat the best random seed at every ratio >= 0.2 (before and after
    recovery); close half of the random -> activation gap at 0.3 (mean of the random seeds)."""
    if "ffn-policy" not in summary or "random" not in summary:
        return {}
    out: dict = {"beats_best_random": {}}
    for r in ratios:
        key = f"{r:.2f}"
        if r < 0.2 or key not in summary["ffn-policy"] or key not in summary["random"]:
            continue
        for stage in ("none", "recovered"):
            ours, rand = summary["ffn-policy"][key].get(stage), summary["random"][key].get(stage)
            if ours and rand:
                out["beats_best_random"][f"{key} {stage}"] = ours["mean"] < rand["min"]
    key = "0.30"
    if "activation" in summary and all(key in summary[m] for m in ("ffn-policy", "random", "activation")):
        for stage in ("none", "recovered"):
            cells = [summary[m][key].get(stage) for m in ("random", "ffn-policy", "activation")]
            if all(cells):
                rand, ours, act = (c["mean"] for c in cells)
                out[f"gap_closed_0.30_{stage}"] = (rand - ours) / (rand - act) if rand != act else None
    return out


def print_tables(rows, summary, policies, domains, targets) -> None:
    head = (["method", "seed", "ratio", "FFN", "params"] + [f"{d} bpb" for d in domains] + ["mixed"]
            + [f"{d} MC" for d in domains] + ["recovered mixed"] + [f"rec. {d} MC" for d in domains] + ["decode x"])
    table = [head]
    for row in rows:
        rec = row.get("recovered")
        table.append([row["method"], "-" if row["seed"] is None else str(row["seed"]), f"{row['ratio']:.1f}",
                      str(row["kept_width"]), f"{row['params'] / 1e6:.1f}M"]
                     + [f"{row['domains'][d]['bpb']:.3f}" for d in domains] + [f"{row['mixed_bpb']:.3f}"]
                     + [_mc(row["domains"][d]["mc"]) for d in domains]
                     + [f"{rec['mixed_bpb']:.3f}" if rec else "-"]
                     + [_mc(rec["domains"][d]["mc"]) if rec else "-" for d in domains]
                     + [f"{row['speedup']:.2f}" if "speedup" in row else "-"])
    print()
    print(markdown_table(table))
    ratios = sorted({k for by in summary.values() for k in by})
    table = [["method"] + [f"r={k} none" for k in ratios] + [f"r={k} recovered" for k in ratios]]
    for method, by in summary.items():
        table.append([method] + [_cell(by.get(k, {}).get("none")) for k in ratios]
                     + [_cell(by.get(k, {}).get("recovered")) for k in ratios])
    print("\nmixed bits-per-byte (random: mean [min-max] over seeds)\n")
    print(markdown_table(table))
    if policies:
        print("\npolicy learning (reward per episode; spread = std of keep-probabilities / logits)\n")
        table = [["method", "ratio", "seconds", "reward ep 0", "reward last", "best", "spread ep 0", "spread last"]]
        for p in policies:
            h = p["history"]
            spread = "alpha_std" if "alpha_std" in h[0] else "score_std"
            table.append([p["method"], f"{p['ratio']:.2f}", f"{p['seconds']:.0f}", f"{h[0]['reward']:.3f}",
                          f"{h[-1]['reward']:.3f}", f"{p['best_reward']:.3f}", f"{h[0][spread]:.3f}",
                          f"{h[-1][spread]:.3f}"])
        print(markdown_table(table))
    if targets:
        print(f"\ntargets: {targets}")


def _mc(v) -> str:
    return f"{v:.2f}" if v is not None else "-"


def _cell(c) -> str:
    if not c:
        return "-"
    return f"{c['mean']:.3f}" if c["n"] == 1 else f"{c['mean']:.3f} [{c['min']:.3f}-{c['max']:.3f}]"


def laws_report(points, holdout):
    """Fit the compression laws on PruneNet's points; refit without ``holdout`` and predict it back."""
    from edge_downscale.compress import laws

    points = laws.with_dense_points([laws.LawPoint.from_dict(p) for p in points])  # as `laws fit` does
    quality = laws.fit_quality_law(points)
    runtime = laws.fit_runtime_law(points)
    held = laws.holdout_check(points, holdout)
    print(f"\nquality law: alpha={quality.alpha}, beta={quality.beta:.3f}, R2(log)={quality.r2_log:.3f}; "
          f"runtime law: delta={runtime.delta:.3f}, R2(log)={runtime.r2_log:.3f}")
    print(f"held-out ratio {holdout}: max relative error of predicted bpb {held.max_rel_error:.1%}"
          + (f", of predicted s/token {held.runtime_max_rel_error:.1%}" if held.runtime_max_rel_error is not None else ""))
    return {"quality": quality.to_dict(), "runtime": runtime.to_dict(), "holdout": held.to_dict()}


if __name__ == "__main__":
    sys.exit(main())
