"""Multiple choice with more items: is an MC difference between the ensemble and the dense teacher real?

    .venv/bin/python benchmarks/mc_power.py [--items 120] [--recipe examples/recipes/smollm2-edge.yaml]
                                            [--no-generalist] [--json results/mc_power.json]

The headline bench answers each domain's first 40 items, the ones the bundle carries. Here the same
builder (`edge_downscale.eval.build_items`, the recipe's eval settings and seed) draws ``--items`` per
domain from the same test split, so the bench's 40 are the first 40 (checked). The dense teacher
(at the members' quantisation), the routed ensemble (`Ensemble.choose`, as the bench answers), each
unpruned (adapted only) specialist on its own domain and the compute-matched generalist answer every
item; each is compared with the teacher on the first 40 and on all items, by items won / lost and
McNemar's exact test (`edge_downscale.eval.paired_mc_test`). The models are headline.py's (its
`study_builds`), reused from the build cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headline import data_dirs, member_mc, study_builds, teacher_export  # noqa: E402
from tqdm import tqdm  # noqa: E402

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.errors import EdgeDownscaleError  # noqa: E402
from edge_downscale.eval import markdown_table, paired_mc_test, read_eval_data  # noqa: E402
from edge_downscale.pipeline.stages import eval_data  # noqa: E402
from edge_downscale.runtime import Ensemble  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def items_for(recipe, summary: dict, n: int) -> dict[str, list]:
    """``n`` items per domain from the test split the bundle's were drawn from; its items must be their prefix."""
    bundle = read_eval_data(Path(summary["bundle"]) / "eval")
    out = {}
    for d, corpus in data_dirs(summary, Path(summary["work_dir"])).items():
        _, items = eval_data(str(corpus), dataclasses.replace(recipe.eval, mc_items=n))
        k = min(len(items), len(bundle[d][1]))
        if [(i.context, i.choices, i.answer) for i in items[:k]] != \
                [(i.context, i.choices, i.answer) for i in bundle[d][1][:k]]:
            sys.exit(f"mc_power: the {d} items drawn here do not start with the bundle's; rebuild the bundle")
        out[d] = items
    return out


def answer_route(bundle: Path, items: list, bar) -> list[int]:
    ens = Ensemble.load(bundle)
    try:
        out = []
        for item in items:
            out.append(int(ens.choose(item.context, item.choices).choice == item.answer))
            bar.update(1)
        return out
    finally:
        ens.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "examples/recipes/smollm2-edge.yaml"))
    ap.add_argument("--profile", default=None)
    ap.add_argument("--work-dir", default=None, help="the build cache (default: the user cache)")
    ap.add_argument("--items", type=int, default=120, help="items per domain (the bench answers the first 40)")
    ap.add_argument("--bench-items", type=int, default=40, help="the headline bench's items per domain: the "
                    "comparison is reported on these first too")
    ap.add_argument("--no-generalist", action="store_true", help="leave out the compute-matched generalist")
    ap.add_argument("--json", default=str(ROOT / "results/mc_power.json"))
    args = ap.parse_args()
    if args.items < 1 or not 0 <= args.bench_items <= args.items:
        ap.error(f"need --items >= 1 and 0 <= --bench-items <= --items, got {args.items} and {args.bench_items}")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mc-power-") as tmp:
        recipe, builds, rows = study_builds(args.recipe, args.profile, args.work_dir, Path(tmp), log,
                                            generalist=not args.no_generalist)
        spec = builds["specialists"]
        items = items_for(recipe, spec, args.items)
        domains = list(items)
        quant = sorted({s["quant"] for s in spec["specialists"].values()})[0]
        teacher = teacher_export(quant, log)
        paths = dict(rows)
        answer = {f"teacher-{quant}": lambda d, its, bar: member_mc(teacher, its, bar),  # (domain, items, bar)
                  "specialists[route]": lambda d, its, bar: answer_route(paths["specialists"], its, bar),
                  "unpruned (own domain)": lambda d, its, bar: member_mc(paths[f"unpruned/{d}"], its, bar)}
        if "generalist" in paths:
            answer["generalist"] = lambda d, its, bar: member_mc(paths["generalist"], its, bar)
        with tqdm(total=len(answer) * sum(map(len, items.values())), unit="item", desc="mc") as bar:
            correct = {label: {d: how(d, items[d], bar) for d in domains} for label, how in answer.items()}
    ref = next(iter(answer))
    result = {"items": {d: len(items[d]) for d in domains}, "bench_items": args.bench_items, "reference": ref,
              "correct": correct, "models": {}}
    table = [["model", *[f"{d} MC ({k})" for d in domains for k in (args.bench_items, len(items[d]))],
              *[f"{d} won/lost vs teacher (p), all items" for d in domains]]]
    for label in answer:
        row = result["models"][label] = {}
        for d in domains:
            c, t = correct[label][d], correct[ref][d]
            k = min(args.bench_items, len(c))
            row[d] = {"acc_bench_items": sum(c[:k]) / k if k else None, "acc": sum(c) / len(c),
                      "vs_teacher_bench_items": paired_mc_test(c[:k], t[:k]), "vs_teacher": paired_mc_test(c, t)}
        table.append([label, *[f"{row[d][key]:.3f}" if row[d][key] is not None else "-"
                               for d in domains for key in ("acc_bench_items", "acc")],
                      *["{wins}/{losses} ({p_value:.2g})".format(**row[d]["vs_teacher"]) for d in domains]])
    result["table"] = markdown_table(table)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(result["table"])
    write_result(args.json, result)


if __name__ == "__main__":
    try:
        main()
    except EdgeDownscaleError as e:  # a bad recipe, a missing model: one line, no traceback
        sys.exit(f"mc_power: {e}")
