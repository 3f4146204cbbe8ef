"""The environment record in every result file, and the check that installed versions match the lock."""
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

from edge_downscale import _env
from edge_downscale._io import write_result

ROOT = Path(__file__).resolve().parents[1]


def test_result_files_carry_versions_cpu_threads_and_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    path = tmp_path / "r.json"
    write_result(path, {"rows": [1, 2]})
    data = json.loads(path.read_text())
    env = data["environment"]
    assert data["rows"] == [1, 2]
    assert env["libraries"]["numpy"] == importlib.metadata.version("numpy")
    assert env["cpu"]["logical_cores"] >= 1 and env["cpu"]["model"]
    assert env["threads"]["OMP_NUM_THREADS"] == "3"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI's clone is one)
        assert env["git"]["commit"] == head.stdout.strip()
    assert "all.txt" in env["locks"]


def test_read_pins_takes_hashed_lock_lines_and_canonical_names(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# a comment\nScikit_Learn==1.2.3 \\\n    --hash=sha256:00\n    # via x\n"
                    "numpy==2.0.0 ; python_version >= '3.10'\n-c other.txt\nplain-name\n")
    assert _env.read_pins(lock) == {"scikit-learn": "1.2.3", "numpy": "2.0.0"}


def test_lock_check_names_wrong_and_missing_versions():
    numpy = importlib.metadata.version("numpy")
    assert _env.lock_mismatches({"numpy": numpy}) == []
    bad = _env.lock_mismatches({"numpy": "0.0.1", "no-such-dist-xyz": "1.0"})
    assert bad == [f"no-such-dist-xyz==1.0 is not installed", f"numpy is {numpy}, the lock says 0.0.1"]
    assert _env._matches("2.13.0+cpu", "2.13.0") and not _env._matches("2.13.0", "2.13.0+cpu")


def test_lock_check_command_exits_1_with_a_one_line_error(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==0.0.1 \\\n    --hash=sha256:00\n")
    res = subprocess.run([sys.executable, "-m", "edge_downscale._env", str(lock)], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.startswith("error: numpy is ") and "Traceback" not in res.stderr
    missing = subprocess.run([sys.executable, "-m", "edge_downscale._env", str(tmp_path / "nope.txt")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such lock file" in missing.stderr


def test_the_make_environment_is_the_locked_one():
    """What `make` installed is exactly requirements/all.txt (CI's own install is checked here too)."""
    pins = _env.read_pins(ROOT / "requirements" / "all.txt")
    assert {"numpy", "onnxruntime", "onnx", "transformers", "optimum-onnx"} <= set(pins)
    assert _env.lock_mismatches(pins) == []


def test_every_benchmark_writes_its_results_with_the_environment():
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        text = script.read_text()
        if script.name.startswith("_"):
            continue
        assert re.search(r"\bwrite_result\(", text), f"{script.name} writes no result with write_result"
        assert not re.search(r"write_json_atomic\((args\.(out|json)|out),", text), script.name
