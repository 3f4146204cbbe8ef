"""`build`: a recipe's tasks run in order, cached by content, resumable, with one progress display.

:func:`build` plans the recipe (:mod:`.plan`), reuses every finished task of the work directory,
resumes an interrupted training task from its checkpoint, runs the rest, and copies the bundle to
``out`` (by a rename at the end: nothing half-written looks finished). A failing task stops the
build with its error; finished tasks stay in the work directory, so rerunning the command resumes.
Under ``accelerate launch`` every process trains together and only the main process runs the
other tasks.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from .._env import environment
from .._io import atomic_path, cache_dir, sha256_file, write_json_atomic
from ..config import StageConfig, check
from ..errors import ConfigError, EdgeDownscaleError
from .cache import WorkDir
from .estimate import Throughput, disk_bytes, predicted_quality, teacher_params
from .plan import TRAINING_KINDS, Task, make_plan
from .recipe import Recipe, load_recipe
from .stages import RUNNERS, resolve_reference

SUMMARY_FILE = "build_summary.json"
LOG_FILE = "build.log"
LINK_MIN_BYTES = 1 << 20  # files this large are hard-linked from the work directory, smaller ones copied


class BuildError(EdgeDownscaleError):
    """A build task failed; finished tasks are kept and a rerun resumes."""


@dataclasses.dataclass
class BuildConfig(StageConfig):
    """One build: the recipe (and profile), where the bundle goes, where the work is cached.

    ``work_dir``: the content-addressed cache of every task's output (default: the user cache, so
    two recipes that share a stage share its output). ``device`` overrides the recipe's.
    """

    stage: ClassVar[str] = "build"
    recipe: str = ""
    out: str = ""
    profile: str | None = None
    work_dir: str | None = None
    device: str | None = None
    dry_run: bool = False
    overwrite: bool = False

    def validate(self) -> None:
        check(isinstance(self.recipe, str) and self.recipe != "", "recipe must be a path to a YAML file")
        check(self.dry_run or (isinstance(self.out, str) and self.out != ""), "out must be the bundle directory to write")
        check(self.device in (None, "auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def work_root(self) -> Path:
        return Path(self.work_dir).expanduser() if self.work_dir else cache_dir("build")


def _with_device(recipe: Recipe, device: str | None) -> Recipe:
    if device is None:
        return recipe
    adapt = dataclasses.replace(recipe.adapt, train=dataclasses.replace(recipe.adapt.train, device=device))
    recover = dataclasses.replace(recipe.recover, train=dataclasses.replace(recipe.recover.train, device=device))
    return dataclasses.replace(recipe, device=device, adapt=adapt, recover=recover)


class _Distributed:
    """Main-process-only work under ``accelerate launch`` (a no-op in one process)."""

    def __init__(self):
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState()

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class _Log:
    """Build messages to the console and to the build log file."""

    def __init__(self, path: Path, echo: Callable[[str], None]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "a", encoding="utf-8")
        self.echo = echo

    def __call__(self, msg: str) -> None:
        self.echo(msg)
        self.file.write(f"{_dt.datetime.now().isoformat(timespec='seconds')} {msg}\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def plan_status(tasks: list[Task], work: WorkDir) -> dict[str, str]:
    """task key -> ``reuse`` (finished), ``resume`` (a training task with a checkpoint) or ``run``."""
    status = {}
    for t in tasks:
        if not t.runs:
            continue
        if work.done(t.kind, t.key):
            status[t.key] = "reuse"
        elif t.kind in TRAINING_KINDS and work.has_partial(t.kind, t.key):
            status[t.key] = "resume"
        else:
            status[t.key] = "run"
    return status


def dry_run(recipe: Recipe, tasks: list[Task], work: WorkDir) -> dict[str, Any]:
    """The plan with estimated time and disk per task, and the law's predicted quality."""
    status = plan_status(tasks, work)
    rates = Throughput(work.root)
    params = teacher_params(recipe)
    rows = []
    for t in tasks:
        if not t.runs:
            continue
        seconds, source = rates.seconds(t)
        todo = status[t.key] != "reuse"
        rows.append({"task": t.name, "kind": t.kind, "key": t.key, "status": status[t.key],
                     "seconds": round(seconds if todo else 0.0, 1), "estimate_from": source,
                     "disk_bytes": disk_bytes(t, params) if todo else 0})
    return {"recipe": recipe.name, "work_dir": str(work.root), "tasks": rows,
            "seconds": round(sum(r["seconds"] for r in rows), 1), "disk_bytes": sum(r["disk_bytes"] for r in rows),
            "predicted": predicted_quality(recipe)}


def build(config: BuildConfig, *, echo: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run (or, with ``dry_run``, plan) the build ``config`` describes; returns the summary."""
    recipe = _with_device(load_recipe(config.recipe, config.profile), config.device)
    out = Path(config.out).expanduser() if config.out else None
    if out is not None and out.exists() and not config.dry_run and not config.overwrite:
        raise ConfigError(f"{out} already exists: choose a new --out or pass --overwrite")
    tasks = make_plan(recipe)
    work = WorkDir(config.work_root)
    if config.dry_run:
        return dry_run(recipe, tasks, work)
    dist = _Distributed()
    log = _Log(work.root / "logs" / f"{recipe.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log",
               echo if dist.is_main else (lambda m: None))
    try:
        return _run(recipe, config, tasks, work, out, log, dist, progress)
    finally:
        log.close()


def _run(recipe: Recipe, config: BuildConfig, tasks: list[Task], work: WorkDir, out: Path, log: _Log,
         dist: _Distributed, progress: bool) -> dict[str, Any]:
    status = plan_status(tasks, work)
    rates = Throughput(work.root)
    runnable = [t for t in tasks if t.runs]
    estimates = {t.key: rates.seconds(t)[0] if status[t.key] != "reuse" else 0.0 for t in runnable}
    log(f"build {recipe.name}{f' (profile {config.profile})' if config.profile else ''}: {len(runnable)} tasks "
        f"({sum(s == 'reuse' for s in status.values())} reused), estimated {_fmt_s(sum(estimates.values()))}; "
        f"work dir {work.root}; log {log.path}")
    t_build = time.perf_counter()
    records: list[dict[str, Any]] = []
    for t in tasks:
        if not t.runs:
            t.output = resolve_reference(t) if dist.is_main or t.kind == "source" else t.params.get("ref")
    for k, t in enumerate(runnable, 1):
        head = f"[{k}/{len(runnable)}] {t.name}"
        record = work.done(t.kind, t.key)
        if record is not None:
            t.output = str(work.path(t.kind, t.key))
            log(f"{head}: reused ({t.key})")
            records.append({**_row(t, record), "reused": True})
            continue
        log(f"{head}: {'resuming' if status[t.key] == 'resume' else 'running'} ({t.key}, "
            f"estimated {_fmt_s(estimates[t.key])})")
        t0 = time.perf_counter()
        result = _run_task(t, recipe, work, log, dist, progress, config)
        seconds = time.perf_counter() - t0
        record = {"kind": t.kind, "name": t.name, "domain": t.domain, "key": t.key, "params": t.params,
                  "inputs": {r: d.key for r, d in t.deps.items()}, "seconds": round(seconds, 2), "result": result,
                  "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if dist.is_main:
            work.finish(t.kind, t.key, _target(t, work), record)
            rates.record(t, seconds)
        dist.wait()
        t.output = str(work.path(t.kind, t.key))
        records.append({**_row(t, record), "reused": False})
        elapsed = time.perf_counter() - t_build
        left = sum(estimates[u.key] for u in runnable[k:])
        log(f"{head}: done in {_fmt_s(seconds)} · elapsed {_fmt_s(elapsed)} · ETA {_fmt_s(left)}")
    bundle_task = runnable[-1]
    summary = {"recipe": recipe.name, "profile": config.profile, "bundle": str(out), "work_dir": str(work.root),
               "seconds": round(time.perf_counter() - t_build, 1), "tasks": records,
               "specialists": work.done("bundle", bundle_task.key)["result"]["specialists"]}
    if dist.is_main:
        summary["environment"] = environment()  # library versions, CPU, lock hashes: what the figures came from
        _write_bundle(Path(bundle_task.output), out, summary, log.path, config.overwrite)
        log(f"bundle written to {out} in {_fmt_s(summary['seconds'])}")
    return summary


def _row(t: Task, record: dict[str, Any]) -> dict[str, Any]:
    return {"task": t.name, "kind": t.kind, "domain": t.domain, "key": t.key, "seconds": record.get("seconds")}


def _target(t: Task, work: WorkDir) -> Path:
    """Where a task writes: the resumable partial directory (training) or a fresh staging directory."""
    if t.kind in TRAINING_KINDS:
        return work.partial(t.kind, t.key)
    return work.root / t.kind / f".{t.key}.staging"


def _run_task(t: Task, recipe: Recipe, work: WorkDir, log: _Log, dist: _Distributed, progress: bool,
              config: BuildConfig) -> dict[str, Any]:
    target = _target(t, work)
    if t.kind not in TRAINING_KINDS:
        if not dist.is_main:  # the main process runs it; the barrier after the commit waits for it
            return {}
        if target.exists():  # left by a crash before the commit
            shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    resume = (f"edge-downscale build {config.recipe}" + (f" --profile {config.profile}" if config.profile else "") +
              (f" --out {config.out}" if config.out else "") + (f" --work-dir {config.work_dir}" if config.work_dir else ""))
    try:
        try:
            return RUNNERS[t.kind](t, target, recipe, progress)
        except BaseException:
            if t.kind not in TRAINING_KINDS:  # a training task keeps its checkpoints; anything else starts afresh
                shutil.rmtree(target, ignore_errors=True)
            raise
    except KeyboardInterrupt:
        raise BuildError(f"interrupted during {t.name}; finished tasks are kept: rerun `{resume}` to resume") from None
    except EdgeDownscaleError as e:
        if getattr(e, "exit_code", 1) == 130:
            raise BuildError(f"interrupted during {t.name} (checkpoint written): rerun `{resume}` to resume") from None
        raise BuildError(f"{t.name} failed: {e}. Finished tasks are kept; fix the cause and rerun `{resume}`") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise BuildError(f"{t.name}: the disk is full ({e.filename or work.root}); nothing half-written is kept "
                             f"as finished: free space and rerun `{resume}`") from None
        raise


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.getsize(src) >= LINK_MIN_BYTES:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _write_bundle(src: Path, out: Path, summary: dict[str, Any], log_path: Path, overwrite: bool) -> None:
    """Copy the cached bundle to ``out`` with the build summary (hashed into ensemble.json) and the log."""
    import json

    from ..runtime.ensemble import ENSEMBLE_FILE

    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists: choose a new --out or pass --overwrite")
    with atomic_path(out) as tmp:
        shutil.copytree(src, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("stage.json"))
        write_json_atomic(tmp / SUMMARY_FILE, summary)
        spec = json.loads((tmp / ENSEMBLE_FILE).read_text())
        spec["files"][SUMMARY_FILE] = sha256_file(tmp / SUMMARY_FILE)
        os.unlink(tmp / ENSEMBLE_FILE)  # it may be a link into the cache: write a new file
        write_json_atomic(tmp / ENSEMBLE_FILE, spec)
        shutil.copyfile(log_path, tmp / LOG_FILE)
