"""The mixture strategy (c-BTM) on tiny exported models: hand-computed mixtures, top_k=1 == route, faults."""
import dataclasses
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_downscale.bundle import BundleConfig, build_bundle
from edge_downscale.cli import cli
from edge_downscale.errors import BundleError, ConfigError
from edge_downscale.runtime import STRATEGIES, Ensemble, open_artifact
from edge_downscale.runtime.base import log_softmax
from edge_downscale.runtime.mixture import MixtureOptions, mix_logprobs, mixture_weights

CODE_PROMPT = "def load(path):\n    with open(path) as f:\n        return json.load(f)\n"
MIXED_TEXT = "THE SOFTWARE IS PROVIDED AS IS.\ndef load(path):\n    return json.load(open(path))\n"
OPTIONS = [" return data", " WITHOUT WARRANTY", " 42"]


def _chunks(text: str, size: int = 1200) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size) if text[i:i + size].strip()]


@pytest.fixture(scope="module")
def domain_texts() -> dict[str, list[str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [c for name in ("json/decoder.py", "json/encoder.py", "textwrap.py") for c in _chunks((stdlib / name).read_text())]
    licences = Path("/usr/share/common-licenses")
    legal = [c for name in ("Apache-2.0", "GPL-3", "LGPL-2.1", "MPL-2.0") if (licences / name).exists()
             for c in _chunks((licences / name).read_text())]
    if len(legal) < 10:
        pytest.skip("no licence texts under /usr/share/common-licenses")
    return {"code": code[:40], "legal": legal[:40]}


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory):
    """The tiny model as GGUF f32 and q8_0: one tokenizer, two (slightly) different models."""
    from edge_downscale.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("mix-exports") / "out"
    export_model(str(tiny_model_dir), ExportConfig(out_dir=out, format="gguf", quants="f32,q8_0"), log=lambda m: None)
    return {"coder": out / "gguf-f32", "lawyer": out / "gguf-q8_0"}


def _members(exports):
    return [{"name": "coder", "path": exports["coder"], "domain": "code", "options": {"n_ctx": 256, "n_threads": 1}},
            {"name": "lawyer", "path": exports["lawyer"], "domain": "legal", "options": {"n_ctx": 256, "n_threads": 1}}]


@pytest.fixture(scope="module")
def bundle(exports, domain_texts, tmp_path_factory):
    return build_bundle(BundleConfig(out=tmp_path_factory.mktemp("mix") / "b", members=_members(exports),
                                     strategy="mixture"), router_texts=domain_texts, log=lambda m: None)


@pytest.fixture(scope="module")
def direct(exports):
    """Each member opened on its own, outside the ensemble (the hand computation's source)."""
    backends = {n: open_artifact(p, n_ctx=256, n_threads=1) for n, p in exports.items()}
    yield backends
    for b in backends.values():
        b.close()


def _as(ens: Ensemble, strategy: str, **options) -> Ensemble:
    return Ensemble(dataclasses.replace(ens.spec, strategy=strategy, strategy_options=options), ens.root, meter=ens.meter)


def _hand_weights(ens, text, temperature=1.0):
    scores = ens.router.route(text).scores  # {"code": p, "legal": 1 - p}
    p = np.array([scores["code"], scores["legal"]]) ** (1 / temperature)
    return dict(zip(("coder", "lawyer"), p / p.sum()))


def test_options_validate_and_weights_sum_to_one():
    assert MixtureOptions() == MixtureOptions(top_k=2, temperature=1.0, min_weight=0.0)
    for bad in ({"top_k": 0}, {"top_k": 1.5}, {"temperature": 0}, {"temperature": -1}, {"min_weight": 1.0},
                {"min_weight": -0.1}):
        with pytest.raises(ConfigError):
            MixtureOptions.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown key"):
        MixtureOptions.from_dict({"topk": 2})
    post = {"a": 0.6, "b": 0.3, "c": 0.1}
    w = mixture_weights(post, top_k=2)
    assert list(w) == ["a", "b"] and sum(w.values()) == pytest.approx(1) and w["a"] == pytest.approx(2 / 3)
    sharp = mixture_weights(post, top_k=3, temperature=0.5)
    assert sharp["a"] == pytest.approx(0.36 / 0.46) and sum(sharp.values()) == pytest.approx(1)
    assert list(mixture_weights(post, top_k=3, min_weight=0.2)) == ["a", "b"]
    assert mixture_weights(post, top_k=1) == {"a": 1.0}
    assert mixture_weights({"a": 0.0, "b": 0.0}, top_k=2) == {"a": 0.5, "b": 0.5}
    lp = np.log(np.array([[0.5, 1e-300], [0.25, 0.5]]))
    assert np.exp(mix_logprobs(lp, np.array([0.5, 0.5]))) == pytest.approx([0.375, 0.25])


def test_score_is_the_hand_computed_token_mixture(bundle, direct):
    with Ensemble.load(bundle) as ens:
        resp = ens.score(MIXED_TEXT)
        w = _hand_weights(ens, MIXED_TEXT)
        sharp = _as(ens, "mixture", temperature=0.25).score(MIXED_TEXT)
        w_sharp = _hand_weights(ens, MIXED_TEXT, temperature=0.25)
    assert 0.01 < w["coder"] < 0.99  # a real mixture, not one member
    lps = {}
    for name, b in direct.items():
        (lp,) = b.token_logprobs([b.prefix_ids + b.tokenize(MIXED_TEXT)])
        lps[name] = np.asarray(lp, dtype=np.float64)
    hand = float(np.log(w["coder"] * np.exp(lps["coder"]) + w["lawyer"] * np.exp(lps["lawyer"])).sum())
    assert resp.logprob == pytest.approx(hand, rel=1e-9)
    assert resp.bits_per_byte == pytest.approx(-hand / math.log(2) / len(MIXED_TEXT.encode()), rel=1e-9)
    assert resp.details["weights"] == pytest.approx(w) and sum(resp.details["weights"].values()) == pytest.approx(1)
    assert sorted(resp.members) == ["coder", "lawyer"] and "mixture of 2 member(s)" in resp.reason
    # the cross-check can fail: the mixture is neither member's score nor the sequence mixture
    seq = float(np.logaddexp(np.log(w["coder"]) + lps["coder"].sum(), np.log(w["lawyer"]) + lps["lawyer"].sum()))
    assert all(abs(resp.logprob - lp.sum()) > 1e-6 for lp in lps.values()) and abs(resp.logprob - seq) > 1e-6
    hand_sharp = float(np.log(w_sharp["coder"] * np.exp(lps["coder"]) + w_sharp["lawyer"] * np.exp(lps["lawyer"])).sum())
    assert sharp.logprob == pytest.approx(hand_sharp, rel=1e-9) and abs(hand_sharp - hand) > 1e-6


def test_top_1_mixture_equals_route(bundle):
    with Ensemble.load(bundle, strategy_options={"top_k": 1}) as ens:
        route = _as(ens, "route")
        for text in (CODE_PROMPT, MIXED_TEXT):
            a, b = ens.score(text), route.score(text)
            assert a.members == b.members and a.logprob == b.logprob and a.bits_per_byte == b.bits_per_byte
        a, b = ens.choose(CODE_PROMPT, OPTIONS), route.choose(CODE_PROMPT, OPTIONS)
        assert a.choice == b.choice and a.option_scores == pytest.approx(b.option_scores, rel=1e-12)
        g, h = ens.generate(CODE_PROMPT, max_tokens=8), route.generate(CODE_PROMPT, max_tokens=8)
        assert g.members == h.members and g.text == h.text and g.tokens == h.tokens
        assert g.token_logprobs == pytest.approx(h.token_logprobs, abs=1e-5)


def test_choose_picks_the_highest_mixture_logprob(bundle, direct):
    with Ensemble.load(bundle) as ens:
        resp = ens.choose(MIXED_TEXT, OPTIONS)
        w = _hand_weights(ens, MIXED_TEXT)
    hand = []
    for option in OPTIONS:
        per = {}
        for name, b in direct.items():
            ctx, opt = b.prefix_ids + b.tokenize(MIXED_TEXT), b.tokenize(option)
            (lp,) = b.token_logprobs([ctx + opt])
            per[name] = np.asarray(lp[-len(opt):], dtype=np.float64)
        hand.append(float(np.log(w["coder"] * np.exp(per["coder"]) + w["lawyer"] * np.exp(per["lawyer"])).sum()))
    assert resp.option_scores == pytest.approx(hand, rel=1e-9) and resp.choice == int(np.argmax(hand))
    assert set(resp.details["member_logprobs"]) == {"coder", "lawyer"}


def test_generation_samples_from_the_mixture(bundle, direct):
    with Ensemble.load(bundle) as ens:
        w = _hand_weights(ens, CODE_PROMPT)
        chunks = list(ens.generate(CODE_PROMPT, max_tokens=6, stream=True))
        final = chunks[-1].final
        a = ens.generate(CODE_PROMPT, max_tokens=6, temperature=0.9, top_p=0.9, seed=3)
        b = ens.generate(CODE_PROMPT, max_tokens=6, temperature=0.9, top_p=0.9, seed=3)
    assert "".join(c.text for c in chunks) == final.text and sorted(final.members) == ["coder", "lawyer"]
    assert final.details["weights"] == pytest.approx(w) and a.text == b.text  # seeded: reproducible
    # the first token by hand: argmax of w_c p_c + w_l p_l after the prompt
    rows = {}
    for name, be in direct.items():
        ids = be.prefix_ids + be.tokenize(CODE_PROMPT)
        rows[name] = np.exp(log_softmax(be.logits(ids)[-1:])[0])
    mix = w["coder"] * rows["coder"] + w["lawyer"] * rows["lawyer"]
    assert final.tokens and final.tokens[0] == int(np.argmax(mix))
    assert final.token_logprobs[0] == pytest.approx(math.log(mix[final.tokens[0]]), abs=1e-4)
    assert abs(math.log(rows["coder"][final.tokens[0]]) - final.token_logprobs[0]) > 1e-6  # not one member's
    assert final.usage.completion_tokens == 2 * len(final.tokens)  # summed over the two members


def test_a_crashing_member_is_dropped_and_the_rest_renormalised(bundle, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("simulated device loss")

    def crashing(self, prompt_ids):
        logits = np.zeros(self._llm.n_vocab(), dtype=np.float32)
        yield logits
        raise RuntimeError("simulated device loss mid-stream")

    with Ensemble.load(bundle) as ens:
        alone = _as(ens, "mixture", top_k=1)
        with ens.use("lawyer") as lawyer:
            monkeypatch.setattr(lawyer, "token_logprobs", broken)
            monkeypatch.setattr(lawyer, "_decode", crashing.__get__(lawyer))
        scored = ens.score(CODE_PROMPT)
        assert scored.members == ["coder"] and scored.details["weights"] == {"coder": 1.0}
        assert "simulated device loss" in scored.fallbacks[0]["error"] and scored.fallbacks[0]["member"] == "lawyer"
        assert scored.logprob == alone.score(CODE_PROMPT).logprob  # coder alone (top_k=1 routes code to coder)
        chose = ens.choose(CODE_PROMPT, OPTIONS)
        assert chose.members == ["coder"] and chose.fallbacks
        gen = ens.generate(CODE_PROMPT, max_tokens=5)
        assert "mid-stream" in gen.fallbacks[0]["error"] and gen.details["final_weights"] == {"coder": 1.0}
        assert ens.stats["fallbacks"] == 3


def test_members_with_different_tokenizers_are_refused(bundle, monkeypatch):
    with Ensemble.load(bundle) as ens:
        with ens.use("lawyer") as lawyer:
            real = lawyer.tokenize
            monkeypatch.setattr(lawyer, "tokenize", lambda text, **k: [t + 1 for t in real(text, **k)])
        for call in (lambda: ens.score(CODE_PROMPT), lambda: ens.choose(CODE_PROMPT, OPTIONS),
                     lambda: ens.generate(CODE_PROMPT, max_tokens=2)):
            with pytest.raises(ConfigError, match="tokenize differently"):
                call()


def test_mixture_needs_a_router_and_the_cli_accepts_it(exports, tmp_path):
    vote = build_bundle(BundleConfig(out=tmp_path / "v", members=_members(exports), strategy="vote"), log=lambda m: None)
    ens = Ensemble.load(vote)
    with pytest.raises(BundleError, match="mixture strategy needs a router") as e:
        _as(ens, "mixture")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="mixture strategy needs router training texts"):
        build_bundle(BundleConfig(out=tmp_path / "m", members=_members(exports), strategy="mixture"), log=lambda m: None)
    from edge_downscale.cli.bundle import STRATEGY_NAMES

    assert set(STRATEGY_NAMES) == set(STRATEGIES) and "mixture" in STRATEGIES
    res = CliRunner().invoke(cli, ["bundle", "build", str(tmp_path / "c"), "--member", f"coder={exports['coder']}:code",
                                   "--member", f"lawyer={exports['lawyer']}:legal", "--strategy", "mixture"])
    assert res.exit_code != 0 and "invalid choice" not in res.output + res.stderr
    assert "mixture strategy needs router training texts" in res.output + res.stderr
