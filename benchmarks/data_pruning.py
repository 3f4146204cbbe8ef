"""Data-pruning benchmark: does a pruned 50% train better than a random 50%, and as well as the full split?

For each domain (default ``legal`` and ``code``):

1. prune the train split to ``--keep`` (0.5) with the recipe ``--recipe`` (default
   dedup,near-dedup,quality,diversity; SmolLM2-135M itself is the reference model) with
   ``edge_downscale.data.prune.prune_corpus``, and draw seeded random subsets of the same size;
2. continue pretraining SmolLM2-135M (HF directory from ``export.source_directory``, torch, fp32,
   CPU unless ``--device``) for the SAME number of optimizer steps on each of: the full train
   split, the random subset(s) and the pruned subset;
3. score held-out bits-per-byte on the domain's test split (``edge_downscale.eval``) for the base
   model and each variant.

Training is the package's engine (``edge_downscale.compress.train.engine``, the LM objective of
``compress.adapt``): every variant's documents are packed into blocks of ``--seq`` + 1 tokens
(EOS after each document), drawn in a seeded order, ``--batch`` blocks per optimizer step, all
weights, AdamW (betas 0.9/0.95, no weight decay), gradient clipping at 1.0, constant learning rate.
Every variant starts from the same weights and uses the same seed.

With a few dozen steps on 2 CPU cores the model sees a few thousand tokens, so differences between
variants can be within noise: two random-subset seeds give a noise estimate, reported next to the
figures. Prints a markdown table and writes ``results/data_pruning.json`` atomically.

    .venv/bin/python benchmarks/data_pruning.py            # about 20-30 min on 2 cores
    .venv/bin/python benchmarks/data_pruning.py --steps 8 --domains legal   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.config import EvalConfig  # noqa: E402
from edge_downscale.data import demo_corpus, heldout_texts, load_corpus  # noqa: E402
from edge_downscale.data.prune import PruneRecipe, parse_steps, prune_corpus, random_subset  # noqa: E402
from edge_downscale.eval import bits_per_byte, markdown_table  # noqa: E402


def train_variant(model, tok, texts: list[str], validation: list[str], args, work: Path) -> dict:
    """Continue pretraining ``model`` in place on ``texts`` with the package's engine (constant lr, all weights)."""
    from edge_downscale.compress.train.config import TrainConfig
    from edge_downscale.compress.train.engine import Engine, LMObjective
    from edge_downscale.compress.train.packing import TextSplits

    config = TrainConfig(token_budget=args.steps * args.batch * args.seq, seq_len=args.seq, batch_size=args.batch,
                         lr=args.lr, warmup_ratio=0.0, min_lr_ratio=1.0, train="all", checkpoint_every=0,
                         eval_tokens=args.seq + 1, device=args.device, seed=args.seed)
    summary = Engine(model, tok, LMObjective(), TextSplits("variant", texts, validation), config, work,
                     kind="data-pruning", progress=False).run()
    model.eval()
    return {"trained_tokens": summary["tokens"], "seconds": summary["train_seconds"],
            "tokens_per_second": summary["tokens_per_s"], "val_loss": summary["val_loss"]}


def heldout_bpb(backend, domain: str, eval_config: EvalConfig) -> float:
    texts, _ = heldout_texts(domain, eval_config)
    return bits_per_byte(backend, texts, max_length=eval_config.max_length, stride=eval_config.stride).bits_per_byte


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--domains", default="legal,code")
    ap.add_argument("--recipe", default="dedup,near-dedup,quality,diversity", help="pruning steps, in order")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--band", default="middle")
    ap.add_argument("--semantic-threshold", type=float, default=0.95)
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per document scored by the reference model")
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per variant (the same for all)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--random-seeds", type=int, default=2, help="random subsets drawn (noise estimate)")
    ap.add_argument("--eval-bytes", type=int, default=6000, help="held-out bytes scored per domain")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "data_pruning.json"))
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edge_downscale.export import source_directory
    from edge_downscale.models.torch_backend import TorchBackend

    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    src = source_directory(args.model)
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32).to(args.device)
    model.eval()
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    backend = TorchBackend(model, tok, context_length=1024, batch_size=4)  # reference model and scorer
    eval_config = EvalConfig(max_bytes=args.eval_bytes, max_length=256, stride=128, mc_items=0)
    recipe_steps = parse_steps(args.recipe)

    results: dict = {"config": vars(args), "model_dir": str(src), "domains": {}, "device": args.device,
                     "torch_threads": torch.get_num_threads()}
    for domain in [d.strip() for d in args.domains.split(",") if d.strip()]:
        print(f"== {domain}", file=sys.stderr, flush=True)
        corpus = demo_corpus(domain, progress=False)
        train_texts = list(load_corpus(corpus)["train"]["text"])
        n = len(train_texts)
        recipe = PruneRecipe(steps=recipe_steps, keep=args.keep, seed=args.seed,
                             quality={"band": args.band, "max_tokens": args.max_tokens},
                             diversity={"threshold": args.semantic_threshold, "max_tokens": args.max_tokens,
                                        "seed": args.seed},
                             active={"max_tokens": args.max_tokens},
                             target=domain if "relevance" in recipe_steps else None, target_split="validation")
        with tempfile.TemporaryDirectory(prefix="prune-bench-") as tmp:
            report = prune_corpus(corpus, Path(tmp) / domain, recipe, reference=backend, progress=False)
            with open(Path(tmp) / domain / "decisions.jsonl", encoding="utf-8") as f:
                pruned_mask = np.array([json.loads(line)["kept"] for line in f], dtype=bool)  # (n,) in train order
        variants: dict[str, np.ndarray] = {"full": np.ones(n, dtype=bool)}
        for s in range(args.random_seeds):
            variants[f"random-{args.keep:.0%} (seed {s})"] = random_subset(n, args.keep, seed=1000 + s)
        variants[f"pruned-{args.keep:.0%}"] = pruned_mask

        validation = list(load_corpus(corpus)["validation"]["text"])
        entry: dict = {"train_documents": n, "prune_report": {k: report[k] for k in ("before", "after", "dropped", "steps",
                                                                                     "budget_documents", "kept_fraction")},
                       "variants": {}}
        model.load_state_dict(base_state)
        entry["base_bpb"] = heldout_bpb(backend, domain, eval_config)
        print(f"  base bpb {entry['base_bpb']:.4f}", file=sys.stderr, flush=True)
        for name, mask in variants.items():
            model.load_state_dict(base_state)
            chosen = [t for t, m in zip(train_texts, mask) if m]
            with tempfile.TemporaryDirectory(prefix="prune-bench-train-") as work:
                train = train_variant(model, tok, chosen, validation, args, Path(work) / "run")
            bpb = heldout_bpb(backend, domain, eval_config)
            entry["variants"][name] = {"documents": int(mask.sum()), "bpb": bpb, "train": train}
            print(f"  {name}: {int(mask.sum())} docs, bpb {bpb:.4f} ({train['seconds']} s, "
                  f"{train['tokens_per_second']} tok/s)", file=sys.stderr, flush=True)
        results["domains"][domain] = entry
    model.load_state_dict(base_state)
    results["seconds"] = round(time.perf_counter() - t_start, 1)

    # ---- tables
    rows = [["domain", "base (no training)", *next(iter(results["domains"].values()))["variants"].keys(),
             "random noise (seed spread)", "pruned vs mean random", "pruned vs full"]]
    for domain, e in results["domains"].items():
        v = {k: x["bpb"] for k, x in e["variants"].items()}
        randoms = [x for k, x in v.items() if k.startswith("random")]
        pruned = next(x for k, x in v.items() if k.startswith("pruned"))
        spread = max(randoms) - min(randoms) if len(randoms) > 1 else float("nan")
        mean_r = float(np.mean(randoms))
        e["summary"] = {"random_mean": mean_r, "random_spread": spread, "pruned_minus_random": pruned - mean_r,
                        "pruned_vs_full_rel": pruned / v["full"] - 1}
        rows.append([domain, f"{e['base_bpb']:.4f}", *[f"{x:.4f}" for x in v.values()], f"{spread:.4f}",
                     f"{pruned - mean_r:+.4f}", f"{pruned / v['full'] - 1:+.2%}"])
    table = markdown_table(rows)
    trows = [["domain", "step", "docs in", "kept", "docs/s"]]
    for domain, e in results["domains"].items():
        for s in e["prune_report"]["steps"]:
            trows.append([domain, s["step"], str(s["documents_in"]), str(s["kept"]), f"{s['docs_per_second'] or 0:.1f}"])
    throughput = markdown_table(trows)
    results["table_markdown"] = table
    results["throughput_markdown"] = throughput
    write_result(args.out, results)
    print(f"held-out bits-per-byte after {args.steps} steps of {args.batch}x{args.seq} tokens "
          f"(lr {args.lr}, recipe {args.recipe}, keep {args.keep}):\n")
    print(table)
    print("\nselector throughput (documents/s, reference-model steps on CPU):\n")
    print(throughput)
    print(f"\ntotal {results['seconds']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
