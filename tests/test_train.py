"""The recovery-training engine on tiny random models and real text (Python's own reference prose).

Covered: resume after a crash or Ctrl-C equals an uninterrupted run (LM, and KD with the
curriculum), a foreign checkpoint is refused, a NaN loss stops and keeps the last good checkpoint,
too little data is refused with the number of tokens needed, FFN-only / LoRA train what they
claim, the replay mixture follows its share, the top-k KD loss, the vocabulary check, the CLI.
"""
from __future__ import annotations

import json
import os
import signal

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from edge_downscale.compress.adapt import adapt  # noqa: E402
from edge_downscale.compress.distill import KDObjective, distill, kd_loss, kd_loss_topk, topk_kl  # noqa: E402
from edge_downscale.compress.train.checkpoints import list_checkpoints, read_log, weights_fingerprint  # noqa: E402
from edge_downscale.compress.train.config import (  # noqa: E402
    DistillConfig, TrainConfig, TrainingError, TrainingInterrupted,
)
from edge_downscale.compress.train.engine import Engine, LMObjective  # noqa: E402
from edge_downscale.compress.train.packing import TextSplits  # noqa: E402
from edge_downscale.errors import ConfigError  # noqa: E402
from edge_downscale.models import load_torch  # noqa: E402
from edge_downscale.models.tiny import build_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def texts():
    import pydoc_data.topics as topics

    docs = [topics.topics[k] for k in sorted(topics.topics)]
    return TextSplits("pydoc", docs[:-30], docs[-30:])


@pytest.fixture(scope="module")
def replay_texts():
    """A second, different corpus: the licence texts shipped with Python and its packages."""
    import sys
    from pathlib import Path

    found = sorted(Path(sys.prefix).rglob("LICENSE*"))[:60] + sorted(Path(sys.base_prefix).glob("lib/python3*/LICENSE.txt"))
    docs = [p.read_text(errors="replace") for p in found if p.is_file()]
    docs = [d for d in docs if len(d) > 500]
    assert len(docs) >= 10
    return TextSplits("licences", docs[:-4], docs[-4:])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("train") / "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("train") / "teacher", seed=1)


def cfg(**kw) -> TrainConfig:
    base = dict(token_budget=8 * 4 * 32, seq_len=32, batch_size=4, micro_batch=2, lr=3e-3, train="all",
                checkpoint_every=2, eval_tokens=200, seed=0)
    return TrainConfig(**{**base, **kw})


def weights(path):
    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


class CrashAt(LMObjective):
    """A fault: the process dies (an exception) in the middle of step ``at`` (0-based)."""

    def __init__(self, at: int, inner=None):
        self.at, self.calls, self.inner = at, 0, inner

    def loss(self, model, batch):
        step = self.engine_step()
        if step == self.at:
            raise RuntimeError("simulated crash")
        return (self.inner or super()).loss(model, batch)

    def setup(self, engine):
        self.engine = engine
        if self.inner is not None:
            self.inner.setup(engine)

    def engine_step(self):
        return self.engine.state["step"]

    def describe(self):
        return (self.inner or LMObjective()).describe()

    def on_step(self, engine, step):
        return self.inner.on_step(engine, step) if self.inner else None

    @property
    def state(self):
        return getattr(self.inner, "state", None)

    @state.setter
    def state(self, value):
        if self.inner is not None:
            self.inner.state = value


def run_engine(model_dir, objective, splits, config, out, **kw):
    model, tok, _ = load_torch(str(model_dir))
    return Engine(model, tok, objective, splits, config, out, progress=False, **kw).run()


def test_resume_after_crash_equals_uninterrupted_run(tiny, texts, tmp_path):
    config = cfg()
    run_engine(tiny, LMObjective(), texts, config, tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_engine(tiny, CrashAt(5), texts, config, tmp_path / "crashed")
    assert [p.name for p in list_checkpoints(tmp_path / "crashed")] == ["step-000004"]
    assert not (tmp_path / "crashed" / "config.json").exists()  # nothing that looks finished
    run_engine(tiny, LMObjective(), texts, config, tmp_path / "crashed", resume=True)
    assert_same_weights(tmp_path / "straight", tmp_path / "crashed")
    log = read_log(tmp_path / "crashed")
    at = next(i for i, r in enumerate(log) if r["event"] == "resume")
    assert log[at]["step"] == 4
    assert [r["step"] for r in log[at:] if r["event"] == "step"] == [5, 6, 7, 8]  # only the missing steps ran
    assert not (tmp_path / "crashed" / "checkpoints").exists()  # removed once the run finished


def test_ctrl_c_writes_a_checkpoint_and_resume_finishes_the_same(tiny, texts, tmp_path):
    class CtrlCAt(LMObjective):
        def setup(self, engine):
            self.engine = engine

        def loss(self, model, batch):
            if self.engine.state["step"] == 3 and not getattr(self, "sent", False):
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            return super().loss(model, batch)

    config = cfg(checkpoint_every=0)  # no periodic checkpoints: the Ctrl-C one is the only one
    run_engine(tiny, LMObjective(), texts, config, tmp_path / "straight")
    with pytest.raises(TrainingInterrupted, match="--resume"):
        run_engine(tiny, CtrlCAt(), texts, config, tmp_path / "stopped")
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["step-000004"]
    run_engine(tiny, LMObjective(), texts, config, tmp_path / "stopped", resume=True)
    assert_same_weights(tmp_path / "straight", tmp_path / "stopped")


def test_kd_with_curriculum_resumes_to_the_same_result(tiny, tiny_teacher, texts, tmp_path):
    config = cfg(train="ffn")
    kd = DistillConfig(cache_topk=16, curriculum="divergence", curriculum_every=3, quiz_blocks=2)

    def objective():
        teacher, _, _ = load_torch(str(tiny_teacher))
        return KDObjective(teacher, kd, teacher_id=weights_fingerprint(teacher))

    run_engine(tiny, objective(), texts, config, tmp_path / "straight", kind="distill")
    with pytest.raises(RuntimeError):
        run_engine(tiny, CrashAt(5, objective()), texts, config, tmp_path / "crashed", kind="distill")
    run_engine(tiny, objective(), texts, config, tmp_path / "crashed", kind="distill", resume=True)
    assert_same_weights(tmp_path / "straight", tmp_path / "crashed")
    phases = [r for r in read_log(tmp_path / "straight") if r["event"] == "curriculum"]
    assert [r["step"] for r in phases] == [0, 3, 6]
    assert all(r["kl_chosen"] >= r["kl_candidates"] for r in phases if r["mode"] == "hard-first")


def test_a_checkpoint_from_another_run_is_refused(tiny, texts, tmp_path):
    with pytest.raises(RuntimeError):
        run_engine(tiny, CrashAt(3), texts, cfg(), tmp_path / "run")
    assert list_checkpoints(tmp_path / "run")
    with pytest.raises(TrainingError, match="another run"):
        run_engine(tiny, LMObjective(), texts, cfg(lr=1e-3), tmp_path / "run", resume=True)
    with pytest.raises(TrainingError, match="--resume"):  # and a non-empty OUT without --resume
        run_engine(tiny, LMObjective(), texts, cfg(), tmp_path / "run")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny, texts, tmp_path):
    class NanAt(LMObjective):
        def setup(self, engine):
            self.engine = engine

        def loss(self, model, batch):
            loss = super().loss(model, batch)
            return loss * float("nan") if self.engine.state["step"] == 5 else loss

    with pytest.raises(TrainingError, match=r"step 5.*step-000004.*lower --lr"):
        run_engine(tiny, NanAt(), texts, cfg(), tmp_path / "run")
    (good,) = list_checkpoints(tmp_path / "run")
    state = json.loads((good / "state.json").read_text())
    assert state["step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(str(good / "trainable.safetensors")).values())
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_too_small_corpus_says_how_many_tokens_are_needed(tiny, tmp_path):
    small = TextSplits("small", ["def f():\n    return 1\n"], ["x = 1\n" * 40])
    with pytest.raises(TrainingError, match=r"at least 132 are needed"):
        adapt(str(tiny), small, tmp_path / "out", config=cfg(), progress=False)
    empty = TextSplits("empty", [], [])
    with pytest.raises(TrainingError, match="training tokens"):
        adapt(str(tiny), empty, tmp_path / "out2", config=cfg(), progress=False)


def test_ffn_mode_changes_only_the_ffns_and_learns(tiny, texts, tmp_path):
    summary = adapt(str(tiny), texts, tmp_path / "out", config=cfg(train="ffn", token_budget=20 * 4 * 32),
                    progress=False)
    before, after = weights(tiny), weights(tmp_path / "out")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[-2] in ("gate_proj", "up_proj", "down_proj") for k in changed)
    assert len(changed) == 3 * 2  # every FFN matrix of both layers
    first = next(r for r in read_log(tmp_path / "out") if r["event"] == "eval")
    assert summary["val_loss"] < first["val_loss"] - 0.1  # it learned the domain, measured on held-out text
    model, _, _ = load_torch(str(tmp_path / "out"))  # a plain HF directory
    assert sum(p.numel() for p in model.parameters()) > 0


def test_lora_is_merged_into_a_plain_hf_directory(tiny, texts, tmp_path):
    pytest.importorskip("peft")
    summary = adapt(str(tiny), texts, tmp_path / "out", config=cfg(train="lora", lora_rank=4), progress=False)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    before, after = weights(tiny), weights(tmp_path / "out")
    assert before.keys() == after.keys()  # no lora_A/lora_B left: merged
    changed = {k.split(".")[-2] for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= {"gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj"}
    assert summary["trainable_params"] < 0.2 * sum(t.numel() for t in before.values())


def test_replay_mixture_follows_the_domain_share(tiny, texts, replay_texts, tmp_path):
    config = cfg(domain_share=0.25, token_budget=6 * 4 * 32)
    summary = adapt(str(tiny), texts, tmp_path / "out", config=config, replay=replay_texts, progress=False)
    assert summary["domain_tokens"] == 0.25 * summary["tokens"]
    assert summary["replay_val_loss"] > 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["domain_share"] == 0.25 and run["sources"]["replay"]["name"] == "licences"
    with pytest.raises(ConfigError, match="replay"):
        adapt(str(tiny), texts, tmp_path / "out2", config=config, progress=False)


def test_topk_kd_equals_full_kd_when_k_is_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    y = torch.randint(0, 11, (2, 5), generator=g)
    y[1, 3] = -100
    vals, idx = t.topk(11, dim=-1)
    full = kd_loss(s, t, y, alpha=0.3, tau=2.0, divergence="forward")
    assert torch.allclose(kd_loss_topk(s, vals, idx, y, alpha=0.3, tau=2.0), full, atol=1e-5)
    vals3, idx3 = t.topk(3, dim=-1)  # the truncated teacher is a different (renormalised) target
    assert not torch.allclose(kd_loss_topk(s, vals3, idx3, y, alpha=0.3, tau=2.0), full, atol=1e-3)
    lse = torch.logsumexp(t / 2.0, -1)  # with the teacher's normaliser, k = V is still the full KD
    assert torch.allclose(kd_loss_topk(s, vals, idx, y, lse, alpha=0.3, tau=2.0), full, atol=1e-5)


def test_topk_kd_with_the_tail_bin_is_the_kl_of_the_coarsened_distributions():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 13, generator=g) * 3, torch.randn(7, 13, generator=g) * 3  # (N, V)
    vals, idx = t.topk(4, dim=-1)
    got = topk_kl(s, vals, idx, torch.logsumexp(t / 2.0, -1), tau=2.0)  # (N,)

    def coarse(logits):  # (N, 5): the teacher's top-4 tokens, then everything else
        p = torch.softmax(logits / 2.0, -1)
        top = p.gather(-1, idx)
        return torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1)

    pt, ps = coarse(t), coarse(s)
    assert torch.allclose(got, (pt * (pt.log() - ps.log())).sum(-1), atol=1e-5)
    assert (got >= -1e-6).all() and topk_kl(t, vals, idx, torch.logsumexp(t / 2.0, -1), tau=2.0).abs().max() < 1e-5


def test_distill_refuses_a_teacher_with_another_vocabulary(tiny, texts, tmp_path):
    other = build_tiny_llama(tmp_path / "other", vocab_size=512)
    with pytest.raises(ConfigError, match="same tokenizer"):
        distill(str(other), str(tiny), texts, tmp_path / "out", config=cfg(), progress=False)
    assert not (tmp_path / "out").exists()


def test_distill_live_teacher_with_hidden_alignment_learns(tiny, tiny_teacher, texts, tmp_path):
    kd = DistillConfig(hidden_weight=0.5, cache_topk=0)
    summary = distill(str(tiny_teacher), str(tiny), texts, tmp_path / "out", config=cfg(train="ffn"), kd=kd,
                      progress=False)
    steps = [r for r in read_log(tmp_path / "out") if r["event"] == "step"]
    assert len(steps) == summary["steps"] == 8 and steps[-1]["loss"] < steps[0]["loss"]


def test_cli_adapt_and_bad_input(tiny, texts, tmp_path):
    from click.testing import CliRunner

    from edge_downscale.cli import cli
    from edge_downscale.data import build_corpus

    src = tmp_path / "src"
    src.mkdir()
    for i, doc in enumerate(texts.train + texts.validation):
        (src / f"{i:03d}.txt").write_text(doc)
    build_corpus(str(src), tmp_path / "corpus", progress=False)
    runner = CliRunner()
    args = ["adapt", str(tiny), "--domain", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"),
            "--tokens", "512", "--seq-len", "32", "--batch-size", "4", "--quiet"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "validation loss" in res.output
    assert json.loads((tmp_path / "out" / "eval_summary.json").read_text())["tokens"] == 512
    again = runner.invoke(cli, args)  # a finished run is not overwritten
    assert again.exit_code != 0 and "already holds a finished run" in again.output
    assert "Traceback" not in again.output
    resumed = runner.invoke(cli, args + ["--resume"])  # nor retrained from scratch by --resume
    assert resumed.exit_code != 0 and "nothing to resume" in resumed.output
    bad = runner.invoke(cli, ["adapt", str(tiny), "--domain", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")])
    assert bad.exit_code != 0 and "neither a corpus directory nor a demo domain" in bad.output
    share = runner.invoke(cli, args[:-1] + ["--domain-share", "0.5", "--out", str(tmp_path / "o3")])
    assert share.exit_code != 0 and "needs a replay corpus" in share.output
