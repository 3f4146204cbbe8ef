"""PruneNet vs baselines on SmolLM2-135M, before any recovery training.

    .venv/bin/python benchmarks/prune_smollm2.py            # ratios 0.1,0.2,0.3,0.5; ~20 min on 2 cores
    .venv/bin/python benchmarks/prune_smollm2.py --quick    # 2 ratios, 2 methods, small eval (smoke test)

For each method x ratio: parameters, bits-per-byte per demo domain, multiple-choice accuracy, torch CPU
decode tokens/s relative to the dense model (measured in the same run), and the time to learn the
policy and to prune. Writes results/prune_smollm2.json (which `edge-downscale laws fit` reads) and
fits the compression laws on PruneNet's points with one ratio held out.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from edge_downscale import __version__  # noqa: E402
from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.compress.prune import (  # noqa: E402
    PruneNetConfig, calibration_sequences, learn_policy, n_params, prune_, row_scores,
)
from edge_downscale.config import EvalConfig  # noqa: E402
from edge_downscale.data import heldout_by_domain  # noqa: E402
from edge_downscale.eval import evaluate, markdown_table  # noqa: E402
from edge_downscale.models import load_torch  # noqa: E402
from edge_downscale.models.torch_backend import TorchBackend  # noqa: E402


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


def score(model, tok, domains, config):
    res = evaluate(TorchBackend(model, tok, context_length=config.max_length), heldout_by_domain(domains, config), config,
                   progress=False)
    return {d: {"bpb": r["bpb"]["bits_per_byte"], "mc": (r.get("mc") or {}).get("accuracy")}
            for d, r in res["domains"].items()}, res["mixed_bpb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.5")
    ap.add_argument("--methods", default="prunenet,random,magnitude,activation")
    ap.add_argument("--domains", default="code,docs,legal")
    ap.add_argument("--max-bytes", type=int, default=8000)
    ap.add_argument("--mc-items", type=int, default=20)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--train-ratio", type=float, default=0.4)
    ap.add_argument("--holdout", type=float, default=0.3, help="ratio held out when checking the fitted law")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="results/prune_smollm2.json")
    args = ap.parse_args()
    if args.quick:
        args.ratios, args.methods, args.max_bytes, args.mc_items, args.episodes = "0.2,0.5", "prunenet,random", 3000, 5, 3
    ratios = [float(r) for r in args.ratios.split(",")]
    methods = args.methods.split(",")
    domains = args.domains.split(",")
    config = EvalConfig(max_bytes=args.max_bytes, mc_items=args.mc_items)
    torch.manual_seed(0)

    dense, tok, info = load_torch(args.model)
    dense_scores, dense_mixed = score(dense, tok, domains, config)
    dense_speed = decode_tokens_per_s(dense, tok)
    rows = [{"method": "dense", "ratio": 0.0, "params": n_params(dense), "kept_width": dense.config.intermediate_size,
             "domains": dense_scores, "mixed_bpb": dense_mixed, "decode_tok_s": dense_speed, "speedup": 1.0}]
    print(f"dense: {n_params(dense):,} params, mixed bpb {dense_mixed:.4f}, decode {dense_speed:.1f} tok/s", flush=True)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    policy = learn_policy(dense, PruneNetConfig(train_ratio=args.train_ratio, episodes=args.episodes))
    timings["prunenet_policy_s"] = time.perf_counter() - t0
    calibration = None
    if "activation" in methods:
        t0 = time.perf_counter()
        calibration = [s for d in domains for s in calibration_sequences(tok, d, n=6, length=256)]
        timings["activation_calibration_tokens"] = sum(len(s) for s in calibration)

    for method in methods:
        t0 = time.perf_counter()
        _, scores = row_scores(dense, policy if method == "prunenet" else method, calibration=calibration)
        timings[f"{method}_scoring_s"] = time.perf_counter() - t0
        for r in ratios:
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            report = prune_(model, policy if method == "prunenet" else method, r, scores=scores)
            prune_s = time.perf_counter() - t0
            s, mixed = score(model, tok, domains, config)
            speed = decode_tokens_per_s(model, tok)
            rows.append({"method": method, "ratio": r, "params": report["params_after"], "kept_width": report["kept_width"],
                         "param_reduction": report["param_reduction"], "mean_ks": report["mean_ks"], "domains": s,
                         "mixed_bpb": mixed, "decode_tok_s": speed, "speedup": speed / dense_speed, "prune_s": prune_s})
            print(f"{method:>10} r={r:.2f}: width {report['kept_width']}, mixed bpb {mixed:.4f}, "
                  f"decode x{speed / dense_speed:.2f}, KS {report['mean_ks']:.3f}", flush=True)
            del model
    # the dense speed drifts on a noisy machine: measure it again at the end and use the mean for ratios
    dense_speed_end = decode_tokens_per_s(dense, tok)
    for row in rows[1:]:
        row["speedup"] = row["decode_tok_s"] / ((dense_speed + dense_speed_end) / 2)
    timings["prunenet_policy_plus_prune_s"] = timings["prunenet_policy_s"] + timings.get("prunenet_scoring_s", 0) + sum(
        row["prune_s"] for row in rows if row["method"] == "prunenet")

    # Table
    head = ["method", "ratio", "FFN", "params"] + [f"{d} bpb" for d in domains] + ["mixed"] + [f"{d} MC" for d in domains] + ["decode x"]
    table = [head]
    for row in rows:
        table.append([row["method"], f"{row['ratio']:.1f}", str(row["kept_width"]), f"{row['params'] / 1e6:.1f}M"]
                     + [f"{row['domains'][d]['bpb']:.3f}" for d in domains] + [f"{row['mixed_bpb']:.3f}"]
                     + [f"{row['domains'][d]['mc']:.2f}" if row["domains"][d]["mc"] is not None else "-" for d in domains]
                     + [f"{row['speedup']:.2f}"])
    print()
    print(markdown_table(table))
    print(f"\ntimings: { {k: round(v, 1) for k, v in timings.items()} }")
    print(f"dense decode tok/s: start {dense_speed:.1f}, end {dense_speed_end:.1f}")

    # Points for the compression laws: one per method x ratio x domain (L0 = dense bpb of that domain)
    points = [{"method": row["method"], "ratio": row["ratio"], "tokens": 0,
               "dense": dense_scores[d]["bpb"], "value": row["domains"][d]["bpb"],
               "dense_time": 1.0 / dense_speed, "time": 1.0 / row["decode_tok_s"]}
              for row in rows[1:] for d in domains]
    result = {"version": __version__, "model": args.model, "source": info, "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "eval": config.to_dict(),
              "policy": {k: policy.meta[k] for k in ("train_width", "best_reward", "seconds", "history")},
              "timings": timings, "rows": rows, "metric": "bpb", "time_metric": "s_per_token", "points": points}
    if "prunenet" in methods and len(ratios) >= 3:
        result["laws"] = laws_report([p for p in points if p["method"] == "prunenet"], args.holdout)
    write_result(args.out, result)
    print(f"wrote {args.out}")


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
    for row in held.quality:
        print(f"  dense {row['dense']:.3f}: measured {row['measured']:.3f}, predicted {row['predicted']:.3f} "
              f"({row['rel_error']:.1%})")
    return {"quality": quality.to_dict(), "runtime": runtime.to_dict(), "holdout": held.to_dict()}


if __name__ == "__main__":
    main()
