"""Data pruning: each selector on small real text, the recipe, the corpus writer, reports and bad input.

Real text from this machine: Debian's common licences and CPython standard-library sources. Model
steps use the tiny random Llama fixture (the properties asserted hold for any model).
"""
from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datasets")
pytest.importorskip("datasketch")
pytest.importorskip("sklearn")

from edge_downscale.data import build_corpus, corpus_info, load_corpus  # noqa: E402
from edge_downscale.data.corpus import CorpusConfig  # noqa: E402
from edge_downscale.data.prune import (  # noqa: E402
    DiversityConfig,
    NearDedupConfig,
    PruneRecipe,
    QualityConfig,
    RelevanceConfig,
    active_select,
    band_indices,
    digest_dir,
    diversity_select,
    exact_dedup,
    near_dedup,
    prune_corpus,
    prune_texts,
    quality_select,
    reference_scores,
    relevance_select,
)
from edge_downscale.errors import ConfigError, CorpusError  # noqa: E402

LICENCES = Path("/usr/share/common-licenses")


def _licences(n: int = 8, min_chars: int = 1000) -> list[str]:
    """``n`` distinct real licence texts (symlinked duplicates skipped)."""
    if not LICENCES.is_dir():
        pytest.skip("no /usr/share/common-licenses on this machine")
    seen, out = set(), []
    for p in sorted(LICENCES.iterdir()):
        if p.is_file():
            text = p.read_text(encoding="utf-8")
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                out.append(text)
    if len(out) < n:
        pytest.skip("not enough licence texts")
    return out[:n]


def _code(name: str = "json/decoder.py") -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / name).read_text(encoding="utf-8")


def _change_words(text: str, every: int) -> str:
    words = text.split(" ")
    return " ".join(f"changed{i}" if i % every == 0 and w else w for i, w in enumerate(words))


# --------------------------------------------------------------------------- configs


def test_recipe_round_trips_through_json_and_validates():
    r = PruneRecipe(steps=("dedup", "quality"), keep=0.3, quality={"band": "low", "max_tokens": 64})
    assert isinstance(r.quality, QualityConfig) and r.quality.band == "low"
    assert PruneRecipe.from_json(r.to_json()) == r
    assert NearDedupConfig.from_json(NearDedupConfig(threshold=0.6).to_json()).threshold == 0.6
    for bad in ({"keep": 0}, {"keep": 1.5}, {"keep": -0.1}, {"steps": ["dedup", "nope"]}, {"steps": []},
                {"quality": {"band": "medium"}}, {"near_dedup": {"threshold": 0}}, {"steps": ["dedup", "dedup"]}):
        with pytest.raises(ConfigError) as e:
            PruneRecipe.from_dict(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown key"):
        PruneRecipe.from_dict({"kep": 0.5})


# --------------------------------------------------------------------------- dedup


def test_exact_dedup_groups_duplicated_licences():
    lic = _licences(4)
    texts = [lic[0], lic[1], lic[0], lic[2], "  " + lic[1].upper() + "\n", lic[3]]  # same words, case, spacing
    sel = exact_dedup(texts)
    assert sel.reason == ["kept", "kept", "exact-duplicate", "kept", "exact-duplicate", "kept"]
    assert sel.score[2] == 0 and sel.score[4] == 1 and math.isnan(sel.score[0])


def test_near_dedup_catches_a_planted_near_duplicate():
    lic = _licences(5)  # Apache-2.0, Artistic, BSD, CC0, GFDL on Debian: distinct texts
    planted = _change_words(lic[2], every=40)  # a few words changed
    assert planted != lic[2]
    sel = near_dedup(lic + [planted], NearDedupConfig(threshold=0.7))
    assert sel.reason[-1] == "near-duplicate"
    assert sel.keep[:-1].all()  # distinct licences are not grouped
    assert sel.score[2] == 2 and sel.score[-1] == 2  # the group's size


# --------------------------------------------------------------------------- relevance


def test_dsir_gives_off_domain_code_low_relevance():
    lic = _licences(8)
    pool = lic[:5] + [_code()]
    target = lic[5:]  # other legal text, none of it in the pool
    sel = relevance_select(pool, target, n_keep=5, config=RelevanceConfig())
    assert int(np.argmin(sel.score)) == 5
    assert sel.reason[5] == "low-relevance" and sel.keep[:5].all()
    # resampling: seeded Gumbel top-k, same size
    res = relevance_select(pool, target, n_keep=3, config=RelevanceConfig(mode="resample", seed=3))
    again = relevance_select(pool, target, n_keep=3, config=RelevanceConfig(mode="resample", seed=3))
    assert res.n_kept == 3 and (res.keep == again.keep).all()


# --------------------------------------------------------------------------- quality


def test_band_indices_pick_low_middle_high():
    s = np.array([5.0, 1.0, np.nan, 3.0, 2.0, 4.0])
    assert sorted(band_indices(s, 2, "low")) == [1, 4]
    assert sorted(band_indices(s, 2, "high")) == [0, 5]
    assert sorted(band_indices(s, 3, "middle")) == [3, 4, 5]


def test_steps_registry_and_budget_arithmetic():
    from edge_downscale.data.prune import STEPS
    from edge_downscale.data.prune.budget import budget_documents, budget_trim, ranking_keep

    assert list(STEPS) == ["dedup", "near-dedup", "quality", "relevance", "diversity", "active"]
    assert {n for n, s in STEPS.items() if s.ranking} == {"quality", "relevance", "diversity", "active"}
    assert {n for n, s in STEPS.items() if s.model} == {"quality", "diversity", "active"}
    assert budget_documents(0.5, 7) == 4 and budget_documents(0.01, 7) == 1
    assert ranking_keep(40, 50, 2) == 40  # already under budget: nothing to cut
    assert ranking_keep(100, 25, 2) == 50 and ranking_keep(50, 25, 1) == 25  # geometric shares land on the budget
    sel = budget_trim(10, 3, seed=0)
    assert sel.n_kept == 3 and sel.counts() == {"kept": 3, "budget": 7} and sel.stats == {"budget": 3}
    assert list(budget_trim(10, 3, seed=0).keep) == list(sel.keep)  # seeded


def test_reference_cache_scores_each_document_once(tiny_backend):
    from edge_downscale.data.prune import ReferenceCache

    texts = _licences(4)
    calls = []
    real = tiny_backend.tokenize

    class Counting:
        def __getattr__(self, name):
            return getattr(tiny_backend, name)

        def tokenize(self, text):
            calls.append(text)
            return real(text)

    cache = ReferenceCache(Counting(), texts)
    first = cache.get(np.array([0, 1, 2]), 32, 2, False)
    again = cache.get(np.array([2, 1, 0, 3]), 32, 2, False)
    assert len(calls) == 4  # documents 0-2 once, document 3 once
    assert np.allclose(again.bpb[:3], first.bpb[::-1]) and np.isfinite(again.bpb).all()
    cache.get(np.array([0]), 16, 2, False)  # another max_tokens is another pass
    assert len(calls) == 5


def test_reference_bpb_matches_the_evaluator(tiny_backend):
    from edge_downscale.eval import bits_per_byte

    text = "Permission is hereby granted, free of charge, to any person obtaining a copy."
    rs = reference_scores(tiny_backend, [text], max_tokens=256)
    assert rs.bpb[0] == pytest.approx(bits_per_byte(tiny_backend, [text]).bits_per_byte, rel=1e-4)


def test_quality_keeps_the_requested_band(tiny_backend):
    texts = _licences(6, min_chars=300) + [_code()]
    rs = reference_scores(tiny_backend, texts, max_tokens=48)
    assert np.isfinite(rs.bpb).all()
    order = np.argsort(rs.bpb)
    for band, expect in (("low", order[:3]), ("high", order[-3:]), ("middle", order[2:5])):
        sel = quality_select(texts, tiny_backend, 3, QualityConfig(band=band, max_tokens=48))
        assert sorted(np.flatnonzero(sel.keep)) == sorted(expect)
        assert set(sel.reason) == {"kept", "perplexity-band"}


def test_unencodable_text_is_a_counted_skip(tiny_model_dir):
    """A reference whose tokenizer has an unknown token: such documents are unscorable, not a crash."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from edge_downscale.models.torch_backend import TorchBackend

    words = ["[UNK]", "<s>"] + sorted({w for w in _licences(1)[0].lower().split() if w.isalpha()})[:500]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>")
    backend = TorchBackend(AutoModelForCausalLM.from_pretrained(tiny_model_dir), hf_tok, context_length=256)
    texts = [" ".join(words[2:60]), "Ünïcödé ≠ ascii ☃ zzzqqq", " ".join(words[100:150])]
    sel = quality_select(texts, backend, 2, QualityConfig(max_tokens=32))
    assert sel.reason[1] == "unscorable" and sel.keep[0] and sel.keep[2]
    assert sel.stats["unscorable"] == {"unknown_token": 1}


# --------------------------------------------------------------------------- diversity


def test_semdedup_drops_copies(tiny_backend):
    """An exact copy has cosine 1 to its original under any embedder. (A random tiny model's
    embeddings say nothing about paraphrases, so that is not asserted here.)"""
    lic = _licences(6, min_chars=300)
    texts = lic + [lic[1]]
    sel = diversity_select(texts, tiny_backend, None, DiversityConfig(threshold=0.95, clusters=2, max_tokens=64))
    dropped = set(np.flatnonzero(~sel.keep).tolist())
    assert dropped & {1, 6} and not {1, 6} <= dropped  # exactly one of the pair (the more prototypical)
    assert max(sel.score[1], sel.score[6]) == pytest.approx(1.0, abs=1e-5)
    assert all(sel.reason[i] == "semantic-duplicate" for i in dropped)
    assert sum(sel.stats["cluster_sizes"]) == len(texts)
    # a budget drops the most redundant next
    budget = diversity_select(texts, tiny_backend, 4, DiversityConfig(threshold=0.95, clusters=2, max_tokens=64))
    assert budget.n_kept == 4 and "redundancy-budget" in budget.reason


# --------------------------------------------------------------------------- active


def test_active_selection_picks_the_largest_gap(tiny_backend, tmp_path):
    from edge_downscale.models.tiny import build_tiny_llama
    from edge_downscale.models.torch_backend import TorchBackend

    student = TorchBackend.from_ref(str(build_tiny_llama(tmp_path / "student", seed=1)), context_length=512)
    texts = _licences(6, min_chars=300)
    sel = active_select(texts, tiny_backend, student, 2)
    t = reference_scores(tiny_backend, texts, max_tokens=256).bpb
    s = reference_scores(student, texts, max_tokens=256).bpb
    assert sorted(np.flatnonzero(sel.keep)) == sorted(np.argsort(-(s - t))[:2])
    seen: list[list[str]] = []
    rounds = active_select(texts, tiny_backend, student, 4, train_callback=seen.append,
                           config=PruneRecipe().active.__class__(rounds=2))
    assert rounds.n_kept == 4 and len(seen) == 1 and len(seen[0]) == 2


# --------------------------------------------------------------------------- recipe and corpus


def test_prune_texts_spreads_the_budget_and_counts_bad_documents():
    lic = _licences(8)
    texts = lic + [lic[0], None, "", "   ", _code()]
    r = prune_texts(texts, PruneRecipe(steps=("dedup", "relevance"), keep=0.5), target_texts=lic[:3])
    assert r.budget == 6
    assert r.counts() == {"kept": 6, "no-text": 3, "exact-duplicate": 1, "low-relevance": 3}
    assert [s.step for s in r.selections] == ["dedup", "relevance"]
    # no ranking step: a seeded random trim reaches the budget
    t = prune_texts(texts, PruneRecipe(steps=("dedup",), keep=0.25))
    assert int(t.keep.sum()) == t.budget == 3 and "budget" in t.reason


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    lic = _licences(10, min_chars=300)
    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(lic):
        (src / f"lic{i}.txt").write_text(text, encoding="utf-8")
    (src / "planted.txt").write_text(_change_words(lic[0], every=40), encoding="utf-8")
    (src / "decoder.py").write_text(_code(), encoding="utf-8")
    out = tmp_path / "corpus"
    build_corpus(src, out, CorpusConfig(split_fractions=(0.7, 0.15, 0.15), salt="prune-test"), progress=False)
    return out


def test_prune_corpus_writes_a_corpus_report_and_leaves_the_input_alone(small_corpus, tiny_backend, tmp_path):
    before = digest_dir(small_corpus)
    info = corpus_info(small_corpus)
    out = tmp_path / "pruned"
    recipe = PruneRecipe(steps=("dedup", "near-dedup", "quality", "diversity"), keep=0.5,
                         near_dedup={"threshold": 0.7}, quality={"max_tokens": 48}, diversity={"max_tokens": 48})
    report = prune_corpus(small_corpus, out, recipe, reference=tiny_backend, progress=False)
    assert digest_dir(small_corpus) == before  # input byte-for-byte unchanged
    assert json.loads((out / "data_prune_report.json").read_text()) == json.loads(json.dumps(report))
    assert corpus_info(out)["pruned_from"]["report"] == "data_prune_report.json"

    n = info["splits"]["train"]["documents"]
    assert report["before"]["documents"] == n
    steps = report["steps"]
    assert steps[0]["documents_in"] == n
    for s in steps:
        assert s["kept"] + sum(s["dropped"].values()) == s["documents_in"]
        assert s["docs_per_second"] is None or s["docs_per_second"] > 0
    for a, b in zip(steps, steps[1:]):
        assert b["documents_in"] == a["kept"]
    assert report["after"]["documents"] == steps[-1]["kept"] <= report["budget_documents"] == round(0.5 * n)
    assert sum(report["dropped"].values()) == n - report["after"]["documents"]
    assert "tokens" in report["before"] and report["after"]["tokens"] < report["before"]["tokens"]

    # the output is a corpus like build_corpus's: loadable, validation/test untouched
    pruned = load_corpus(out)
    out_info = corpus_info(out)
    assert len(pruned["train"]) == report["after"]["documents"]
    for split in ("validation", "test"):
        assert out_info["splits"][split]["sha256"] == info["splits"][split]["sha256"]
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == n and sum(d["kept"] for d in decisions) == len(pruned["train"])
    kept_texts = [t for t, d in zip(load_corpus(small_corpus)["train"]["text"], decisions) if d["kept"]]
    assert kept_texts == list(pruned["train"]["text"])
    for png in report["histograms"]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "hist_perplexity.png" in report["histograms"] and "hist_cluster_sizes.png" in report["histograms"]

    with pytest.raises(CorpusError, match="already exists"):
        prune_corpus(small_corpus, out, recipe, reference=tiny_backend, progress=False)
    with pytest.raises(CorpusError, match="is the input"):
        prune_corpus(small_corpus, small_corpus, recipe, reference=tiny_backend, progress=False, overwrite=True)


def test_bad_input_is_a_one_line_error(tmp_path, small_corpus):
    from click.testing import CliRunner

    from edge_downscale.cli import cli

    with pytest.raises(CorpusError, match="empty"):
        prune_texts([])
    with pytest.raises(ConfigError, match="reference"):
        prune_texts(["some text here"], PruneRecipe(steps=("quality",)))
    with pytest.raises(ConfigError, match="target"):
        prune_texts(["some text here"], PruneRecipe(steps=("relevance",)))
    (tmp_path / "notacorpus").mkdir()
    with pytest.raises(CorpusError, match="not a corpus directory"):
        prune_corpus(tmp_path / "notacorpus", tmp_path / "o", PruneRecipe(steps=("dedup",)), progress=False)

    runner = CliRunner()
    for args in (["--keep", "0"], ["--keep", "1.01"], ["--steps", "dedup,bogus"]):
        res = runner.invoke(cli, ["data", "prune", str(small_corpus), "--out", str(tmp_path / "x"), *args])
        assert res.exit_code == 2, res.output
        lines = [x for x in res.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    res = runner.invoke(cli, ["data", "prune", str(small_corpus), "--out", str(tmp_path / "ok"),
                              "--steps", "dedup,near-dedup", "--keep", "0.9", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ok" / "data_prune_report.json").is_file()  # not compress pruning's pruning_report.json
    assert not (tmp_path / "ok" / "pruning_report.json").exists()
