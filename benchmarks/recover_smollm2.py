"""Recovery and specialisation of a PruneNet-pruned SmolLM2-135M (issue 7).

    .venv/bin/python benchmarks/recover_smollm2.py                    # all arms, 3 domains (~1.5 h on 2 cores)
    .venv/bin/python benchmarks/recover_smollm2.py --budget 4096 --domains docs --eval-bytes 4000 --mc-items 8  # smoke

For each demo domain, from `smollm2-135m` with 30% of every FFN removed by PruneNet, at one token
budget per training run, held-out (test split) bits-per-byte and multiple-choice accuracy of:

  (a) the dense teacher
  (b) the pruned student, no recovery
  (c) pruned + plain fine-tuning (next-token CE on the domain)
  (d) pruned + KD from the dense teacher
  (e) pruned + KD from the domain-adapted teacher (the teacher first adapted with the same budget)
  (f) (e) + the student-aware divergence curriculum

plus the fraction of the (b)->(a) bits-per-byte gap each arm recovers, and a throughput table
(training tokens/s on this machine for full fine-tuning vs FFN-only vs LoRA, and KD with a live
teacher vs cached top-k teacher logits, all measured in the same run).

Every training run uses the engine defaults that the throughput table justifies: only the FFNs
train (pruning changed nothing else), teacher logits are cached once (top-k), sequences of 256.
Writes results/recover_smollm2.json; prints Markdown tables. Set --device cuda on a GPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from edge_downscale import __version__  # noqa: E402
from edge_downscale._io import cache_dir, write_json_atomic, write_result  # noqa: E402
from edge_downscale.compress.adapt import adapt  # noqa: E402
from edge_downscale.compress.distill import distill  # noqa: E402
from edge_downscale.compress.prune import PruneConfig, prune_to_dirs  # noqa: E402
from edge_downscale.compress.train.checkpoints import read_log  # noqa: E402
from edge_downscale.compress.train.config import DistillConfig, TrainConfig  # noqa: E402
from edge_downscale.compress.train.engine import Engine, LMObjective  # noqa: E402
from edge_downscale.compress.train.packing import load_splits  # noqa: E402
from edge_downscale.config import EvalConfig  # noqa: E402
from edge_downscale.data import heldout_by_domain  # noqa: E402
from edge_downscale.eval import evaluate, markdown_table  # noqa: E402
from edge_downscale.models import load_torch, resolve  # noqa: E402
from edge_downscale.models.torch_backend import TorchBackend  # noqa: E402

ARMS = {
    "a": "dense teacher",
    "b": "pruned, no recovery",
    "c": "pruned + fine-tuning",
    "d": "pruned + KD (dense teacher)",
    "e": "pruned + KD (adapted teacher)",
    "f": "(e) + curriculum",
}


def score(model_dir, domain: str, config: EvalConfig) -> dict:
    model, tok, _ = load_torch(str(model_dir))
    res = evaluate(TorchBackend(model, tok, context_length=config.max_length), heldout_by_domain([domain], config), config,
                   progress=False)
    r = res["domains"][domain]
    return {"bpb": r["bpb"]["bits_per_byte"], "mc": (r.get("mc") or {}).get("accuracy")}


def pruned_student(model: str, ratio: float, seed: int) -> Path:
    """The PruneNet student, built once and cached (policy learning takes about a minute)."""
    out = cache_dir("bench", "recover") / f"{model}-prunenet-{ratio:.2f}-s{seed}"
    if not (out / f"r{ratio:.2f}" / "config.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        prune_to_dirs(model, PruneConfig(out_dir=out, ratios=(ratio,), method="prunenet", seed=seed), progress=True)
    return out / f"r{ratio:.2f}"


def throughput(student: Path, teacher: str, domain: str, base: TrainConfig, steps: int) -> list[dict]:
    """Training tokens/s of each setting over ``steps`` optimizer steps (after one warm-up step)."""
    rows = []
    splits = load_splits(domain)
    settings = [("full fine-tuning (all weights)", "lm", "all", 0), ("FFN only", "lm", "ffn", 0),
                ("LoRA r=16", "lm", "lora", 0), ("KD, live teacher, FFN only", "kd", "ffn", 0),
                ("KD, cached top-64 teacher, FFN only", "kd", "ffn", 64)]
    t_model = None
    for label, objective, mode, topk in settings:
        cfg = TrainConfig.from_dict(dict(base.to_dict(), train=mode, token_budget=(steps + 1) * base.tokens_per_step,
                                         checkpoint_every=0, eval_tokens=base.seq_len + 1))
        model, tok, _ = load_torch(str(student))
        if objective == "lm":
            obj = LMObjective()
        else:
            from edge_downscale.compress.distill import KDObjective
            from edge_downscale.compress.train.checkpoints import weights_fingerprint

            if t_model is None:
                t_model, _, _ = load_torch(teacher)
            obj = KDObjective(t_model, DistillConfig(cache_topk=topk), teacher_id=weights_fingerprint(t_model))
        out = Path(cache_dir("bench", "recover", "throughput")) / f"{mode}-{objective}-{topk}"
        shutil.rmtree(out, ignore_errors=True)
        engine = Engine(model, tok, obj, splits, cfg, out, kind="throughput", progress=False)
        engine.run()
        log = [r for r in read_log(out) if r["event"] == "step"]
        timed = log[1:]  # the first step pays one-off allocation costs
        tok_s = sum(r["tokens"] - p["tokens"] for p, r in zip(log, timed)) / sum(r["seconds"] for r in timed)
        trainable = json.loads((out / "eval_summary.json").read_text())["trainable_params"]
        rows.append({"setting": label, "tokens_per_s": round(tok_s, 1), "trainable_params": trainable})
        print(f"  {label}: {tok_s:.1f} tokens/s, {trainable / 1e6:.1f}M trainable", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--domains", default="code,docs,legal")
    ap.add_argument("--arms", default="abcdef")
    ap.add_argument("--budget", type=int, default=32768, help="training tokens per run (all runs equal)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--train", default="ffn", choices=["ffn", "all", "lora"])
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--eval-bytes", type=int, default=16000)
    ap.add_argument("--mc-items", type=int, default=40)
    ap.add_argument("--throughput-steps", type=int, default=3, help="0 = skip the throughput table")
    ap.add_argument("--throughput-only", action="store_true",
                    help="measure only the throughput table and update it in an existing --json (on a quiet machine)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="where the trained models go (default: a cache directory)")
    ap.add_argument("--json", default="results/recover_smollm2.json")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    domains = [d for d in args.domains.split(",") if d]
    eval_cfg = EvalConfig(max_bytes=args.eval_bytes, mc_items=args.mc_items)
    base = TrainConfig(token_budget=args.budget, seq_len=args.seq_len, batch_size=args.batch,
                       micro_batch=args.micro_batch, lr=args.lr, train=args.train, checkpoint_every=0,
                       device=args.device, seed=args.seed, eval_tokens=2048)
    kd_cfg = DistillConfig(cache_topk=args.topk)
    work = Path(args.work) if args.work else cache_dir("bench", "recover", "runs")
    t_all = time.perf_counter()
    student = pruned_student(args.model, args.ratio, args.seed)
    report = json.loads((student / "pruning_report.json").read_text())
    print(f"student: {student} (FFN width {report['d_ff']} -> {report['kept_width']}, "
          f"params {report['params_before'] / 1e6:.1f}M -> {report['params_after'] / 1e6:.1f}M)", flush=True)
    teacher_dir = str(resolve(args.model).path)  # the teacher as its registry file (GGUF)

    results: dict = {"version": __version__, "model": args.model, "ratio": args.ratio, "machine": platform.machine(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "cuda": torch.cuda.is_available(), "train_config": base.to_dict(), "distill_config": kd_cfg.to_dict(),
                     "eval": eval_cfg.to_dict(), "student": {k: report[k] for k in (
                         "d_ff", "kept_width", "params_before", "params_after", "param_reduction")},
                     "domains": {}, "throughput": []}
    if args.throughput_only:
        results = json.loads(Path(args.json).read_text())
    if args.throughput_steps or args.throughput_only:
        print("training throughput (tokens/s):", flush=True)
        results["throughput"] = throughput(student, args.model, domains[0], base, max(1, args.throughput_steps))
        results["throughput_config"] = {"steps": args.throughput_steps, "domain": domains[0]}
    if args.throughput_only:
        write_result(args.json, results)
        return 0

    def run(kind, out, **kw):
        if (out / "eval_summary.json").exists():
            return json.loads((out / "eval_summary.json").read_text())
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        s = (adapt if kind == "adapt" else distill)(out_dir=out, progress=True, **kw)
        s["wall_seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(out / "eval_summary.json", s)
        return s

    for domain in domains:
        print(f"\n== {domain}", flush=True)
        entry: dict = {"arms": {}}
        d_work = work / f"{args.model}-r{args.ratio:.2f}-b{args.budget}-{args.train}-s{args.seed}" / domain
        arms = entry["arms"]
        if "a" in args.arms:
            arms["a"] = score(teacher_dir, domain, eval_cfg)
        if "b" in args.arms:
            arms["b"] = score(student, domain, eval_cfg)
        if "c" in args.arms:
            s = run("adapt", d_work / "c", model=str(student), domain=domain, config=base)
            arms["c"] = {**score(d_work / "c", domain, eval_cfg), "train": s}
        if "d" in args.arms:
            s = run("distill", d_work / "d", teacher=args.model, student=str(student), domain=domain,
                    config=base, kd=kd_cfg)
            arms["d"] = {**score(d_work / "d", domain, eval_cfg), "train": s}
        if "e" in args.arms or "f" in args.arms:
            # The domain-aware teacher: the dense model adapted to the domain with the same budget.
            s = run("adapt", d_work / "teacher", model=args.model, domain=domain, config=base)
            entry["adapted_teacher"] = {**score(d_work / "teacher", domain, eval_cfg), "train": s}
        if "e" in args.arms:
            s = run("distill", d_work / "e", teacher=str(d_work / "teacher"), student=str(student), domain=domain,
                    config=base, kd=kd_cfg)
            arms["e"] = {**score(d_work / "e", domain, eval_cfg), "train": s}
        if "f" in args.arms:
            cur = DistillConfig.from_dict(dict(kd_cfg.to_dict(), curriculum="divergence"))
            s = run("distill", d_work / "f", teacher=str(d_work / "teacher"), student=str(student), domain=domain,
                    config=base, kd=cur)
            arms["f"] = {**score(d_work / "f", domain, eval_cfg), "train": s}
        if "a" in arms and "b" in arms:
            gap = arms["b"]["bpb"] - arms["a"]["bpb"]
            for k, v in arms.items():
                v["gap_recovered"] = (arms["b"]["bpb"] - v["bpb"]) / gap if gap > 0 else None
        for k, v in arms.items():
            mc = "-" if v.get("mc") is None else f"{v['mc']:.3f}"
            print(f"  ({k}) {ARMS[k]:32s} bpb {v['bpb']:.4f}  mc {mc}", flush=True)
        results["domains"][domain] = entry
        write_result(args.json, results)

    # -- tables ------------------------------------------------------------------------------------
    rows = [["domain"] + [f"({k}) {ARMS[k]}" for k in ARMS if k in args.arms] + ["adapted teacher"]]
    for domain, e in results["domains"].items():
        row = [domain]
        for k in ARMS:
            if k not in args.arms:
                continue
            v = e["arms"][k]
            rec = "" if v.get("gap_recovered") is None or k in "ab" else f" ({100 * v['gap_recovered']:.0f}%)"
            mc = "-" if v.get("mc") is None else f"{v['mc']:.2f}"
            row.append(f"{v['bpb']:.3f}{rec} / {mc}")
        t = e.get("adapted_teacher")
        row.append(f"{t['bpb']:.3f} / {t['mc']:.2f}" if t and t.get("mc") is not None else (f"{t['bpb']:.3f}" if t else "-"))
        rows.append(row)
    print(f"\nheld-out test bits-per-byte (gap recovered) / multiple-choice accuracy; {args.budget} training tokens "
          f"per run, seq {args.seq_len}, batch {args.batch}, train={args.train}:\n")
    print(markdown_table(rows))
    if results["throughput"]:
        print("\ntraining throughput on this machine (same run):\n")
        print(markdown_table([["setting", "tokens/s", "trainable params"]] + [
            [r["setting"], f"{r['tokens_per_s']:.1f}", f"{r['trainable_params'] / 1e6:.1f}M"] for r in results["throughput"]]))
    results["seconds"] = round(time.perf_counter() - t_all, 1)
    write_result(args.json, results)
    print(f"\nwrote {args.json} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
