"""Where a specialist's bits-per-byte go: each step of the default recipe, measured on one held-out text.

    .venv/bin/python benchmarks/recovery_gap.py BUNDLE [--max-bytes 12000] [--domains code,docs] [--kd-tokens 8192]
                                                       [--no-kd-check] [--widths 1280,1408]

BUNDLE is a bundle built by `edge-downscale build` (its build_summary.json names the cached tasks).
Per domain, torch fp32 bits-per-byte on the bundle's own held-out test text of:

  dense teacher -> adapted teacher -> pruned (activation scores, no refit) -> pruned + down_proj refit
  layer by layer -> pruned + sequential refit -> recovered (the bundle's specialist, before export)

so the price of pruning, what each refit wins back and what recovery adds are read off one row.
The pruned models are made here from the adapted teacher at the recipe's width; ``--widths`` adds the
sequentially refitted model at other FFN widths (multiples of 128), the price of pruning by width,
and per domain the compression law fitted on those points (the adapted model as r = 0; r = the share
of FFN width removed; no recovery) with its break-even ratio: the largest r whose pruned model still
scores no worse than the dense teacher, and the weight bytes read per token at that ratio (the
bench's roofline model). ``--law-only`` refits the law on the rows an earlier run wrote to --json.
The KD check (first domain) trains the refitted student for --kd-tokens with the recipe's KD settings
three ways, side by side: the cached top-k teacher renormalised over its k tokens (the old target),
the cached top-k teacher with its tail mass as one bin (the current one), and the live teacher.
Writes results/recovery_gap.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.compress.distill import KDObjective, kd_loss_topk  # noqa: E402
from edge_downscale.compress.laws.compression import LawPoint, critical_ratio, fit_quality_law  # noqa: E402
from edge_downscale.compress.prune import calibration_sequences, prune_  # noqa: E402
from edge_downscale.compress.prune.ffn import ffn_layers, ffn_width, kept_width  # noqa: E402
from edge_downscale.compress.train.checkpoints import weights_fingerprint  # noqa: E402
from edge_downscale.compress.train.engine import Engine  # noqa: E402
from edge_downscale.compress.train.packing import load_splits  # noqa: E402
from edge_downscale.eval import markdown_table  # noqa: E402
from edge_downscale.eval.bpb import bits_per_byte  # noqa: E402
from edge_downscale.eval.datafile import read_eval_data  # noqa: E402
from edge_downscale.models import load_torch  # noqa: E402
from edge_downscale.models.torch_backend import TorchBackend  # noqa: E402
from edge_downscale.pipeline import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAW_HEADING = "\n\nCompression law per domain (sequential refit, no recovery; r = share of FFN width removed):\n"
STEPS = ("teacher", "adapted", "pruned", "pruned+refit", "pruned+seq-refit", "recovered")
PRUNED = {"pruned": {"refit": False}, "pruned+refit": {"refit": True, "refit_mode": "layer"},
          "pruned+seq-refit": {"refit": True, "refit_mode": "sequential"}}


class RenormalisedKD(KDObjective):
    """The old cached-teacher target: top-k logits renormalised over k (no tail bin), for the ablation."""

    def loss(self, model, batch):
        out = model(input_ids=batch["input_ids"])
        vals, idx, _ = self.cache.batch(batch["items"], batch["input_ids"].device)
        return kd_loss_topk(out.logits, vals, idx, batch["labels"], alpha=self.kd.alpha, tau=self.kd.tau)


def truncated(texts: list[str], max_bytes: int) -> list[str]:
    out, n = [], 0
    for t in texts:
        if n >= max_bytes:
            break
        t = t.encode("utf-8")[: max_bytes - n].decode("utf-8", "ignore")
        out.append(t)
        n += len(t.encode("utf-8"))
    return out


def kd_check(recover, teacher: str, student: str, data: str, tokens: int) -> list[dict]:
    rows = []
    config = copy.deepcopy(recover.train)
    config.token_budget, config.eval_tokens = tokens, 8192
    arms = {"top-k renormalised": (RenormalisedKD, recover.distill.cache_topk),
            "top-k + tail bin": (KDObjective, recover.distill.cache_topk), "live teacher": (KDObjective, 0)}
    t_model, _, _ = load_torch(teacher)
    for name, (cls, k) in arms.items():
        kd = copy.deepcopy(recover.distill)
        kd.cache_topk = k
        s_model, s_tok, _ = load_torch(student)
        out = Path(tempfile.mkdtemp(prefix="kdcheck-"))
        try:
            t0 = time.perf_counter()
            summary = Engine(s_model, s_tok, cls(t_model, kd, teacher_id=weights_fingerprint(t_model)),
                             load_splits(data), config, out / "run", kind="distill", progress=False).run()
            log = [json.loads(line) for line in (out / "run" / "train_log.jsonl").read_text().splitlines()]
        finally:
            shutil.rmtree(out, ignore_errors=True)
        evals = [e["val_loss"] for e in log if e.get("event") == "eval"]
        rows.append({"target": name, "val_loss_before": evals[0], "val_loss_after": evals[-1],
                     "tokens": summary["tokens"], "seconds": round(time.perf_counter() - t0, 1)})
        print(f"kd check {name}: val loss {evals[0]:.4f} -> {evals[-1]:.4f}", file=sys.stderr, flush=True)
    return rows


def weight_reads(model_dir: str) -> dict:
    """FFN width and the FFN's share of the weights read per decoded token: every linear layer, the LM head
    included (a tied head counts once); the input embedding is only gathered."""
    import torch

    model, _, _ = load_torch(model_dir)
    linear = sum(m.weight.numel() for m in {id(m): m for m in model.modules() if isinstance(m, torch.nn.Linear)}.values())
    ffn = sum(f.gate.weight.numel() + f.up.weight.numel() + f.down.weight.numel() for f in ffn_layers(model))
    return {"d_ff": ffn_width(model), "ffn_share": ffn / linear}


def break_even(row: dict, ratio_width: int, widths: list[int], reads: dict) -> dict:
    """The compression law on one domain's pruned points and the ratio at which it meets the teacher."""
    d_ff, adapted = reads["d_ff"], row["adapted"]
    points = [LawPoint(r=0.0, D=0, L0=adapted, L=adapted, method="activation+seq-refit")]
    points += [LawPoint(r=1 - w / d_ff, D=0, L0=adapted, L=row[step], method="activation+seq-refit")
               for w, step in [(ratio_width, "pruned+seq-refit"), *((w, f"seq-refit@{w}") for w in widths)]]
    fit = fit_quality_law(points, "bpb")
    crit = critical_ratio(fit, row["teacher"] / adapted, L0=adapted)
    out = {"points": [{"ratio": round(p.r, 4), "bpb": p.L} for p in points], "beta": fit.beta, "r2_log": fit.r2_log,
           "r_crit": crit.r_crit, "note": crit.note}
    if crit.r_crit is not None:
        out["width"] = round(d_ff * (1 - crit.r_crit))
        out["weight_reads_vs_dense"] = round(1 - crit.r_crit * reads["ffn_share"], 4)
    return out


def law_table(laws: dict) -> str:
    rows = [[d, f"{x['beta']:.3f}", "-" if x["r2_log"] is None else f"{x['r2_log']:.3f}",
             "-" if x["r_crit"] is None else f"{x['r_crit']:.3f}", str(x.get("width", "-")),
             str(x.get("weight_reads_vs_dense", "-"))] for d, x in laws.items()]
    return markdown_table([["domain", "beta", "R^2 (log)", "break-even r", "FFN width", "weight bytes/token vs dense"],
                           *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--max-bytes", type=int, default=12000, help="held-out bytes scored per domain")
    ap.add_argument("--kd-tokens", type=int, default=8192)
    ap.add_argument("--no-kd-check", action="store_true")
    ap.add_argument("--domains", default=None, help="comma-separated domains of the bundle (default: all)")
    ap.add_argument("--widths", default="", help="comma-separated extra FFN widths (multiples of 128), sequential refit")
    ap.add_argument("--json", default=str(ROOT / "results/recovery_gap.json"))
    ap.add_argument("--law-only", action="store_true", help="refit the law on the rows already in --json; run no model")
    args = ap.parse_args()
    bundle = Path(args.bundle)
    if not (bundle / "build_summary.json").is_file():
        sys.exit(f"recovery_gap: {bundle} is not a bundle written by `edge-downscale build` (no build_summary.json)")
    build = json.loads((bundle / "build_summary.json").read_text())
    recipe = load_recipe(str(bundle / "recipe.yaml"), build.get("profile"))
    work = Path(build["work_dir"])
    task = {(t["kind"], t["domain"]): work / t["kind"] / t["key"] for t in build["tasks"]}
    evals = read_eval_data(bundle / "eval")
    if args.domains:
        unknown = sorted(set(args.domains.split(",")) - set(evals))
        if unknown:
            sys.exit(f"recovery_gap: no domain {', '.join(unknown)} in {bundle}; it has {', '.join(evals)}")
        evals = {d: evals[d] for d in args.domains.split(",")}
    reads = weight_reads(str(task[("adapt", next(iter(evals)))]))
    prune = {d: recipe.section("prune", d) for d in evals}  # each domain's own ratio (recipe domain overrides)
    recipe_width = {d: kept_width(reads["d_ff"], p.ratio, p.multiple) for d, p in prune.items()}
    if args.law_only:
        if not Path(args.json).is_file():
            sys.exit(f"recovery_gap: --law-only needs the rows of an earlier run in {args.json}")
        result = json.loads(Path(args.json).read_text())
        result["recipe_width"] = recipe_width
        result["laws"] = {d: break_even(row, recipe_width[d], result["widths"], reads) for d, row in result["bpb"].items()}
        result["table"] = result["table"].split(LAW_HEADING)[0] + LAW_HEADING + law_table(result["laws"])
        write_result(args.json, result)
        print(result["table"])
        return
    try:
        widths = [int(w) for w in args.widths.split(",") if w]
    except ValueError:
        sys.exit(f"recovery_gap: --widths takes comma-separated integers, got {args.widths!r}")
    if any(w % 128 or not 0 < w < reads["d_ff"] for w in widths):
        sys.exit(f"recovery_gap: every --widths entry must be a multiple of 128 below the FFN width "
                 f"{reads['d_ff']}, got {args.widths}")
    steps = [*STEPS, *(f"seq-refit@{w}" for w in widths)]
    rows, table = {}, []
    for d, (texts, _) in evals.items():
        texts = truncated(texts, args.max_bytes)
        data = task.get(("dataprune", d)) or task[("corpus", d)]
        adapted, p = str(task[("adapt", d)]), prune[d]
        models = {"teacher": recipe.teacher, "adapted": adapted, "recovered": str(task[("recover", d)])}
        rows[d] = {}
        for step in steps:
            if step not in models:  # pruned from the adapted teacher here, with the recipe's selection
                model, tok, _ = load_torch(adapted)
                calib = calibration_sequences(tok, str(data), n=p.calib_sequences)
                if step in PRUNED:
                    prune_(model, p.method, p.ratio, multiple=p.multiple, seed=p.seed, calibration=calib, **PRUNED[step])
                else:
                    width = int(step.split("@")[1])
                    prune_(model, p.method, 1 - width / reads["d_ff"], multiple=128, seed=p.seed,
                           calibration=calib, refit=True, refit_mode="sequential")
            else:
                model, tok, _ = load_torch(models[step])
            rows[d][step] = round(bits_per_byte(TorchBackend(model, tok), texts).bits_per_byte, 4)
            print(f"{d} {step}: {rows[d][step]}", file=sys.stderr, flush=True)
        table.append([d, *(f"{rows[d][s]:.3f}" for s in steps)])
    laws = {d: break_even(rows[d], recipe_width[d], widths, reads) for d in rows}
    result = {"bundle": str(bundle), "recipe": recipe.to_dict(), "max_bytes": args.max_bytes, "widths": widths,
              "recipe_width": recipe_width, "bpb": rows, "laws": laws}
    text = markdown_table([["domain", *steps], *table]) + LAW_HEADING + law_table(laws)
    if not args.no_kd_check:
        d = next(iter(evals))
        student, data = task[("prune", d)] / f"r{prune[d].ratio:.2f}", task.get(("dataprune", d)) or task[("corpus", d)]
        result["kd_check"] = {"domain": d, "rows": kd_check(recipe.section("recover", d), str(task[("adapt", d)]),
                                                             str(student), str(data), args.kd_tokens)}
        text += "\n\n" + markdown_table([["KD target (" + d + f", {args.kd_tokens} tokens)", "val loss before", "after"],
                                         *([r["target"], f"{r['val_loss_before']:.4f}", f"{r['val_loss_after']:.4f}"]
                                           for r in result["kd_check"]["rows"])])
    result["table"] = text
    write_result(args.json, result)
    print(text)


if __name__ == "__main__":
    main()
