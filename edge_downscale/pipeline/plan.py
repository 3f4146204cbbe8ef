"""A recipe as a graph of tasks: corpus -> data pruning -> model stages (in the recipe's order) -> export -> bundle.

Each :class:`Task` names its kind, its domain (None when shared by all), the settings that change its
output (``params``) and the tasks it reads (``deps``); its key hashes all three, so two tasks with the
same key are the same work and run once (a pruned model shared by every domain, say).

Model stages follow ``recipe.stages``: ``adapt`` adapts the dense teacher to each domain (and, before
``prune``, makes the adapted teacher the model that is pruned); ``prune`` prunes the current model
(once for all domains while it is still the shared teacher); ``recover`` trains each pruned model on
its domain, by fine-tuning or by distillation from the adapted (or dense) teacher.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..data import DEMO_DOMAINS
from ..data.prune.steps import MODEL_STEPS
from ..errors import ConfigError
from .cache import source_fingerprint, task_key
from .recipe import Recipe

TRAINING_KINDS = ("adapt", "recover")  # resumable from the engine's checkpoints


@dataclasses.dataclass
class Task:
    kind: str  # source | teacher | corpus | dataprune | adapt | prune | recover | export | bundle
    name: str  # what the progress display calls it: "recover docs"
    domain: str | None
    params: dict[str, Any]
    deps: dict[str, "Task"] = dataclasses.field(default_factory=dict)
    key: str = ""
    output: str | None = None  # filled in when the task is done (a path, or a model reference)

    def __post_init__(self) -> None:
        self.key = task_key(self.kind, self.params, [f"{r}:{d.key}" for r, d in sorted(self.deps.items())])

    @property
    def runs(self) -> bool:
        """Whether the task does work (sources and the teacher are only resolved)."""
        return self.kind not in ("source", "teacher")


def _teacher_identity(ref: str) -> dict[str, Any]:
    from ..models.registry import REGISTRY

    if ref in REGISTRY:
        spec = REGISTRY[ref]
        return {"registered": ref, "sha256": spec.sha256}
    return source_fingerprint(ref)


def _source_identity(corpus: str) -> dict[str, Any]:
    if corpus in DEMO_DOMAINS:
        return {"demo": corpus}
    return source_fingerprint(corpus)


def _train_params(train) -> dict[str, Any]:
    return train.fingerprint_dict()


def make_plan(recipe: Recipe) -> list[Task]:
    """The tasks of ``recipe`` in an order that runs every task after the tasks it reads."""
    tasks: list[Task] = []

    def add(task: Task) -> Task:
        for t in tasks:
            if t.key == task.key:
                return t
        tasks.append(task)
        return task

    domains = [d.name for d in recipe.domains]
    teacher = add(Task("teacher", f"teacher {recipe.teacher}", None,
                       {"ref": recipe.teacher, "identity": _teacher_identity(recipe.teacher)}))
    corpora: dict[str, Task] = {}
    for d in recipe.domains:
        src = add(Task("source", f"source {d.name}", d.name, {"corpus": d.corpus, "identity": _source_identity(d.corpus)}))
        corpus = add(Task("corpus", f"corpus {d.name}", d.name, {"config": recipe.data.corpus.to_dict()}, {"source": src}))
        if recipe.data.prune is not None:
            deps = {"corpus": corpus}
            if recipe.data.prune.reference is None and MODEL_STEPS.intersection(recipe.data.prune.steps):
                deps["reference"] = teacher  # the model steps score with the teacher unless the recipe names one
            corpus = add(Task("dataprune", f"data prune {d.name}", d.name, {"recipe": recipe.data.prune.to_dict()}, deps))
        corpora[d.name] = corpus

    stages = list(recipe.stages)
    if "adapt" in stages and "prune" in stages and stages.index("adapt") > stages.index("prune"):
        if "recover" not in stages or recipe.recover.mode != "distill" or recipe.recover.teacher != "adapted":
            raise ConfigError("stages: adapt after prune only trains the distillation teacher; it needs recover with "
                              "mode: distill and teacher: adapted after it (or move adapt before prune)")
    current: dict[str, Task] = {d: teacher for d in domains}  # the model each domain's specialist grows from
    kd_teacher: dict[str, Task] = {d: teacher for d in domains}
    pruned = False
    for stage in stages:
        if stage == "adapt":
            for d in domains:
                adapted = add(Task("adapt", f"adapt teacher {d}", d,
                                   {"train": _train_params(recipe.section("adapt", d).train), "replay": _replay(recipe.section("adapt", d))},
                                   {"model": teacher, "data": corpora[d]}))
                if recipe.section("recover", d).teacher == "adapted":
                    kd_teacher[d] = adapted
                if not pruned:
                    current[d] = adapted
        elif stage == "prune":
            for d in domains:
                p = recipe.section("prune", d)
                params = _prune_params(p)
                shared = current[d] is teacher
                deps = {"model": current[d]}
                if p.method == "activation" or p.refit:
                    # calibration text: the named domain; by default each domain's own train split (the first
                    # domain's when one pruned model serves every domain)
                    calib = p.calib_domain or (domains[0] if shared else d)
                    deps["calib"] = corpora[calib]
                current[d] = add(Task("prune", f"prune {'teacher' if shared else d} r={p.ratio:g}",
                                      None if shared else d, params, deps))
            pruned = True
        elif stage == "recover":
            for d in domains:
                r = recipe.section("recover", d)
                deps = {"model": current[d], "data": corpora[d]}
                params: dict[str, Any] = {"mode": r.mode, "train": _train_params(r.train)}
                if r.mode == "distill":
                    deps["teacher"] = kd_teacher[d]
                    params["distill"] = r.distill.to_dict()
                current[d] = add(Task("recover", f"recover {d} ({r.mode})", d, params, deps))
    e = recipe.export
    exports = {}
    for d in domains:
        exports[d] = add(Task("export", f"export {d} {e.format} {','.join(e.quants)}", d,
                              {"format": e.format, "quants": list(e.quants), "max_bytes": e.max_bytes,
                               "allow_degraded": e.allow_degraded,
                               **({"onnx_graph": e.onnx_graph} if e.format == "onnx" else {})},
                              {"model": current[d], "data": corpora[d]}))
    ens = recipe.ensemble
    deps = {f"export:{d}": exports[d] for d in domains}
    deps.update({f"data:{d}": corpora[d] for d in domains})
    add(Task("bundle", "bundle", None,
             {"domains": domains, "quant": e.member_quant, "quants": list(e.quants), "format": e.format,
              "allow_degraded": e.allow_degraded, "ensemble": ens.to_dict(),
              "eval": recipe.eval.to_dict()}, deps))
    return tasks


def _prune_params(p) -> dict[str, Any]:
    params = {"method": p.method, "ratio": p.ratio, "multiple": p.multiple, "seed": p.seed,
              "prunenet": {**p.prunenet.to_dict(), "multiple": p.multiple} if p.prunenet is not None else None,
              "refit": p.refit, "calib_sequences": p.calib_sequences}
    if p.refit and p.refit_mode != "layer":  # the first refit's mode: its tasks keep their cache keys
        params["refit_mode"] = p.refit_mode
    if p.ffn_policy is not None:  # only when set: recipes without it keep their cache keys
        params["ffn_policy"] = {**p.ffn_policy.to_dict(), "multiple": p.multiple}
    return params


def _replay(adapt) -> dict[str, Any] | None:
    replay = adapt.replay
    if replay is None:
        return None
    return {"corpus": replay, "identity": _source_identity(replay)}


def model_path(task: Task) -> str:
    """Where the model a model-producing task made lives (its output directory or the reference)."""
    if task.kind == "prune":
        return str(Path(task.output) / f"r{task.params['ratio']:.2f}")
    return str(task.output)
