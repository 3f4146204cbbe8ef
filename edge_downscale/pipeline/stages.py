"""What each task kind runs: one function per kind, each calling the stage's own public entry point.

A runner gets the task (its params and finished deps) and a target directory: atomic stages create
it (their entry points refuse an existing directory), training stages resume in it. Runners return a
small JSON record (sizes, gate, figures) kept in the task's ``stage.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..artifacts import MANIFEST
from ..errors import ConfigError, ExportError
from .plan import Task, model_path
from .recipe import Recipe

SPLIT_FOR_EVAL = "test"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run_corpus(task: Task, target: Path, recipe: Recipe, progress: bool) -> dict[str, Any]:
    from ..data import build_corpus

    manifest = build_corpus(task.deps["source"].params["corpus"], target, recipe.data.corpus, progress=progress)
    return {"documents": manifest.get("documents"), "bytes": _dir_bytes(target)}


def run_dataprune(task: Task, target: Path, recipe: Recipe, progress: bool) -> dict[str, Any]:
    from ..data.prune import prune_corpus

    reference = model_path(task.deps["reference"]) if "reference" in task.deps else None
    report = prune_corpus(task.deps["corpus"].output, target, recipe.data.prune, reference=reference, progress=progress)
    return {"before": report["before"], "after": report["after"], "dropped": report["dropped"]}


def run_adapt(task: Task, target: Path, recipe: Recipe, progress: bool) -> dict[str, Any]:
    from ..compress.adapt import adapt

    replay = task.params["replay"]["corpus"] if task.params["replay"] else None
    summary = adapt(model_path(task.deps["model"]), task.deps["data"].output, target,
                    config=recipe.section("adapt", task.domain).train,
                    replay=replay, resume=True, progress=progress)
    return _train_record(summary)


def run_prune(task: Task, target: Path, recipe: Recipe, progress: bool) -> dict[str, Any]:
    from ..compress.prune import PruneConfig, prune_to_dirs

    p = task.params
    calib = task.deps["calib"].output if "calib" in task.deps else "docs"  # only activation and refit read it
    summary = prune_to_dirs(model_path(task.deps["model"]), PruneConfig(
        out_dir=str(target), ratios=(p["ratio"],), method=p["method"], prunenet=p["prunenet"], ffn_policy=p.get("ffn_policy"),
        calib_domain=str(calib), calib_sequences=p["calib_sequences"], refit=p["refit"],
        refit_mode=p.get("refit_mode", "layer"), multiple=p["multiple"],
        seed=p["seed"]), progress=progress)
    out = next(iter(summary["outputs"].values()))
    return {"kept_width": out["kept_width"], "params_after": out["params_after"],
            "param_reduction": out["param_reduction"]}


def run_recover(task: Task, target: Path, recipe: Recipe, progress: bool) -> dict[str, Any]:
    r = recipe.section("recover", task.domain)
    student, data = model_path(task.deps["model"]), task.deps["data"].output
    if task.params["mode"] == "distill":
        from ..compress.distill import distill

        summary = distill(model_path(task.deps["teacher"]), student, data, target, config=r.train, kd=r.distill,
                          resume=True, progress=progress)
    else:
        from ..compress.adapt import adapt

        summary = adapt(student, data, target, config=r.train, resume=True, progress=progress)
    return _train_record(summary)


def _train_record(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) or v is None}


def run_export(task: Task, target: Path, recipe: Recipe, progress: bool) -> dict[str, Any]:
    from ..export import ExportConfig, export_model

    p = task.params
    # Every artifact is kept with its gate result; the bundle takes one that passed (see member_artifact).
    manifests = export_model(model_path(task.deps["model"]), ExportConfig(
        out_dir=str(target), format=p["format"], quants=tuple(p["quants"]), domain=str(task.deps["data"].output),
        max_bytes=p["max_bytes"], allow_degraded=True, **({"onnx_graph": p["onnx_graph"]} if "onnx_graph" in p else {})),
        log=_quiet)
    gates = {m["quantization"]: m.get("parity") or {} for m in manifests}
    if not p["allow_degraded"] and not any(g.get("passed") for g in gates.values()):
        raise ExportError("no quantisation passed its parity gate: " + "; ".join(
            f"{q} bpb {g.get('bpb_rel_delta', 0):+.2%}, KL {g.get('mean_kl', 0):.4f}" for q, g in gates.items()) +
            "; add a higher-precision quant (f16) to export.quants or set export.allow_degraded: true")
    return {"artifacts": {m["quantization"]: {"bytes": m["total_bytes"], "parity": m.get("parity")} for m in manifests}}


def member_artifact(export_dir: Path, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(quant, gate) of the artifact a specialist contributes: ``member_quant``, else the first of ``quants``
    that passed its gate (the first of all when ``allow_degraded``)."""
    gates = {q: json.loads((export_dir / f"{p['format']}-{q}" / MANIFEST).read_text()).get("parity") or {}
             for q in p["quants"]}
    if p["quant"] is not None:
        if not gates[p["quant"]].get("passed") and not p["allow_degraded"]:
            g = gates[p["quant"]]
            raise ExportError(f"{p['quant']} (export.member_quant) failed its parity gate (bpb "
                              f"{g.get('bpb_rel_delta', 0):+.2%}, KL {g.get('mean_kl', 0):.4f}); choose another "
                              "member_quant, null (the first that passes), or set export.allow_degraded: true")
        return p["quant"], gates[p["quant"]]
    passed = [q for q in p["quants"] if gates[q].get("passed")]
    quant = passed[0] if passed else p["quants"][0]
    return quant, gates[quant]


def _quiet(msg: str) -> None:  # the build's own display says what export is doing
    pass


def eval_data(corpus_dir: str, config) -> tuple[list[str], list]:
    """A domain's held-out texts (capped at ``config.max_bytes``) and multiple-choice items, from its test split."""
    from ..data import heldout_texts
    from ..eval import build_items

    texts, all_texts = heldout_texts(corpus_dir, config)
    items = build_items(all_texts, n_items=config.mc_items, context_chars=config.mc_context_chars,
                        continuation_chars=config.mc_continuation_chars, n_choices=config.mc_choices,
                        seed=config.seed) if config.mc_items else []
    return texts, items


def run_bundle(task: Task, target: Path, recipe: Recipe, progress: bool) -> dict[str, Any]:
    """Members (one export per domain) + router/cascade + held-out eval data + the recipe, in one bundle."""
    import tempfile

    import yaml

    from ..bundle import BundleConfig, build_bundle
    from ..eval import EVAL_DIR, bits_per_byte, write_eval_data
    from ..runtime import open_artifact

    p = task.params
    ens = recipe.ensemble
    members, data, gates = [], {}, {}
    quants = {}
    for d in p["domains"]:
        export_dir = Path(task.deps[f"export:{d}"].output)
        quants[d], gates[d] = member_artifact(export_dir, p)
        members.append({"name": d, "path": str(export_dir / f"{p['format']}-{quants[d]}"), "domain": d})
        data[d] = eval_data(task.deps[f"data:{d}"].output, recipe.eval)
    corpora = {d: task.deps[f"data:{d}"].output for d in p["domains"]}
    # one specialist answers everything itself: a vote of one needs no router
    strategy = ens.strategy if len(members) > 1 else "vote"
    with tempfile.TemporaryDirectory(prefix="bundle-files.", dir=target.parent) as tmp:
        files = {f"{EVAL_DIR}/{d}.jsonl": str(path) for d, path in write_eval_data(Path(tmp) / EVAL_DIR, data).items()}
        resolved = recipe.to_dict()  # the resolved recipe, loadable as it is (`recipe check`, a rebuild)
        header = f"# resolved from {resolved.pop('source')}\n" if resolved.get("source") else ""
        (Path(tmp) / "recipe.yaml").write_text(header + yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
        files["recipe.yaml"] = str(Path(tmp) / "recipe.yaml")
        build_bundle(BundleConfig(
            out=str(target), members=members, strategy=strategy,
            strategy_options=dict(ens.strategy_options) if strategy == ens.strategy else {},
            router_corpora=corpora if len(members) > 1 else {},
            router_kind=ens.router_kind, router_options=dict(ens.router_options),
            calibrate_corpora=tuple(corpora.values()) if strategy == "cascade" else (),
            target_acceptance=ens.target_acceptance, memory_budget_mb=ens.memory_budget_mb, files=files), log=_quiet)
    specialists = {}
    for d in p["domains"]:
        member_dir = target / "members" / d
        with open_artifact(member_dir) as backend:
            bpb = bits_per_byte(backend, data[d][0], max_length=recipe.eval.max_length, stride=recipe.eval.stride)
        specialists[d] = {"quant": quants[d], "bytes": _dir_bytes(member_dir), "parity": gates[d], "heldout_bpb": bpb.bits_per_byte,
                          "heldout_bytes": bpb.n_bytes}
    return {"specialists": specialists}


RUNNERS: dict[str, Callable[[Task, Path, Recipe, bool], dict[str, Any]]] = {
    "corpus": run_corpus, "dataprune": run_dataprune, "adapt": run_adapt, "prune": run_prune,
    "recover": run_recover, "export": run_export, "bundle": run_bundle,
}


def resolve_reference(task: Task) -> str:
    """The output of a task that does no work: the teacher's reference, or a corpus source."""
    if task.kind == "teacher":
        from ..models import resolve

        resolve(task.params["ref"])  # pulls a registered model once (sha256-checked); the name stays the reference
        return task.params["ref"]
    if task.kind == "source":
        return task.params["corpus"]
    raise ConfigError(f"task {task.name} has to run")

