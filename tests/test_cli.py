import json

import pytest
from click.testing import CliRunner

from edge_downscale.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_every_command_with_a_line_of_help():
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("models", "data", "eval"):
        assert cmd in res.output
    sub = run("models", "--help").output
    assert "list" in sub and "pull" in sub and "info" in sub


def test_models_list_shows_real_models_and_hides_test_ones():
    res = run("models", "list", "--json")
    names = {r["name"] for r in json.loads(res.output)}
    assert {"smollm2-135m", "gemma3-270m"} <= names and "tiny-llama" not in names
    assert "tiny-llama" in {r["name"] for r in json.loads(run("models", "list", "--all", "--json").output)}


@pytest.mark.parametrize("args", [("models", "info", "no-such-model"), ("models", "pull", "nope"),
                                  ("eval", "no-such-model", "--domains", "docs")])
def test_bad_model_is_one_line_error_not_traceback(args):
    res = run(*args)
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown model") and "smollm2-135m" in lines[0]
    assert "Traceback" not in res.output


def test_non_gguf_file_is_one_line_error(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_text("hello")
    res = run("models", "info", str(bogus))
    assert res.exit_code == 2 and "not a GGUF file" in res.output and "Traceback" not in res.output


def test_eval_bad_domain_and_bad_window_are_one_line_errors(tiny_model_dir):
    res = run("eval", str(tiny_model_dir), "--domains", "klingon")
    assert res.exit_code == 2 and "unknown domain" in res.output and "code, docs, legal" in res.output
    res = run("eval", str(tiny_model_dir), "--stride", "0")
    assert res.exit_code == 2 and "stride" in res.output


def test_data_build_then_eval_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir):
    import pydoc_data.topics as topics

    src = tmp_path / "texts"
    src.mkdir()
    for key in sorted(topics.topics)[:30]:
        (src / f"{key}.txt").write_text(topics.topics[key], encoding="utf-8")
    (src / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 20)
    corpus = tmp_path / "corpus"
    res = run("data", "build", str(src), "--out", str(corpus), "--quiet")
    assert res.exit_code == 0, res.output
    info = json.loads(run("data", "info", str(corpus)).output)
    assert info["skipped"]["non_utf8"] == 1
    assert sum(s["documents"] for s in info["splits"].values()) == 30

    out = tmp_path / "eval.json"
    res = run("eval", str(tiny_model_dir), "--domains", str(corpus), "--split", "validation",
              "--max-bytes", "3000", "--mc-items", "4", "--json", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    r = data["domains"][str(corpus)]
    # a random model with a 1024-token vocabulary is close to uniform: about log2(1024)/bytes-per-token
    assert 1.0 < r["bpb"]["bits_per_byte"] < 12.0
    assert r["bpb"]["n_bytes"] <= 3000 and r["mc"]["n_items"] == 4
    assert "bits/byte" in res.output


def test_models_info_describes_local_directories(tmp_path, tiny_model_dir):
    info = json.loads(run("models", "info", str(tiny_model_dir)).output)
    assert info["format"] == "hf" and info["intermediate_size"] == 256
    onnx_dir = tmp_path / "exported"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"\x08\x07")
    assert json.loads(run("models", "info", str(onnx_dir)).output)["format"] == "onnx"
    res = run("models", "info", str(tmp_path / "exported" / "model.onnx"))
    assert res.exit_code == 2 and "not a model" in res.output


def test_importing_the_cli_stays_light():
    import subprocess
    import sys

    code = "import sys, edge_downscale.cli; print([m for m in ('numpy', 'torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _all_params():
    import click

    def walk(cmd, path):
        for p in cmd.params:
            yield path, p
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")

    yield from walk(cli, "edge-downscale")


def test_config_defaults_resolve_and_are_shown_in_help():
    import dataclasses

    from edge_downscale.cli._options import _LazyDefault
    from edge_downscale.runtime.generation import GenerationConfig

    lazy = [(path, p) for path, p in _all_params() if isinstance(p.default, _LazyDefault)]
    assert lazy
    for path, p in lazy:
        p.default()  # the field exists (a typo would raise here, not in front of a user)
    assert "[default: 128]" in " ".join(run("run", "--help").output.split())
    assert "[default: 24000]" in " ".join(run("eval", "--help").output.split())
    # every GenerationConfig field has its flag on `run` and `chat`, with the config's default
    for cmd in ("run", "chat"):
        params = {p.name: p for path, p in _all_params() if path == f"edge-downscale {cmd}"}
        for f in dataclasses.fields(GenerationConfig):
            assert params[f.name].default() == f.default


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "edge_downscale.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "bundle" in res.stdout
