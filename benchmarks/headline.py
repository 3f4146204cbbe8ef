"""The headline study: does the default recipe's ensemble of pruned specialists beat the dense teacher?

    .venv/bin/python benchmarks/headline.py [--recipe examples/recipes/smollm2-edge.yaml] [--profile P]
                                            [--quick] [--no-gemma] [--json results/headline.json]
    .venv/bin/python benchmarks/headline.py --targets-only   # the targets of the last run, with the current laws

One run, one machine, one runtime, the same held-out test text and multiple-choice items (the
specialists' bundle carries them), every configuration benched side by side (`edge_downscale.bench`,
rounds interleaved). Rows:

1. the dense teacher, exported at the specialists' quantisation, and as shipped (Q4_1);
2. the compute-matched generalist: the teacher adapted on the union of the domains' training text
   for as many tokens as all specialists were trained on together (adapt + recover);
3. gemma3-270m (Q4_K_M), twice the size;
4. each specialist alone on every domain, and the same specialists unpruned (adapted only);
5. the ensemble under route, mixture and vote.

Every model comes from `edge-downscale build` on recipes derived from the one given (the unpruned and
generalist recipes reuse its cached adapt tasks and corpora). The targets are checked and printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from edge_downscale._io import atomic_path, cache_dir, write_result  # noqa: E402
from edge_downscale.bench import BenchConfig, run_bench  # noqa: E402
from edge_downscale.data import iter_texts  # noqa: E402
from edge_downscale.errors import EdgeDownscaleError  # noqa: E402
from edge_downscale.eval import markdown_table, paired_mc_test, score_items  # noqa: E402
from edge_downscale.pipeline import BuildConfig, Recipe, build, load_recipe  # noqa: E402
from edge_downscale.runtime import open_artifact  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def derived_recipe(base: dict, path: Path, **changes) -> Path:
    """Write ``base`` (a resolved recipe dict) with top-level ``changes`` as a new recipe file."""
    d = {k: v for k, v in base.items() if k != "source"}
    d.update(changes)
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return path


def run_build(recipe: Path, out: Path, work_dir: str | None, log) -> dict:
    t0 = time.perf_counter()
    summary = build(BuildConfig(recipe=str(recipe), out=str(out), work_dir=work_dir, overwrite=True), echo=log)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    return summary


def data_dirs(summary: dict, work: Path) -> dict[str, Path]:
    """``{domain: the corpus directory its specialist was built from}`` in a build's summary (after data
    pruning where the recipe prunes: its test split is the corpus's own)."""
    kinds = {t["domain"]: t for t in summary["tasks"] if t["kind"] in ("corpus", "dataprune")}  # dataprune wins
    return {d: work / t["kind"] / t["key"] for d, t in kinds.items()}


def union_corpus(summary: dict, work: Path) -> Path:
    """The training text of every domain, as one JSONL corpus (what the generalist is adapted on).

    Written once per content into the work dir (``headline/union-<sha256>.jsonl``): a build keys a
    corpus file by its path, size and mtime, so a rerun finds the same file and reuses the generalist.
    """
    lines = [json.dumps({"text": text}) + "\n" for _, path in sorted(data_dirs(summary, work).items())
             for text in iter_texts(path, "train")]
    body = "".join(lines).encode("utf-8")
    path = work / "headline" / f"union-{hashlib.sha256(body).hexdigest()[:16]}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(body)
    return path


def study_builds(recipe_path: str, profile: str | None, work_dir: str | None, tmp: Path, log, *,
                 generalist: bool = True, union: str | None = None) -> tuple[Recipe, dict, list[tuple[str, Path]]]:
    """Build (or reuse from the cache) the study's models under ``tmp``: the recipe's specialists, the same
    specialists unpruned (adapt only) and the compute-matched generalist (the teacher adapted on the union
    of the domains' train splits for as many tokens as all specialists together, adapt + recover).

    Returns (the recipe, {build name: its summary}, the study's rows as (label, directory): the
    specialists' bundle, then each unpruned specialist and the generalist, members alone)."""
    recipe = load_recipe(recipe_path, profile)
    base = recipe.to_dict()
    domains = [d.name for d in recipe.domains]
    work = Path(work_dir).expanduser() if work_dir else cache_dir("build")
    recipes = {"specialists": Path(recipe_path) if not profile else derived_recipe(base, tmp / "specialists.yaml"),
               "unpruned": derived_recipe(base, tmp / "unpruned.yaml", name="unpruned", stages=["adapt"])}
    builds = {name: run_build(path, tmp / name, work_dir, log) for name, path in recipes.items()}
    tokens = sum(recipe.section("adapt", d).train.token_budget * ("adapt" in recipe.stages) +
                 recipe.section("recover", d).train.token_budget * ("recover" in recipe.stages) for d in domains)
    if generalist:
        corpus = Path(union) if union else union_corpus(builds["specialists"], work)
        adapt = {**base["adapt"], "train": {**base["adapt"]["train"], "token_budget": tokens}}
        builds["generalist"] = run_build(derived_recipe(base, tmp / "generalist.yaml", name="generalist",
                                                        stages=["adapt"], domains=[{"name": "general", "corpus": str(corpus)}],
                                                        data={**base["data"], "prune": None}, adapt=adapt),
                                         tmp / "generalist", work_dir, log)
    rows = [("specialists", tmp / "specialists"), *[(f"unpruned/{d}", tmp / "unpruned" / "members" / d) for d in domains]]
    if "generalist" in builds:
        rows.append(("generalist", tmp / "generalist" / "members" / "general"))
    return recipe, builds, rows


def member_mc(model: Path, items: list, progress=None) -> list[int]:
    """Per item, 1 where the model in ``model`` (an export directory) picks the true continuation, as ``bench``
    scores it; [] for no items."""
    if not items:
        return []
    with open_artifact(model) as backend:
        return list(score_items(backend, items, max_length=backend.context_length, progress=progress).item_correct)


def teacher_export(quant: str, log) -> Path:
    """The dense teacher exported (parity-gated) at ``quant``, cached across runs."""
    from edge_downscale.export import ExportConfig, export_model, source_directory

    root = cache_dir("bench", "smollm2-gguf")
    art = root / f"gguf-{quant}"
    if not (art / "model.json").is_file():
        tmp = root / "new"
        shutil.rmtree(tmp, ignore_errors=True)
        export_model(str(source_directory("smollm2-135m")), ExportConfig(out_dir=tmp, format="gguf", quants=(quant,)),
                     log=log)
        os.replace(tmp / f"gguf-{quant}", art)
        shutil.rmtree(tmp, ignore_errors=True)
    return art


def closing_widths(generalist: dict, teacher: dict, domains: list[str], laws: dict) -> dict[str, dict]:
    """Per domain, the FFN width at which the compression law (fitted by width_sweep.py on its own points)
    predicts a member as good as the generalist: sigma = generalist / teacher bits-per-byte on this text."""
    from edge_downscale.compress.laws import QualityLawFit, critical_ratio

    out = {}
    for d in domains:
        law = laws.get(d)
        if not law or "fit" not in law:
            continue
        fit = QualityLawFit.from_dict(law["fit"])
        sigma = generalist["domains"][d]["bpb"] / teacher["domains"][d]["bpb"]
        out[d] = {"sigma": sigma}
        for budget in law["break_even"]:
            crit = critical_ratio(fit, sigma, D=None if budget == "None" else float(budget))
            out[d][f"kd_{budget}"] = {"r_crit": crit.r_crit, "note": crit.note,
                                      "ffn_width": width_at(law["width_line"], crit.r_crit)}
    return out


def width_at(line: dict, r: float | None) -> int | None:
    """The FFN width that reads ``1 - r`` of the teacher's weight bytes per token, on ``line`` (the share of
    bytes as ``intercept + slope * width``, fitted on measured members); None for no ratio."""
    return None if r is None else int(round((1 - min(r, 1.0) - line["intercept"]) / line["slope"]))


def targets(records: list[dict], domains: list[str], teacher: str, generalist: str | None, gemma: str | None,
            laws: dict | None = None) -> list[dict]:
    """Each routed / mixture ensemble against the targets (``teacher`` is the bench's reference, so a record's
    ``j_per_token_ratio_95`` is the interval of its energy ratio to the teacher)."""
    by = {r["name"]: r for r in records}
    out = []
    for r in records:
        if r["kind"] != "ensemble" or r.get("strategy") not in ("route", "mixture") or "unpruned" in r["name"]:
            continue
        row = {"ensemble": r["name"]}
        t = by[teacher]
        row["beats_teacher"] = {d: r["domains"][d]["bpb"] - t["domains"][d]["bpb"] for d in domains}
        row["j_per_token_vs_teacher"] = (r["j_per_token"] / t["j_per_token"]) if r["j_per_token"] and t["j_per_token"] else None
        row["j_per_token_vs_teacher_95"] = r.get("j_per_token_ratio_95")
        row["mc_vs_teacher"] = {d: r["domains"][d]["mc_acc"] - t["domains"][d]["mc_acc"] for d in domains}
        # items won / lost against the teacher and McNemar's exact p (none where the bench scored no MC items)
        row["mc_paired_vs_teacher"] = {d: paired_mc_test(r["domains"][d]["mc_item_correct"], t["domains"][d]["mc_item_correct"])
                                       for d in domains if r["domains"][d].get("mc_item_correct")
                                       and t["domains"][d].get("mc_item_correct")}
        if generalist in by:
            row["beats_generalist"] = {d: r["domains"][d]["bpb"] - by[generalist]["domains"][d]["bpb"] for d in domains}
            row["to_match_generalist"] = closing_widths(by[generalist], t, domains, laws or {})
        if gemma in by:
            g = by[gemma]
            row["beats_gemma"] = {d: r["domains"][d]["bpb"] - g["domains"][d]["bpb"] for d in domains}
            row["j_per_token_vs_gemma"] = (r["j_per_token"] / g["j_per_token"]) if r["j_per_token"] and g["j_per_token"] else None
        out.append(row)
    return out


def table(records: list[dict], domains: list[str], build_s: dict[str, float]) -> str:
    rows = [("configuration", *[f"{d} bpb" for d in domains], "mixed bpb", *[f"{d} MC" for d in domains],
             "prefill tok/s", "decode tok/s", "J/token", "MB", "peak RSS MB", "build min")]
    f = lambda x, s=".3f": "-" if x is None else format(x, s)  # noqa: E731
    for r in records:
        group = r["name"].split("/")[0].split("[")[0]
        rows.append((r["name"], *[f(r["domains"][d]["bpb"]) for d in domains], f(r["bpb_mixed"]),
                     *[f(r["domains"][d]["mc_acc"], ".2f") for d in domains], f(r["prefill_tok_s"], ".0f"),
                     f(r["decode_tok_s"], ".1f"), f"{f(r['j_per_token'], '.3f')} ({r['energy_source']})",
                     f(r["size_mb"], ".0f"), f(r["peak_rss_mb"], ".0f"),
                     f(build_s[group] / 60, ".1f") if group in build_s else "-"))
    return markdown_table(rows)


def summarise(records: list[dict], builds: dict, teacher: str, domains: list[str], args) -> dict:
    """The table and the targets of a finished bench (printed too)."""
    # build time = the seconds every task of the build took when it ran (also for tasks this run reused)
    build_s = {name: sum(t["seconds"] or 0 for t in b["tasks"]) for name, b in builds.items()}
    laws = json.loads(Path(args.laws).read_text(encoding="utf-8")).get("laws") if Path(args.laws).is_file() else None
    names = {r["name"] for r in records}
    checks = targets(records, domains, teacher, "generalist", "gemma3-270m" if "gemma3-270m" in names else None, laws)
    text = table(records, domains, build_s)
    print(text)
    print(json.dumps(checks, indent=2))
    return {"targets": checks, "table": text, "laws": args.laws if laws else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "examples/recipes/smollm2-edge.yaml"))
    ap.add_argument("--profile", default=None)
    ap.add_argument("--work-dir", default=None, help="the build cache (default: the user cache)")
    ap.add_argument("--quick", action="store_true", help="bench's quick profile (a smoke run)")
    ap.add_argument("--no-gemma", action="store_true")
    ap.add_argument("--no-generalist", action="store_true", help="skip the compute-matched generalist (its build is the longest)")
    ap.add_argument("--union", default=None, help="the generalist's training corpus (a JSONL file) to use as it is, "
                    "instead of writing the union of the domains' train splits")
    ap.add_argument("--max-bytes", type=int, default=6000, help="held-out bytes scored per domain")
    ap.add_argument("--mc-items", type=int, default=40, help="multiple-choice items per domain")
    ap.add_argument("--rounds", type=int, default=48, help="timed speed/energy rounds (each sends one request to every "
                    "configuration; the prompts cycle over the domains, so 48 rounds ask each domain 16 times; the "
                    "quality scoring, not the rounds, takes most of the bench's time)")
    ap.add_argument("--laws", default=str(ROOT / "results/width_sweep.json"), help="width_sweep.py's JSON: its "
                    "compression laws say what width would match the generalist where the ensemble does not")
    ap.add_argument("--out", default=str(ROOT / "results/headline"), help="bench report directory")
    ap.add_argument("--json", default=str(ROOT / "results/headline.json"))
    ap.add_argument("--targets-only", action="store_true", help="build and bench nothing: check the targets of the "
                    "run in --json again (with the current --laws) and rewrite its table and targets")
    args = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    if args.targets_only:
        if not Path(args.json).is_file():
            sys.exit(f"headline: --targets-only reads a finished run, and {args.json} does not exist")
        done = json.loads(Path(args.json).read_text(encoding="utf-8"))
        done.pop("environment", None)
        write_result(args.json, {**done, **summarise(done["records"], done["builds"], done["bench"]["reference"],
                                                     [d["name"] for d in done["recipe"]["domains"]], args)})
        return

    tmp = Path(tempfile.mkdtemp(prefix="headline-"))
    recipe, builds, rows = study_builds(args.recipe, args.profile, args.work_dir, tmp, log,
                                        generalist=not args.no_generalist, union=args.union)
    base, domains = recipe.to_dict(), [d.name for d in recipe.domains]
    quants = sorted({s["quant"] for s in builds["specialists"]["specialists"].values()})
    baselines = [(f"teacher-{q}", str(teacher_export(q, log))) for q in quants]
    from edge_downscale.models import pull

    baselines.append(("teacher-q4_1-shipped", str(pull("smollm2-135m"))))
    if not args.no_gemma:
        baselines.append(("gemma3-270m", str(pull("gemma3-270m"))))
    # on 2 cores the quality pass dominates: 11 configurations took 37 min (vote and mixture run three members each)
    config = BenchConfig.quick() if args.quick else BenchConfig(max_bytes=args.max_bytes, mc_items=args.mc_items,
                                                                rounds=args.rounds, n_prompts=3, max_tokens=32)
    config = dataclasses.replace(config, overwrite=True)  # the study owns its report directory
    report = run_bench([(label, str(p)) for label, p in rows], config,
                       baselines=baselines, out=args.out, progress=True)
    records = [{k: v for k, v in r.items() if k not in ("rounds", "per_round")} for r in report["records"]]
    write_result(args.json, {"recipe": base, "profile": args.profile, "builds": builds, "bench": report["bench"],
                             "records": records, **summarise(records, builds, baselines[0][0], domains, args),
                             "seconds": round(time.perf_counter() - t_start, 1)})
    for name in ("quality_vs_energy.png", "bpb_by_domain.png"):  # beside --json: results/headline_<plot> by default
        if (Path(args.out) / name).is_file():
            with atomic_path(Path(args.json).with_name(f"{Path(args.json).stem}_{name}")) as dest:
                shutil.copyfile(Path(args.out) / name, dest)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except EdgeDownscaleError as e:  # a bad recipe, a missing model: one line, no traceback
        sys.exit(f"headline: {e}")
