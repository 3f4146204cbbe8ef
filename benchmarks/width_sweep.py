"""How far each specialist can be pruned and still beat the dense teacher, after recovery.

Each ``DOMAIN:RATIO[:MULTIPLE]`` entry builds the recipe with that domain's ``prune`` override replaced
(``edge-downscale build``, cached by content, so the other domains and every finished task are reused),
then sets the member's held-out bits-per-byte (the build's own ``heldout_bpb``: the bundle's test text,
the member's bundled quantisation) against the dense teacher's, exported at the same quantisation and
scored on the same text. The recipe's own widths are the first row of every domain. Prints a table and
writes JSON.

    .venv/bin/python benchmarks/width_sweep.py docs:0.25:128 legal:0.6667
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headline import teacher_export  # noqa: E402

from edge_downscale._io import write_result  # noqa: E402
from edge_downscale.eval import bits_per_byte, markdown_table, read_eval_data  # noqa: E402
from edge_downscale.pipeline import BuildConfig, build, load_recipe  # noqa: E402
from edge_downscale.pipeline.cache import STAGE_FILE  # noqa: E402
from edge_downscale.runtime import open_artifact  # noqa: E402
from edge_downscale.runtime.roofline import weight_bytes_per_token  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_entry(text: str, domains: list[str]) -> tuple[str, dict]:
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3) or parts[0] not in domains:
            raise ValueError
        over = {"ratio": float(parts[1]), **({"multiple": int(parts[2])} if len(parts) == 3 else {})}
        if not 0 < over["ratio"] < 1:
            raise ValueError
    except ValueError:
        sys.exit(f"width_sweep: {text!r} is not DOMAIN:RATIO[:MULTIPLE] with a domain of the recipe "
                 f"({', '.join(domains)}) and a ratio in (0, 1)")
    return parts[0], over


def build_variant(base: dict, domain: str | None, over: dict | None, tmp: Path, work_dir: str | None, log) -> dict:
    doc = copy.deepcopy({k: v for k, v in base.items() if k != "source"})
    if domain is not None:
        for d in doc["domains"]:
            if d["name"] == domain:
                d["prune"] = over
    name = "recipe" if domain is None else f"{domain}-{over['ratio']:g}"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return build(BuildConfig(recipe=str(path), out=str(tmp / name), work_dir=work_dir, overwrite=True), echo=log)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("entries", nargs="*", help="DOMAIN:RATIO[:MULTIPLE]: a prune override to build and score")
    ap.add_argument("--recipe", default=str(ROOT / "examples/recipes/smollm2-edge.yaml"))
    ap.add_argument("--work-dir", default=None, help="the build cache (default: the user cache)")
    ap.add_argument("--json", default=str(ROOT / "results/width_sweep.json"))
    args = ap.parse_args()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    recipe = load_recipe(args.recipe)
    base = recipe.to_dict()
    entries = [parse_entry(e, recipe.domain_names) for e in args.entries]
    rows, teacher = [], {}
    with tempfile.TemporaryDirectory(prefix="width-sweep-") as tmp:
        for domain, over in [(None, None), *entries]:
            summary = build_variant(base, domain, over, Path(tmp), args.work_dir, log)
            bundle = Path(summary["bundle"])
            evals = read_eval_data(bundle / "eval")
            tasks = {(t["kind"], t["domain"]): t for t in summary["tasks"]}
            for d in recipe.domain_names if domain is None else [domain]:
                spec = summary["specialists"][d]
                teacher_dir = teacher_export(spec["quant"], log)
                if (spec["quant"], d) not in teacher:  # the dense teacher at the member's quant, same text
                    with open_artifact(teacher_dir) as backend:
                        teacher[spec["quant"], d] = bits_per_byte(backend, evals[d][0], max_length=recipe.eval.max_length,
                                                                   stride=recipe.eval.stride).bits_per_byte
                prune = tasks[("prune", d)] if ("prune", d) in tasks else tasks[("prune", None)]
                width = _kept_width(summary["work_dir"], prune["key"])
                rows.append({"domain": d, "ratio": (over or recipe.section("prune", d).to_dict())["ratio"],
                             "adapt_tokens": recipe.section("adapt", d).train.token_budget if "adapt" in recipe.stages else 0,
                             "ffn_width": width, "quant": spec["quant"], "member_mb": spec["bytes"] / 1e6,
                             "weight_bytes_vs_teacher": weight_bytes_per_token(bundle / "members" / d) /
                             weight_bytes_per_token(teacher_dir),
                             "member_bpb": spec["heldout_bpb"], "teacher_bpb": teacher[spec["quant"], d],
                             "heldout_bytes": spec["heldout_bytes"], "recipe": domain is None})
    for r in rows:
        r["vs_teacher"] = r["member_bpb"] - r["teacher_bpb"]
    rows.sort(key=lambda r: (recipe.domain_names.index(r["domain"]), -r["ffn_width"]))
    table = markdown_table([["domain", "adapt tokens", "FFN width", "ratio", "quant", "MB", "weight bytes/token vs teacher",
                             "member bpb", "teacher bpb", "vs teacher", "the recipe's"],
                            *([r["domain"], str(r["adapt_tokens"]), str(r["ffn_width"]), f"{r['ratio']:g}", r["quant"],
                               f"{r['member_mb']:.0f}", f"{r['weight_bytes_vs_teacher']:.3f}",
                               f"{r['member_bpb']:.4f}", f"{r['teacher_bpb']:.4f}", f"{r['vs_teacher']:+.4f}",
                               "yes" if r["recipe"] else ""] for r in rows)])
    print(table)
    write_result(args.json, {"recipe": base, "rows": rows, "table": table, "seconds": round(time.perf_counter() - t0, 1)})


def _kept_width(work_dir: str, key: str) -> int:
    return int(json.loads((Path(work_dir) / "prune" / key / STAGE_FILE).read_text())["result"]["kept_width"])


if __name__ == "__main__":
    main()
