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
