"""Ensembles on tiny exported models: bundles, route / cascade / vote, faults, threads, LRU, CLI."""
import json
import shutil
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_downscale.cli import cli
from edge_downscale.errors import BundleError, ConfigError
from edge_downscale.artifacts import model_file
from edge_downscale.runtime import ContextOverflowError, Ensemble, open_artifact
from edge_downscale.bundle import BundleConfig, build_bundle, calibrate_cascade
from edge_downscale.runtime.strategies import option_probs

CODE_PROMPT = "def load(path):\n    with open(path) as f:\n        return json.load(f)\n"
LEGAL_PROMPT = "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING"


def _chunks(text: str, size: int = 1200) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size) if text[i:i + size].strip()]


@pytest.fixture(scope="module")
def domain_texts() -> dict[str, list[str]]:
    """Real text: stdlib Python source (code) and the system's licence texts (legal)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [c for name in ("json/decoder.py", "json/encoder.py", "textwrap.py", "shlex.py")
            for c in _chunks((stdlib / name).read_text())]
    licences = Path("/usr/share/common-licenses")
    legal = [c for name in ("Apache-2.0", "GPL-3", "LGPL-2.1", "MPL-2.0") if (licences / name).exists()
             for c in _chunks((licences / name).read_text())]
    if len(legal) < 10:
        pytest.skip("no licence texts under /usr/share/common-licenses")
    return {"code": code[:60], "legal": legal[:60]}


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory):
    """The tiny model exported to GGUF f32 and q8_0 (each with a verified manifest)."""
    from edge_downscale.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("ens-exports") / "out"
    export_model(str(tiny_model_dir), ExportConfig(out_dir=out, format="gguf", quants="f32,q8_0"), log=lambda m: None)
    return {"f32": out / "gguf-f32", "q8_0": out / "gguf-q8_0"}


def _members(exports, threads=1):
    return [{"name": "coder", "path": exports["f32"], "domain": "code", "options": {"n_ctx": 256, "n_threads": threads}},
            {"name": "lawyer", "path": exports["q8_0"], "domain": "legal", "options": {"n_ctx": 256, "n_threads": threads}}]


@pytest.fixture(scope="module")
def route_bundle(exports, domain_texts, tmp_path_factory):
    return build_bundle(BundleConfig(out=tmp_path_factory.mktemp("b") / "route", members=_members(exports),
                                     strategy="route"), router_texts=domain_texts, log=lambda m: None)


def test_route_picks_the_domain_member_streams_and_meters(route_bundle):
    with Ensemble.load(route_bundle) as ens:
        assert ens.loaded == []  # lazy
        code = ens.generate(CODE_PROMPT, max_tokens=12)
        assert code.members == ["coder"] and code.details["route"]["label"] == "code" and "router: code" in code.reason
        legal = ens.generate(LEGAL_PROMPT, max_tokens=12)
        assert legal.members == ["lawyer"]
        chunks = list(ens.generate(CODE_PROMPT, max_tokens=12, stream=True))
        assert "".join(c.text for c in chunks) == chunks[-1].final.text == code.text  # greedy: same text
        u = code.usage
        assert u.completion_tokens + (code.finish_reason == "stop") >= 1 and u.latency_s > 0 and u.ttft_s is not None
        # nothing measurable on this VM: the estimate is labelled as such, never a silent zero
        assert u.energy_source in ("estimated", "rapl", "nvml") and u.joules is not None and u.joules > 0
        assert u.grams_co2 == pytest.approx(u.joules / 3.6e6 * 400)
        assert ens.stats["answered_by"] == {"coder": 2, "lawyer": 1}


def test_route_score_and_choose_use_the_routed_member(route_bundle, exports):
    with Ensemble.load(route_bundle) as ens:
        scored = ens.score(CODE_PROMPT)
        options = [" return data", " WITHOUT WARRANTY"]
        chosen = ens.choose(CODE_PROMPT, options)
    with open_artifact(exports["f32"], n_ctx=256, n_threads=1) as coder:
        direct = coder.score(CODE_PROMPT)
        lps = coder.option_logprobs(CODE_PROMPT, options)
    assert scored.members == ["coder"] and scored.logprob == pytest.approx(direct.total, rel=1e-6)
    assert scored.bits_per_byte == pytest.approx(direct.bits_per_byte, rel=1e-6)
    assert chosen.choice == int(np.argmax(lps)) and chosen.option_scores == pytest.approx(list(lps), rel=1e-6)


def test_tampered_member_is_refused_and_route_falls_back(route_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(route_bundle, bundle)  # a real copy: the fixture's files stay intact
    gguf = model_file(bundle / "members/coder")
    data = bytearray(gguf.read_bytes())
    data[-5] ^= 0xFF
    gguf.unlink()
    gguf.write_bytes(bytes(data))
    with Ensemble.load(bundle) as ens:  # model.json is intact: load succeeds, the member is checked on first use
        resp = ens.generate(CODE_PROMPT, max_tokens=4)
    assert resp.members == ["lawyer"] and "does not match its manifest" in resp.fallbacks[0]["error"]
    assert "after 1 failed member" in resp.reason
    manifest = bundle / "members/lawyer/model.json"
    manifest.write_text(manifest.read_text().replace('"q8_0"', '"q4_0"'))
    with pytest.raises(BundleError, match="does not match the hash in ensemble.json"):
        Ensemble.load(bundle)


def test_member_that_crashes_mid_request_falls_back(route_bundle, monkeypatch):
    """Fault injection: the routed member raises after its first token (route restarts, cascade escalates)."""
    def crashing(self, prompt_ids):
        logits = np.zeros(self._llm.n_vocab(), dtype=np.float32)
        logits[self.tokenize("def")[0]] = 10.0  # one ordinary token, then the fault
        yield logits
        raise RuntimeError("simulated device loss")

    with Ensemble.load(route_bundle) as ens:
        with ens.use("coder") as coder:
            monkeypatch.setattr(coder, "_decode", crashing.__get__(coder))
        chunks = list(ens.generate(CODE_PROMPT, max_tokens=6, stream=True))
    final = chunks[-1].final
    assert final.members == ["lawyer"] and "simulated device loss" in final.fallbacks[0]["error"]
    assert any(c.restart for c in chunks)  # the discarded partial answer is signalled


def test_bad_requests_raise_instead_of_falling_back(route_bundle):
    with Ensemble.load(route_bundle) as ens:
        with pytest.raises(ConfigError, match="temperature"):
            ens.generate("x", temperature=-1)
        with pytest.raises(ContextOverflowError, match="tokens but only"):
            ens.generate(CODE_PROMPT * 40, max_tokens=8, overflow="error")
        long = ens.generate(CODE_PROMPT * 40, max_tokens=8)  # default: truncate the oldest tokens
        assert long.usage.truncated_tokens > 0 and long.usage.prompt_tokens <= 256 - 8
        with pytest.raises(ConfigError, match="role"):
            ens.generate([{"role": "wizard", "content": "hi"}])
        with pytest.raises(ConfigError, match="two non-empty options"):
            ens.choose("x", ["only one"])
        assert ens.stats["fallbacks"] == 0


def test_chat_messages_use_the_members_template(route_bundle):
    with Ensemble.load(route_bundle) as ens:
        resp = ens.generate([{"role": "system", "content": "Be brief."}, {"role": "user", "content": CODE_PROMPT}],
                            max_tokens=6)
    assert resp.members == ["coder"] and resp.details["template"] == "model"


def test_concurrent_threads_get_the_same_answers_as_one_thread(route_bundle):
    prompts = [CODE_PROMPT, LEGAL_PROMPT, CODE_PROMPT[:30], LEGAL_PROMPT[:40]] * 4
    with Ensemble.load(route_bundle) as ens:
        expected = {p: ens.generate(p, max_tokens=10).text for p in set(prompts)}
        results, errors = {}, []

        def worker(i):
            try:
                results[i] = ens.generate(prompts[i], max_tokens=10).text
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        for t in threads[:8]:
            t.start()
        for t in threads[8:]:
            t.start()
        for t in threads:
            t.join()
    assert not errors and all(results[i] == expected[p] for i, p in enumerate(prompts))


def test_lru_budget_keeps_one_member_loaded(route_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(route_bundle, bundle)
    spec = json.loads((bundle / "ensemble.json").read_text())
    sizes = [Ensemble.load(bundle).members[m["name"]].memory_mb for m in spec["members"]]
    spec["memory_budget_mb"] = max(sizes) + min(sizes) / 2  # room for either member, not both
    (bundle / "ensemble.json").write_text(json.dumps(spec))
    with Ensemble.load(bundle) as ens:
        for prompt in (CODE_PROMPT, LEGAL_PROMPT, CODE_PROMPT):
            ens.generate(prompt, max_tokens=2)
            assert len(ens.loaded) == 1
        assert ens.stats["loads"] == 3 and ens.stats["evictions"] == 2 and ens.stats["over_budget"] == 0


def test_cascade_calibrates_thresholds_and_escalates(exports, domain_texts, tmp_path):
    texts = domain_texts["code"][:6] + domain_texts["legal"][:6]
    calibration = {"prompts": [t[:120] for t in texts], "texts": [t[:400] for t in texts],
                   "choices": [(t[:200], [t[200:240], u[200:240]]) for t, u in zip(texts, texts[1:] + texts[:1])]}
    members = _members(exports)
    members[0]["cost"], members[1]["cost"] = 2.0, 1.0  # lawyer (q8_0) is the cheap first level
    bundle = build_bundle(BundleConfig(out=tmp_path / "cascade", members=members, strategy="cascade",
                                       target_acceptance=0.5), calibration=calibration, log=lambda m: None)
    spec = json.loads((bundle / "ensemble.json").read_text())["strategy_options"]
    assert set(spec["thresholds"]) == {"generate", "score", "choose"}
    assert all(len(v) == 1 for v in spec["thresholds"].values())  # two levels: one threshold each
    assert all(0.4 <= a[0] <= 0.6 for a in spec["calibration"]["acceptance"].values())
    with Ensemble.load(bundle) as ens:
        levels = [ens.score(t).details["level"] for t in calibration["texts"]]
        assert 0 < levels.count(0) < len(levels)  # some answered cheaply, some escalated
        assert ens.stats["levels"] == {0: levels.count(0), 1: levels.count(1)}
        resp = ens.generate(CODE_PROMPT, max_tokens=8)
        recs = resp.details["levels"]
        assert recs[0]["member"] == "lawyer" and resp.members == [recs[-1]["member"]]
        assert resp.usage.completion_tokens >= sum(1 for r in recs if "confidence" in r) - 1
    with Ensemble.load(bundle, strategy_options={"thresholds": {"generate": [1e9]}}) as never:
        assert never.generate(CODE_PROMPT, max_tokens=4).members == ["coder"]
    with Ensemble.load(bundle, strategy_options={"thresholds": {"generate": [-1e9]}}) as always:
        assert always.generate(CODE_PROMPT, max_tokens=4).members == ["lawyer"]


def test_uncalibrated_cascade_says_how_to_calibrate(exports, tmp_path):
    bundle = build_bundle(BundleConfig(out=tmp_path / "c", members=_members(exports), strategy="vote"),
                          log=lambda m: None)
    with Ensemble.load(bundle, strategy_options={}) as ens:
        assert ens.spec.strategy == "vote"
    spec = json.loads((bundle / "ensemble.json").read_text())
    spec["strategy"] = "cascade"
    (bundle / "ensemble.json").write_text(json.dumps(spec))
    with Ensemble.load(bundle) as ens:
        with pytest.raises(BundleError, match="calibrate"):
            ens.score(CODE_PROMPT)
        options = calibrate_cascade(ens, texts=[CODE_PROMPT, LEGAL_PROMPT, CODE_PROMPT[:50]], target_acceptance=1.0)
        assert ens.score(CODE_PROMPT).details["level"] == 0 and options["thresholds"]["score"]


def test_vote_combines_normalised_option_logprobs_and_cross_scores(exports, tmp_path):
    bundle = build_bundle(BundleConfig(out=tmp_path / "vote", members=_members(exports), strategy="vote"),
                          log=lambda m: None)
    options = [" return data", " WITHOUT WARRANTY", " 42"]
    per_member = {}
    for name, key in (("coder", "f32"), ("lawyer", "q8_0")):
        with open_artifact(exports[key], n_ctx=256, n_threads=1) as b:
            per_member[name] = b.option_logprobs(CODE_PROMPT, options)
    expected = sum(np.log(option_probs(v)) for v in per_member.values())
    mixture = np.log(sum(option_probs(v) for v in per_member.values()) / 2)
    with Ensemble.load(bundle) as ens:
        resp = ens.choose(CODE_PROMPT, options)
        assert resp.choice == int(np.argmax(expected)) and resp.option_scores == pytest.approx(list(expected), rel=1e-6)
        assert sorted(resp.members) == ["coder", "lawyer"]
        gen = ens.generate(CODE_PROMPT, max_tokens=6)
        assert set(gen.details["candidates"]) == {"coder", "lawyer"} and gen.text in gen.details["candidates"].values()
        best = max(gen.details["cross_scores"], key=gen.details["cross_scores"].get)
        assert gen.members == [best]
        assert gen.usage.completion_tokens >= 2  # both members generated
    with Ensemble.load(bundle, strategy_options={"combine": "mean_prob"}) as ens:
        assert ens.choose(CODE_PROMPT, options).option_scores == pytest.approx(list(mixture), rel=1e-6)
    with pytest.raises(ConfigError, match="combine"):
        Ensemble.load(bundle, strategy_options={"combine": "max"})


def test_bundle_build_refuses_bad_input_and_leaves_nothing(exports, tmp_path, domain_texts):
    with pytest.raises(ConfigError, match="router"):
        build_bundle(BundleConfig(out=tmp_path / "x", members=_members(exports), strategy="route"), log=lambda m: None)
    with pytest.raises(BundleError, match="no model.json"):
        build_bundle(BundleConfig(out=tmp_path / "x", members=[{"name": "a", "path": tmp_path}], strategy="vote"),
                     log=lambda m: None)
    with pytest.raises(ConfigError, match="no member has that domain"):
        build_bundle(BundleConfig(out=tmp_path / "x", members=_members(exports), strategy="route"),
                     router_texts={**domain_texts, "docs": domain_texts["code"]}, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # no half-written bundle
    with pytest.raises(BundleError, match="no ensemble.json"):
        Ensemble.load(tmp_path)


def test_cli_bundle_build_run_and_chat(exports, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "bundle"
    args = ["bundle", "build", str(out), "--member", f"coder={exports['f32']}:code",
            "--member", f"lawyer={exports['q8_0']}:legal", "--strategy", "vote",
            "--member-option", "coder.n_ctx=256", "--member-option", "lawyer.n_ctx=256"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["bundle", "info", str(out), "--json"])
    assert res.exit_code == 0 and {m["name"] for m in json.loads(res.output)["members"]} == {"coder", "lawyer"}
    res = runner.invoke(cli, ["run", str(out), CODE_PROMPT, "--max-tokens", "5", "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert body["strategy"] == "vote" and body["usage"]["energy_source"] and body["text"] is not None
    res = runner.invoke(cli, ["run", str(out), CODE_PROMPT, "--max-tokens", "5"])
    assert res.exit_code == 0 and "tokens" in res.stderr and "J (" in res.stderr
    res = runner.invoke(cli, ["chat", str(out), "--max-tokens", "4"], input="hello\n/reset\nagain\n\n")
    assert res.exit_code == 0 and res.stderr.count("tokens") == 2
    res = runner.invoke(cli, ["run", str(out), "x", "--temperature", "-2"])
    assert res.exit_code == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr
    res = runner.invoke(cli, ["run", str(tmp_path), "x"])
    assert res.exit_code == 2 and "no ensemble.json" in res.stderr


def test_serving_a_bundle_never_imports_torch(route_bundle):
    """The embedded-app path end to end (load, verify, route, generate) in a fresh interpreter."""
    import subprocess
    import sys

    code = (f"import sys\nfrom edge_downscale.runtime import Ensemble\n"
            f"with Ensemble.load({str(route_bundle)!r}) as ens:\n"
            f"    r = ens.generate({CODE_PROMPT!r}, max_tokens=3)\n"
            "print(r.members[0], [m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "coder []"


def test_long_chat_drops_oldest_messages_first(exports):
    with open_artifact(exports["f32"], n_ctx=256, n_threads=1) as b:
        old = [{"role": "user", "content": LEGAL_PROMPT * 3}, {"role": "assistant", "content": LEGAL_PROMPT * 3}]
        messages = [{"role": "system", "content": "Be brief."}] + old * 2 + [{"role": "user", "content": "last question"}]
        ids, dropped, template = b.prompt_ids(messages, max_tokens=16)
        text = b.detokenize(ids)
        assert template == "model" and len(ids) <= 256 - 16 and dropped > 0
        assert "Be brief." in text and "last question" in text  # system and newest kept, oldest gone
        with pytest.raises(ContextOverflowError):
            b.prompt_ids(messages, max_tokens=16, overflow="error")


def test_bundle_config_validates_and_round_trips(tmp_path):
    cfg = BundleConfig(out=tmp_path / "b", members=[{"name": "a", "path": tmp_path, "domain": "code"}],
                       strategy="cascade", calibrate_corpora=["code"], router_corpora={"code": tmp_path})
    assert cfg.out == str(tmp_path / "b") and cfg.members[0]["path"] == str(tmp_path)
    assert cfg.calibrate_corpora == ("code",) and cfg.router_corpora == {"code": str(tmp_path)}
    assert BundleConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="at least one member"):
        BundleConfig(out="b")
    with pytest.raises(ConfigError, match="unknown strategy 'best'"):
        BundleConfig(out="b", members=[{"name": "a", "path": "x"}], strategy="best")
    with pytest.raises(ConfigError, match="target_acceptance"):
        BundleConfig(out="b", members=[{"name": "a", "path": "x"}], target_acceptance=1.5)
    with pytest.raises(ConfigError, match="unknown key"):
        BundleConfig.from_dict({"out": "b", "members": [{"name": "a", "path": "x"}], "router_texts": {}})
