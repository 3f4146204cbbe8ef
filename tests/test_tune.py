"""llama.cpp settings by measurement on a tiny exported GGUF: the backend's options, the tuner, bundles, the CLI."""
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_downscale.bundle import BundleConfig, build_bundle
from edge_downscale.cli import cli
from edge_downscale.errors import BundleError, ConfigError
from edge_downscale.eval import build_items, write_eval_data
from edge_downscale.runtime import Ensemble
from edge_downscale.runtime import llamacpp
from edge_downscale.runtime.llamacpp import DEFAULTS, LlamaCppBackend, resolve_settings
from edge_downscale.runtime.tune import (TUNE_GRID, TuneResult, table_rows, tune_bundle, tune_llamacpp,
                                         write_member_options)

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def export(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama exported to an f32 GGUF with its manifest."""
    from edge_downscale.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("tune-export")
    export_model(str(tiny_model_dir), ExportConfig(out_dir=root / "x", format="gguf", quants="f32"), log=lambda m: None)
    return root / "x" / "gguf-f32"


def _chunks(text: str, size: int = 300) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size) if text[i:i + size].strip()]


@pytest.fixture(scope="module")
def bundle(export, tmp_path_factory) -> Path:
    """Two members (the same export) under vote, with held-out eval files so `bench` can run on it."""
    import pydoc_data.topics as topics

    code = _chunks((Path(sysconfig.get_paths()["stdlib"]) / "json/decoder.py").read_text())[:8]
    docs = _chunks("\n".join(topics.topics[k] for k in sorted(topics.topics)[:4]))[:8]
    data = {d: (t, build_items(t, n_items=2, context_chars=120, continuation_chars=40, n_choices=3))
            for d, t in {"code": code, "docs": docs}.items()}
    root = tmp_path_factory.mktemp("tune-bundle")
    files = write_eval_data(root / "eval", data)
    opts = {"n_ctx": 256, "n_threads": 1}
    members = [{"name": "coder", "path": export, "domain": "code", "options": opts},
               {"name": "writer", "path": export, "domain": "docs", "options": opts}]
    return build_bundle(BundleConfig(out=root / "bundle", members=members, strategy="vote",
                                     files={f"eval/{d}.jsonl": str(p) for d, p in files.items()}), log=lambda m: None)


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


# --- the backend's options --------------------------------------------------------------------

@pytest.mark.parametrize("option", [{"n_threads": 1}, {"n_threads_batch": 1}, {"n_batch": 64}, {"n_ubatch": 32},
                                    {"flash_attn": True}, {"use_mmap": False},
                                    {"n_threads": 1, "n_threads_batch": 1, "n_batch": 64, "n_ubatch": 32,
                                     "flash_attn": True, "use_mmap": False}])
def test_backend_takes_each_setting_and_still_generates(export, option):
    with LlamaCppBackend(export / "model.gguf", n_ctx=128, **option) as b:
        for key, value in option.items():
            assert b.settings[key] == value
        ctx, model = b._llm.context_params, b._llm.model_params  # what llama.cpp was handed
        assert ctx.n_threads == b.settings["n_threads"] and ctx.n_threads_batch == b.settings["n_threads_batch"]
        assert (ctx.n_batch, ctx.n_ubatch) == (b.settings["n_batch"], b.settings["n_ubatch"])
        assert ctx.flash_attn_type == (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if b.settings["flash_attn"]
                                       else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        assert model.load_mode == (llama_cpp.LLAMA_LOAD_MODE_MMAP if b.settings["use_mmap"]
                                   else llama_cpp.LLAMA_LOAD_MODE_NONE)
        g = b.generate("def load(path):", max_tokens=6, meter=None)
        assert g.usage.prompt_tokens > 1 and (g.tokens or g.finish_reason == "stop")


def test_defaults_live_in_one_dict_read_at_construction(export, monkeypatch):
    assert resolve_settings()["n_batch"] == DEFAULTS["n_batch"]
    monkeypatch.setitem(llamacpp.DEFAULTS, "n_ubatch", 16)
    monkeypatch.setitem(llamacpp.DEFAULTS, "flash_attn", True)
    with LlamaCppBackend(export / "model.gguf", n_ctx=128) as b:
        assert b.settings["n_ubatch"] == 16 and b._llm.context_params.n_ubatch == 16
        assert b.settings["flash_attn"] is True
    s = resolve_settings(n_ctx=64, n_batch=512, n_ubatch=512)
    assert (s["n_batch"], s["n_ubatch"]) == (64, 64)  # capped as llama-cpp-python does


@pytest.mark.parametrize("bad,needle", [({"n_threads": 0}, "n_threads"), ({"flash_attn": "yes"}, "flash_attn"),
                                        ({"n_ubatch": 2.5}, "n_ubatch"), ({"n_gpu_layers": -2}, "n_gpu_layers")])
def test_backend_refuses_bad_settings_before_loading(export, bad, needle):
    with pytest.raises(ConfigError, match=needle):
        LlamaCppBackend(export / "model.gguf", **bad)


# --- the tuner ----------------------------------------------------------------------------------

def test_tune_a_small_grid(export):
    seen = []
    r = tune_llamacpp(export / "model.gguf", options={"n_ctx": 256, "n_threads": 1}, grid={"n_threads": (1, 2)},
                      rounds=1, n_new=8, prompt_tokens=40, progress=seen.append)
    assert isinstance(r, TuneResult) and r.n_new == 8 and r.prompt_tokens == 40 and r.rounds == 1
    assert r.default_options == {"n_threads": 1} and r.fixed_options == {"n_ctx": 256}
    stage = [c for c in r.candidates if c.stage == "n_threads"]
    assert [c.settings for c in stage] == [{"n_threads": 1}, {"n_threads": 2}]  # the current value first
    for c in r.candidates:
        assert c.decode_tok_s > 0 and c.prefill_tok_s > 0 and c.load_s > 0 and len(c.rounds) == 1
        assert c.same_tokens and c.max_prob_diff < 1e-3 and c.eligible  # thread counts do not change the output
    assert r.best_options in [c.settings for c in stage]
    assert r.kept_defaults == (r.best_options == r.default_options)
    if r.kept_defaults:
        assert r.speedup == 1.0 and r.changed == {}
    else:  # confirmed side by side against the starting settings
        assert [c.stage for c in r.candidates[-2:]] == ["confirm", "confirm"]
        assert r.speedup >= 1 + r.margin or r.prefill_speedup >= 1 + r.margin
    d = json.loads(json.dumps(r.to_dict()))
    assert d["best_options"] == r.best_options and len(d["candidates"]) == len(r.candidates)
    assert seen and all("model.gguf" in m for m in seen)


def test_flash_attention_is_measured_and_its_output_difference_recorded(export):
    r = tune_llamacpp(export / "model.gguf", options={"n_ctx": 256, "n_threads": 1},
                      grid={"flash_attn": (False, True)}, rounds=1, n_new=8, prompt_tokens=40, margin=0.5)
    flash = next(c for c in r.candidates if c.settings["flash_attn"])
    assert 0 <= flash.max_prob_diff < 0.02 and flash.eligible  # float reordering, not another computation
    assert isinstance(flash.same_tokens, bool)


def test_nothing_to_try_keeps_the_defaults(export):
    r = tune_llamacpp(export / "model.gguf", options={"n_ctx": 256, "n_batch": 64},
                      grid={"n_ubatch": (128, 512)}, rounds=1, n_new=4, prompt_tokens=16)  # both capped to 64
    assert r.candidates == [] and r.kept_defaults and r.best_options == r.default_options == {"n_ubatch": 64}
    assert "no setting" in r.note


def test_tuner_refuses_bad_arguments(export):
    path = export / "model.gguf"
    with pytest.raises(ConfigError, match="n_cores.*valid"):
        tune_llamacpp(path, grid={"n_cores": (1, 2)})
    with pytest.raises(ConfigError, match="n_new"):
        tune_llamacpp(path, n_new=1)
    with pytest.raises(ConfigError, match="n_ctx=64"):
        tune_llamacpp(path, options={"n_ctx": 64}, n_new=64)
    with pytest.raises(ConfigError, match="flash_attn"):
        tune_llamacpp(path, grid={"flash_attn": ("on",)})
    assert set(TUNE_GRID) <= set(DEFAULTS) and all(TUNE_GRID.values())


# --- bundles ---------------------------------------------------------------------------------------

def test_written_options_reach_the_member_and_nothing_else_changes(bundle_copy):
    file = bundle_copy / "ensemble.json"
    before_text = file.read_text()
    before = json.loads(before_text)
    write_member_options(bundle_copy, {"writer": {"n_threads": 1}})  # a value it already has
    assert file.read_text() == before_text  # byte for byte
    assert write_member_options(bundle_copy, {"coder": {"n_threads": 2, "flash_attn": True, "n_ubatch": 64}}) == file
    after = json.loads(file.read_text())
    coder = next(m for m in after["members"] if m["name"] == "coder")
    assert coder["options"] == {"n_ctx": 256, "n_threads": 2, "flash_attn": True, "n_ubatch": 64}  # merged
    for m in after["members"]:
        m["options"] = next(b["options"] for b in before["members"] if b["name"] == m["name"])
    assert after == before  # everything but coder's options as it was
    assert not [p for p in bundle_copy.iterdir() if p.name.startswith(".")]  # no temporary file left
    with Ensemble.load(bundle_copy) as ens:
        with ens.use("coder") as b:
            assert b.settings["n_threads"] == 2 and b._llm.context_params.n_threads == 2
            assert b._llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            assert b._llm.context_params.n_ubatch == 64
        with ens.use("writer") as b:
            assert b.settings["n_threads"] == 1 and b.settings["flash_attn"] is False
        assert ens.generate("def load(path):", max_tokens=4).text is not None


def test_unknown_member_option_or_value_is_refused_and_nothing_written(bundle_copy, tmp_path):
    file = bundle_copy / "ensemble.json"
    text = file.read_text()
    with pytest.raises(BundleError, match=r"no member 'poet'.*coder, writer"):
        write_member_options(bundle_copy, {"poet": {"n_threads": 2}})
    with pytest.raises(ConfigError, match=r"no option n_cores.*n_threads"):
        write_member_options(bundle_copy, {"coder": {"n_cores": 2}})
    with pytest.raises(ConfigError, match="n_threads must be an integer >= 1"):
        write_member_options(bundle_copy, {"coder": {"n_threads": 0}})
    assert file.read_text() == text
    with pytest.raises(BundleError, match="not a bundle"):
        write_member_options(tmp_path / "nothing", {"coder": {}})


def test_tune_bundle_writes_what_it_chose(bundle_copy):
    t = tune_bundle(bundle_copy, grid={"flash_attn": (False, True)}, fixed={"n_threads": 1}, rounds=1, n_new=4,
                    prompt_tokens=16)
    assert set(t.results) == {"coder", "writer"} and t.skipped == {} and t.written == str(bundle_copy / "ensemble.json")
    spec = json.loads((bundle_copy / "ensemble.json").read_text())
    for m in spec["members"]:
        r = t.results[m["name"]]
        assert r.fixed_options == {"n_ctx": 256, "n_threads": 1}
        assert m["options"] == {"n_ctx": 256, "n_threads": 1, **r.best_options}
    rows = table_rows([t])
    assert rows[0][:3] == ["bundle", "member", "settings"] and {r[1] for r in rows[1:]} == {"coder", "writer"}
    json.dumps(t.to_dict())


def test_cli_bench_tune_writes_the_options_and_tune_json(bundle_copy, tmp_path):
    out = tmp_path / "rep"
    args = ["bench", str(bundle_copy), "--tune", "--quick", "--rounds", "1", "--max-tokens", "4", "--prompts", "1",
            "--mc-items", "1", "--max-bytes", "300", "--threads", "1", "--no-plots", "--quiet", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "decode tok/s default -> tuned" in res.output and "| configuration" in res.output
    tune = json.loads((out / "tune.json").read_text())
    (entry,) = tune["bundles"]
    assert set(entry["members"]) == {"coder", "writer"} and "environment" in tune
    spec = json.loads((bundle_copy / "ensemble.json").read_text())
    for m in spec["members"]:
        best = entry["members"][m["name"]]["best_options"]
        assert m["options"] == {"n_ctx": 256, **best, "n_threads": 1}  # --threads stays fixed
        assert set(best) == set(TUNE_GRID) - {"n_threads"}
    assert (out / "report.json").is_file()


def _one_line_error(res, *needles):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_tune_refuses_a_target_that_is_not_a_bundle(bundle_copy, export, tmp_path):
    text = (bundle_copy / "ensemble.json").read_text()
    res = CliRunner().invoke(cli, ["bench", str(bundle_copy), str(export), "--tune", "--out", str(tmp_path / "o")])
    _one_line_error(res, str(export), "not a bundle")
    assert (bundle_copy / "ensemble.json").read_text() == text and not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    res = CliRunner().invoke(cli, ["bench", str(bundle_copy), "--tune", "--out", str(tmp_path / "full")])
    _one_line_error(res, "not empty", "--overwrite")  # refused before tuning, not after
    assert (bundle_copy / "ensemble.json").read_text() == text
    assert "--tune" in CliRunner().invoke(cli, ["bench", "--help"]).output


def test_importing_tune_leaves_torch_unimported():
    code = "import sys, edge_downscale.runtime.tune\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
