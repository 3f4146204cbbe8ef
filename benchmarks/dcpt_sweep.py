"""A small D-CPT sweep: domain-continual pretraining of SmolLM2-135M at several domain shares r,
validation losses logged at several token counts D, the D-CPT law fitted, a mixture share proposed.

    .venv/bin/python benchmarks/dcpt_sweep.py                       # 4 shares x 16k tokens (~10 min, 2 cores)
    .venv/bin/python benchmarks/dcpt_sweep.py --shares 0.5,1 --budget 4096   # smoke

Each run is `compress.adapt` with the domain corpus mixed with a replay corpus at share r; its
train_log.jsonl holds validation losses on both (every --eval-every steps), which is exactly what
`edge-downscale laws dcpt RUN_DIRS...` reads. Writes results/dcpt_sweep.json (the points, the fits and
the proposal) and results/dcpt_sweep.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_downscale._io import cache_dir, write_json_atomic, write_result  # noqa: E402
from edge_downscale.compress.adapt import adapt  # noqa: E402
from edge_downscale.compress.laws import analyse_dcpt, format_dcpt, load_dcpt_points, plot_dcpt  # noqa: E402
from edge_downscale.compress.train.config import TrainConfig  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--domain", default="legal")
    ap.add_argument("--replay", default="docs", help="the general corpus mixed in")
    ap.add_argument("--shares", default="0.25,0.5,0.75,1.0")
    ap.add_argument("--budget", type=int, default=16384)
    ap.add_argument("--eval-every", type=int, default=4, help="steps between validation passes (the D points)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default="results/dcpt_sweep.json")
    ap.add_argument("--plot", default="results/dcpt_sweep.png")
    args = ap.parse_args(argv)
    shares = [float(x) for x in args.shares.split(",")]
    work = Path(args.work) if args.work else cache_dir("bench", "dcpt")
    t0 = time.perf_counter()
    runs = []
    for r in shares:
        out = work / f"{args.model}-{args.domain}+{args.replay}-r{r:.2f}-b{args.budget}"
        if not (out / "eval_summary.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            config = TrainConfig(token_budget=args.budget, seq_len=args.seq_len, batch_size=args.batch, lr=args.lr,
                                 domain_share=r, eval_every=args.eval_every, eval_tokens=4096, checkpoint_every=0)
            adapt(args.model, args.domain, out, config=config, replay=args.replay if r < 1 else None)
        summary = json.loads((out / "eval_summary.json").read_text())
        print(f"r={r:.2f}: domain val loss {summary['val_loss']:.4f}, replay val loss "
              f"{summary.get('replay_val_loss') or float('nan'):.4f}", flush=True)
        runs.append(str(out))
    points = load_dcpt_points(runs)
    report = analyse_dcpt(points)
    print("\n" + format_dcpt(report))
    plot_dcpt(points, report.domain, args.plot, general_fit=report.general)
    write_result(args.json, {"model": args.model, "domain": args.domain, "replay": args.replay, "shares": shares,
                                  "budget": args.budget,
                                  "report": report.to_dict(), "seconds": round(time.perf_counter() - t0, 1),
                                  "command": "edge-downscale laws dcpt " + " ".join(runs)})
    print(f"\nwrote {args.json}, {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
