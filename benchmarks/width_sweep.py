"""How far each specialist can be pruned and still beat the dense teacher, after recovery.

Each ``DOMAIN:RATIO[:MULTIPLE][:kd=TOKENS][:adapt=TOKENS][:trains=ffn|all|lora]`` entry builds the recipe with
that domain's ``prune`` override replaced, and its recovery or adaptation budget and what the recovery trains
where given (``edge-downscale build``,
cached by content, so the other domains and every finished task are reused), then sets the member's
held-out bits-per-byte (the build's own ``heldout_bpb``: the bundle's test text, the member's bundled
quantisation) against the dense teacher's, exported at the same quantisation and
scored on the same text, and its multiple-choice answers on the bench's items against the teacher's
(items won / lost, McNemar's exact p). The recipe's own widths are the first row of every domain. Prints a table and
writes JSON; ``--merge`` keeps the rows of earlier runs in that JSON that this run did not rebuild (each
row names the command that measured it).

    .venv/bin/python benchmarks/width_sweep.py docs:0.25:128 legal:0.6667 [--merge]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headline import member_mc, teacher_export, width_at  # noqa: E402

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.bench import BenchConfig, piece_bits_per_byte, split_pieces  # noqa: E402
from edge_downscale.errors import EdgeDownscaleError  # noqa: E402
from edge_downscale.eval import bits_per_byte, markdown_table, paired_mc_test, read_eval_data  # noqa: E402
from edge_downscale.pipeline import BuildConfig, build, load_recipe  # noqa: E402
from edge_downscale.pipeline.cache import STAGE_FILE  # noqa: E402
from edge_downscale.runtime import open_artifact  # noqa: E402
from edge_downscale.runtime.roofline import weight_bytes_per_token  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


BUDGETS = {"kd": "recover", "adapt": "adapt"}  # DOMAIN:RATIO:kd=N / adapt=N -> that stage's token budget
KD_TRAINS = ("ffn", "all", "lora")  # DOMAIN:RATIO:trains=all -> what the recovery (KD) trains; the recipe's: ffn


def parse_entry(text: str, domains: list[str]) -> tuple[str, dict]:
    """``DOMAIN:RATIO[:MULTIPLE][:kd=TOKENS][:adapt=TOKENS][:trains=ffn|all|lora]`` -> (domain, that domain's
    recipe overrides)."""
    name, *parts = text.split(":")
    try:
        if name not in domains or not parts:
            raise ValueError
        over: dict = {"prune": {"ratio": float(parts[0])}}
        for part in parts[1:]:
            key, _, value = part.rpartition("=")
            if not key:
                over["prune"]["multiple"] = int(value)
            elif key == "trains":
                if value not in KD_TRAINS:
                    raise ValueError
                over.setdefault("recover", {}).setdefault("train", {})["train"] = value
            else:
                over.setdefault(BUDGETS[key], {}).setdefault("train", {})["token_budget"] = int(value)
        if not 0 < over["prune"]["ratio"] < 1:
            raise ValueError
    except (ValueError, KeyError):
        sys.exit(f"width_sweep: {text!r} is not DOMAIN:RATIO[:MULTIPLE][:kd=TOKENS][:adapt=TOKENS][:trains=ffn|all|lora] "
                 f"with a domain of the recipe ({', '.join(domains)}) and a ratio in (0, 1)")
    return name, over


def build_variant(base: dict, name: str, domain: str | None, over: dict | None, tmp: Path, work_dir: str | None, log):
    """(build summary, the variant's recipe): ``base`` with ``domain``'s overrides replaced by ``over``."""
    doc = copy.deepcopy({k: v for k, v in base.items() if k != "source"})
    if domain is not None:
        for d in doc["domains"]:
            if d["name"] == domain:
                d.update(copy.deepcopy(over))
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    summary = build(BuildConfig(recipe=str(path), out=str(tmp / name), work_dir=work_dir, overwrite=True), echo=log)
    return summary, load_recipe(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("entries", nargs="*", help="DOMAIN:RATIO[:MULTIPLE][:kd=TOKENS][:adapt=TOKENS][:trains=ffn|all|lora]: "
                    "that domain's prune ratio (and FFN width multiple), recovery and adaptation budgets and what the "
                    "recovery trains, to build and score")
    ap.add_argument("--recipe", default=str(ROOT / "examples/recipes/smollm2-edge.yaml"))
    ap.add_argument("--work-dir", default=None, help="the build cache (default: the user cache)")
    ap.add_argument("--json", default=str(ROOT / "results/width_sweep.json"))
    ap.add_argument("--bench-bytes", type=int, default=6000, help="held-out bytes per domain of the bench-text "
                    "column (headline.py's --max-bytes): the text the headline study scores")
    ap.add_argument("--mc-items", type=int, default=40, help="the bench's multiple-choice items per domain (the first "
                    "N of the bundle's) to answer with member and teacher (headline.py's --mc-items; 0: skip)")
    ap.add_argument("--merge", action="store_true", help="keep the earlier rows of --json that this run does not "
                    "measure again (same domain, adaptation budget, recovery budget and width)")
    ap.add_argument("--laws-only", action="store_true", help="build nothing: fit the laws again on the rows of --json")
    args = ap.parse_args()
    if args.mc_items < 0:
        ap.error(f"--mc-items must be >= 0 (0: skip the MC column), got {args.mc_items}")
    command = " ".join([".venv/bin/python benchmarks/width_sweep.py", *sys.argv[1:]])
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    recipe = load_recipe(args.recipe)
    base = recipe.to_dict()
    if args.laws_only:
        if not Path(args.json).is_file():
            sys.exit(f"width_sweep: --laws-only reads the rows of {args.json}, which does not exist")
        done = json.loads(Path(args.json).read_text(encoding="utf-8"))
        done.pop("environment", None)
        mark_recipe(done["rows"], recipe)
        table = rows_table(done["rows"])
        print(table)
        laws = fit_laws(done["rows"], recipe)
        for d, law in laws.items():
            print(f"{d}: {law['summary']}")
        write_result(args.json, {**done, "recipe": base, "table": table, "laws": laws})
        return
    entries = [parse_entry(e, recipe.domain_names) for e in args.entries]
    rows, teacher = [], {}
    with tempfile.TemporaryDirectory(prefix="width-sweep-") as tmp:
        for i, (domain, over) in enumerate([(None, None), *entries]):
            summary, variant = build_variant(base, "recipe" if i == 0 else f"entry{i}", domain, over, Path(tmp),
                                             args.work_dir, log)
            bundle = Path(summary["bundle"])
            evals = read_eval_data(bundle / "eval")
            tasks = {(t["kind"], t["domain"]): t for t in summary["tasks"]}
            for d in recipe.domain_names if domain is None else [domain]:
                spec = summary["specialists"][d]
                teacher_dir = teacher_export(spec["quant"], log)
                if (spec["quant"], d) not in teacher:  # the dense teacher at the member's quant, same text
                    teacher[spec["quant"], d] = {"bpb": _bpb(teacher_dir, evals[d][0], recipe.eval),
                                                 "bench_bpb": _bench_bpb(teacher_dir, evals[d][0], args.bench_bytes),
                                                 "mc": member_mc(teacher_dir, evals[d][1][:args.mc_items])}
                dense = teacher[spec["quant"], d]
                prune = tasks[("prune", d)] if ("prune", d) in tasks else tasks[("prune", None)]
                width = _kept_width(summary["work_dir"], prune["key"])
                rows.append({"domain": d, "ratio": variant.section("prune", d).ratio,
                             "adapt_tokens": variant.section("adapt", d).train.token_budget if "adapt" in recipe.stages else 0,
                             "recover_tokens": variant.section("recover", d).train.token_budget
                             if "recover" in recipe.stages else 0,
                             "recover_trains": variant.section("recover", d).train.train,
                             "ffn_width": width, "quant": spec["quant"], "member_mb": spec["bytes"] / 1e6,
                             "weight_bytes_vs_teacher": weight_bytes_per_token(bundle / "members" / d) /
                             weight_bytes_per_token(teacher_dir),
                             "member_bpb": spec["heldout_bpb"], "teacher_bpb": dense["bpb"],
                             "heldout_bytes": spec["heldout_bytes"],
                             "bench_bytes": args.bench_bytes, "teacher_bench_bpb": dense["bench_bpb"],
                             "member_bench_bpb": _bench_bpb(bundle / "members" / d, evals[d][0], args.bench_bytes)})
                if dense["mc"]:  # per item, so which items a member loses can be read from the JSON
                    mine = member_mc(bundle / "members" / d, evals[d][1][:args.mc_items])
                    rows[-1].update(mc_item_correct=mine, teacher_mc_item_correct=dense["mc"],
                                    mc_vs_teacher=paired_mc_test(mine, dense["mc"]))
    for r in rows:
        r["vs_teacher"] = r["member_bpb"] - r["teacher_bpb"]
        r["bench_vs_teacher"] = r["member_bench_bpb"] - r["teacher_bench_bpb"]
        r["command"] = command
    runs = [{"command": command, "seconds": round(time.perf_counter() - t0, 1), "recipe": base}]
    if args.merge and Path(args.json).is_file():
        earlier = json.loads(Path(args.json).read_text(encoding="utf-8"))
        rows += [r for r in earlier.get("rows", []) if _row_key(r) not in {_row_key(n) for n in rows}]
        runs = earlier.get("runs", []) + runs
    mark_recipe(rows, recipe)
    table = rows_table(rows)
    print(table)
    laws = fit_laws(rows, recipe)
    for d, law in laws.items():
        print(f"{d}: {law['summary']}")
    write_result(args.json, {"recipe": base, "runs": runs, "rows": rows, "table": table, "laws": laws})


def mark_recipe(rows: list[dict], recipe) -> None:
    """Flag (``recipe``) the rows measured at the recipe's own ratio and budgets, and sort the rows."""
    def budget(stage: str, d: str) -> int:
        return recipe.section(stage, d).train.token_budget if stage in recipe.stages else 0

    for r in rows:
        d = r["domain"]
        r["recipe"] = (abs(r["ratio"] - recipe.section("prune", d).ratio) < 1e-9 and
                       r["adapt_tokens"] == budget("adapt", d) and r.get("recover_tokens", 0) == budget("recover", d)
                       and _trains(r) == recipe.section("recover", d).train.train)
    rows.sort(key=lambda r: (recipe.domain_names.index(r["domain"]), -r["adapt_tokens"], -r.get("recover_tokens", 0),
                             _trains(r) != "ffn", -r["ffn_width"]))


def rows_table(rows: list[dict]) -> str:
    return markdown_table([["domain", "adapt tokens", "KD tokens", "FFN width", "ratio", "quant", "MB",
                            "weight bytes/token vs teacher", "member bpb", "teacher bpb", "vs teacher",
                            "vs teacher, bench text", "MC items won/lost vs teacher (p)", "the recipe's"],
                           *([r["domain"], str(r["adapt_tokens"]),
                              str(r.get("recover_tokens", "?")) + ("" if _trains(r) == "ffn" else f" ({_trains(r)})"),
                              str(r["ffn_width"]),
                              f"{r['ratio']:g}", r["quant"], f"{r['member_mb']:.0f}", f"{r['weight_bytes_vs_teacher']:.3f}",
                              f"{r['member_bpb']:.4f}", f"{r['teacher_bpb']:.4f}", f"{r['vs_teacher']:+.4f}",
                              f"{r['bench_vs_teacher']:+.4f}" if "bench_vs_teacher" in r else "-",
                              "{wins}/{losses} ({p_value:.2g})".format(**r["mc_vs_teacher"]) if "mc_vs_teacher" in r else "-",
                              "yes" if r["recipe"] else ""] for r in rows)])


LAW_TOKENS_UNIT = 1e4  # KD budgets of 32k-128k tokens span 3-13 units (the law's D term wants ~0.1-100)


def fit_laws(rows: list[dict], recipe) -> dict[str, dict]:
    """Per domain, the compression law fitted on its rows at the recipe's adaptation budget, and the
    narrowest FFN width that still breaks even with the dense teacher (sigma = 1) per the law.

    A point: r = the share of the teacher's weight bytes per token the member no longer reads, D = its
    KD tokens, L0 = the dense teacher's bits-per-byte, L = the member's (both on the 24 kB held-out text).
    """
    from edge_downscale.compress.laws import LawPoint, critical_ratio, fit_quality_law
    from edge_downscale.errors import LawFitError

    out = {}
    for d in recipe.domain_names:
        adapt = recipe.section("adapt", d).train.token_budget if "adapt" in recipe.stages else 0
        mine = [r for r in rows if r["domain"] == d and r["adapt_tokens"] == adapt and r.get("recover_tokens")
                and _trains(r) == recipe.section("recover", d).train.train]  # one family: what the recipe's KD trains
        if len(mine) < 3:
            continue
        # bytes per token are linear in the FFN width: width_at(line, r) inverts that line
        slope, icpt = (float(x) for x in np.polyfit([r["ffn_width"] for r in mine],
                                                    [r["weight_bytes_vs_teacher"] for r in mine], 1))
        line = {"slope": slope, "intercept": icpt}
        # one dense teacher per domain: rows scored by other llama.cpp builds differ in its 4th decimal, and a
        # law fitted on L0s that close would read that noise as alpha; every point takes the median
        L0 = float(np.median([r["teacher_bpb"] for r in mine]))
        try:
            fit = fit_quality_law([LawPoint(r=1 - r["weight_bytes_vs_teacher"], D=r["recover_tokens"],
                                            L0=L0, L=r["member_bpb"]) for r in mine],
                                  "bpb", tokens_unit=LAW_TOKENS_UNIT)
        except LawFitError as e:
            out[d] = {"summary": f"no fit ({e})"}
            continue
        kd = recipe.section("recover", d).train.token_budget
        if fit.gamma is None:  # one KD budget measured: the law holds at that budget only, and has no D -> inf limit
            kd, budgets = int(fit.fixed_D), (fit.fixed_D,)
        else:
            budgets = (kd, None)
        even = {str(None if D is None else int(D)): critical_ratio(fit, 1.0, D=D).to_dict() for D in budgets}
        for c in even.values():
            c["ffn_width"] = width_at(line, c["r_crit"])
        unlimited = (f"{even['None']['ffn_width']} with unlimited KD" if "None" in even else
                     "unlimited KD not identifiable (one KD budget measured)")
        out[d] = {"adapt_tokens": adapt, "points": len(mine), "fit": fit.to_dict(), "break_even": even,
                  "width_line": line,
                  "summary": (f"{len(mine)} points, beta {fit.beta:.3f}, gamma "
                              f"{'-' if fit.gamma is None else format(fit.gamma, '.3f')}, R^2 {fit.r2 or 0:.3f}; "
                              f"breaks even with the teacher down to FFN width {even[str(kd)]['ffn_width']} at "
                              f"{kd} KD tokens; {unlimited}")}
    return out


def _bpb(model: Path, texts: list[str], cfg) -> float:
    """Bits-per-byte of ``model`` on the whole held-out text, sliding window (what ``heldout_bpb`` is)."""
    with open_artifact(model) as backend:
        return bits_per_byte(backend, texts, max_length=cfg.max_length, stride=cfg.stride).bits_per_byte


def _bench_bpb(model: Path, texts: list[str], max_bytes: int) -> float:
    """Bits-per-byte as ``bench`` scores it: the first ``max_bytes`` cut into its pieces, each from BOS."""
    with open_artifact(model) as backend:
        return piece_bits_per_byte(backend, split_pieces(texts, BenchConfig().piece_chars, max_bytes)).bits_per_byte


def _row_key(row: dict) -> tuple:
    """What makes two rows the same measurement (a rebuild of the same tasks gives the same numbers)."""
    return row["domain"], row["adapt_tokens"], row.get("recover_tokens"), _trains(row), row["ffn_width"], row["quant"]


def _trains(row: dict) -> str:
    """What the row's recovery trained (rows from before the field was recorded trained the FFNs)."""
    return row.get("recover_trains", "ffn")


def _kept_width(work_dir: str, key: str) -> int:
    return int(json.loads((Path(work_dir) / "prune" / key / STAGE_FILE).read_text())["result"]["kept_width"])


if __name__ == "__main__":
    try:
        main()
    except EdgeDownscaleError as e:  # a bad recipe, a missing model: one line, no traceback
        sys.exit(f"width_sweep: {e}")
