"""`edge-downscale build` end to end on a tiny recipe: a random 2-layer Llama and two small real corpora.

Checks the bundle loads and answers through the runtime, a rerun reuses every task, a changed
export setting reruns only export and bundle, a killed build resumes mid-training, and a failing
stage or a full disk stops the build with one line and keeps what finished.
"""
import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_downscale.cli import cli
from edge_downscale.errors import EdgeDownscaleError
from edge_downscale.models.tiny import build_tiny_llama
from edge_downscale.pipeline import BuildConfig, build, load_recipe
from edge_downscale.pipeline.cache import STAGE_FILE
from edge_downscale.runtime import Ensemble

RECIPE = """\
name: tiny
teacher: {teacher}
domains:
  - {{name: pydoc, corpus: {pydoc}}}
  - {{name: lic, corpus: {lic}}}
data:
  prune: {{steps: [dedup, near-dedup, quality], keep: 0.8}}
stages: [prune, recover]
prune: {{method: magnitude, ratio: 0.3, multiple: 32}}
recover:
  mode: finetune
  train: {{token_budget: {budget}, seq_len: 32, batch_size: 4, lr: 0.003, checkpoint_every: 2, eval_tokens: 200}}
export: {{format: gguf, quants: [{quants}], allow_degraded: true, max_bytes: 2000}}
eval: {{max_bytes: 2000, mc_items: 4}}
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny teacher and two corpora of real text: Python's pydoc topics and the licence files of installed packages."""
    import pydoc_data.topics as topics

    root = tmp_path_factory.mktemp("build-inputs")
    teacher = build_tiny_llama(root / "teacher")
    (root / "pydoc").mkdir()
    for k in sorted(topics.topics):
        (root / "pydoc" / f"{k}.txt").write_text(topics.topics[k])
    (root / "lic").mkdir()
    found = sorted(Path(sys.prefix).rglob("LICENSE*"))[:80] + sorted(Path(sys.base_prefix).glob("lib/python3*/LICENSE.txt"))
    docs = [p.read_text(errors="replace") for p in found if p.is_file()]
    for i, text in enumerate(d for d in docs if len(d) > 500):
        (root / "lic" / f"{i}.txt").write_text(text)
    assert len(list((root / "lic").iterdir())) >= 10
    return {"teacher": teacher, "pydoc": root / "pydoc", "lic": root / "lic"}


def write_recipe(path: Path, inputs, *, budget=2048, quants="q8_0") -> Path:
    path.write_text(RECIPE.format(teacher=inputs["teacher"], pydoc=inputs["pydoc"], lic=inputs["lic"], budget=budget,
                                  quants=quants))
    return path


def ran(summary) -> list[str]:
    return [t["kind"] for t in summary["tasks"] if not t["reused"]]


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    recipe = write_recipe(root / "recipe.yaml", inputs)
    summary = build(BuildConfig(recipe=str(recipe), out=str(root / "bundle"), work_dir=str(root / "work")),
                    echo=lambda m: None, progress=False)
    return root, recipe, summary


def test_the_bundle_loads_and_answers_through_the_runtime(built):
    root, _, summary = built
    assert sorted(ran(summary)) == sorted(["corpus", "dataprune"] * 2 + ["prune", "recover", "recover", "export",
                                                                           "export", "bundle"])
    with Ensemble.load(root / "bundle") as ens:
        assert sorted(ens.members) == ["lic", "pydoc"]
        resp = ens.generate("Licensed under the Apache License", max_tokens=8)
        assert resp.usage.completion_tokens > 0 and resp.members
        scored = ens.score("The for statement is used to iterate over the elements of a sequence.")
        assert scored.bits_per_byte > 0
        # held-out eval data, the recipe and the build summary travel with the bundle, hash-checked
        assert {"eval/pydoc.jsonl", "eval/lic.jsonl", "recipe.yaml", "build_summary.json"} <= set(ens.spec.files)
    from edge_downscale.eval import read_eval_file

    texts, items = read_eval_file(root / "bundle" / "eval" / "pydoc.jsonl")
    assert texts and len(items) == 4
    assert load_recipe(root / "bundle" / "recipe.yaml").domain_names == ["pydoc", "lic"]  # the resolved recipe loads
    saved = json.loads((root / "bundle" / "build_summary.json").read_text())
    assert saved["environment"]["libraries"] and "cpu" in saved["environment"] and "locks" in saved["environment"]
    for name, spec in saved["specialists"].items():
        assert spec["parity"]["passed"] in (True, False) and spec["heldout_bpb"] > 0 and spec["bytes"] > 0
    assert (root / "bundle" / "build.log").read_text().count("done in") == 10


def test_a_rerun_reuses_every_task(built):
    root, recipe, _ = built
    summary = build(BuildConfig(recipe=str(recipe), out=str(root / "again"), work_dir=str(root / "work")),
                    echo=lambda m: None, progress=False)
    assert ran(summary) == []
    assert (root / "again" / "ensemble.json").is_file()


def test_a_domain_override_reruns_only_that_domain_and_reaches_its_stages(built, inputs):
    """``domains[i].prune`` / ``.recover`` change that specialist alone: its own prune (smaller width) and recovery
    (its own token budget) run, the other domain's tasks are reused."""
    root, recipe, _ = built
    text = recipe.read_text().replace(
        f"{{name: lic, corpus: {inputs['lic']}}}",
        f"{{name: lic, corpus: {inputs['lic']}, prune: {{ratio: 0.5}}, recover: {{train: {{token_budget: 1024}}}}}}")
    assert text != recipe.read_text()
    changed = root / "override.yaml"
    changed.write_text(text)
    work = root / "work"
    summary = build(BuildConfig(recipe=str(changed), out=str(root / "override"), work_dir=str(work)),
                    echo=lambda m: None, progress=False)
    assert sorted(ran(summary)) == ["bundle", "export", "prune", "recover"]
    new = {t["kind"]: t for t in summary["tasks"] if not t["reused"]}
    assert new["recover"]["domain"] == new["export"]["domain"] == "lic" and new["prune"]["task"].endswith("r=0.5")

    def record(kind, key):
        return json.loads((work / kind / key / STAGE_FILE).read_text())

    default = next(t["key"] for t in built[2]["tasks"] if t["kind"] == "prune")
    assert record("prune", new["prune"]["key"])["result"]["kept_width"] < record("prune", default)["result"]["kept_width"]
    recovers = {t["domain"]: t["key"] for t in summary["tasks"] if t["kind"] == "recover"}
    budgets = {d: json.loads((work / "recover" / k / "run.json").read_text())["config"]["token_budget"]
               for d, k in recovers.items()}
    assert budgets == {"lic": 1024, "pydoc": 2048}


def test_a_changed_export_setting_reruns_only_export_and_bundle(built, inputs):
    root, _, _ = built
    recipe = write_recipe(root / "recipe-f16.yaml", inputs, quants="q8_0, f16")
    plan = build(BuildConfig(recipe=str(recipe), work_dir=str(root / "work"), dry_run=True), echo=lambda m: None)
    assert sorted(r["kind"] for r in plan["tasks"] if r["status"] == "run") == ["bundle", "export", "export"]
    summary = build(BuildConfig(recipe=str(recipe), out=str(root / "f16"), work_dir=str(root / "work")),
                    echo=lambda m: None, progress=False)
    assert sorted(ran(summary)) == ["bundle", "export", "export"]
    assert (root / "work" / "export" / summary["tasks"][-2]["key"] / "gguf-f16" / "model.json").is_file()


def test_a_killed_build_resumes_mid_training(inputs, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", inputs, budget=4 * 32 * 400)  # 400 steps
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "edge_downscale.cli", "build", str(recipe), "--out", str(tmp_path / "bundle"),
           "--work-dir", str(work), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list(work.glob("recover/*.partial/checkpoints/step-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before a training checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = next(work.glob("recover/*.partial"))
    assert not (tmp_path / "bundle").exists()
    assert not (work / "recover" / partial.name.removesuffix(".partial") / STAGE_FILE).exists()  # nothing looks finished
    plan = build(BuildConfig(recipe=str(recipe), work_dir=str(work), dry_run=True), echo=lambda m: None)
    assert "resume" in {r["status"] for r in plan["tasks"]}, (partial.name, sorted(p.name for p in partial.iterdir()),
                                                              [(r["task"], r["key"], r["status"]) for r in plan["tasks"]])
    summary = build(BuildConfig(recipe=str(recipe), out=str(tmp_path / "bundle"), work_dir=str(work)),
                    echo=lambda m: None, progress=False)
    assert "corpus" not in ran(summary) and "prune" not in ran(summary)
    log = [json.loads(line) for line in (work / "recover" / partial.name.removesuffix(".partial") /
                                         "train_log.jsonl").read_text().splitlines()]
    resumed = [e for e in log if e.get("event") == "resume"]
    assert resumed and resumed[0]["step"] >= 2
    after = log[log.index(resumed[0]) + 1:]
    steps = [e["step"] for e in after if e.get("event") == "step"]
    assert steps[0] == resumed[0]["step"] + 1 and steps[-1] == 400  # only the missing steps ran
    assert Ensemble.load(tmp_path / "bundle").members


def test_a_failing_stage_stops_the_build_keeps_finished_tasks_and_says_how_to_resume(inputs, tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", inputs, budget=2048)
    text = recipe.read_text().replace("seq_len: 32", "seq_len: 4096")  # longer than any document: too little text
    recipe.write_text(text)
    result = CliRunner().invoke(cli, ["build", str(recipe), "--out", str(tmp_path / "b"), "--work-dir",
                                      str(tmp_path / "work"), "--quiet"])
    assert result.exit_code != 0
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: recover") and "rerun `edge-downscale build" in line
    assert "Traceback" not in result.output
    assert len(list((tmp_path / "work" / "prune").glob(f"*/{STAGE_FILE}"))) == 1
    assert not (tmp_path / "b").exists()


def test_a_full_disk_is_one_line_and_leaves_no_bundle(built, inputs, tmp_path, monkeypatch):
    from edge_downscale.pipeline import stages

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setitem(stages.RUNNERS, "export", full)
    root, _, _ = built
    recipe = write_recipe(tmp_path / "recipe.yaml", inputs, quants="q4_0")
    with pytest.raises(EdgeDownscaleError, match="disk is full.*rerun"):
        build(BuildConfig(recipe=str(recipe), out=str(tmp_path / "b"), work_dir=str(root / "work")),
              echo=lambda m: None, progress=False)
    assert not (tmp_path / "b").exists()
    assert not list((root / "work" / "export").glob(".*.staging"))  # nothing half-written left as finished


def test_an_existing_output_is_refused_before_any_work(built):
    root, recipe, _ = built
    result = CliRunner().invoke(cli, ["build", str(recipe), "--out", str(root / "bundle"), "--work-dir",
                                      str(root / "work")])
    assert result.exit_code != 0 and "already exists" in result.output


def test_dry_run_prints_the_plan(built):
    root, recipe, _ = built
    result = CliRunner().invoke(cli, ["build", str(recipe), "--dry-run", "--work-dir", str(root / "work")])
    assert result.exit_code == 0, result.output
    assert "reuse" in result.output and "est. time" in result.output
