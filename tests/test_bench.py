"""On-device benchmark on tiny exported models: configurations, report files, cross-checks, refusals, CLI."""
import json
import math
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_downscale.bench import BenchConfig, plan_configurations, run_bench, split_pieces, strategy_plan
from edge_downscale.bundle import BundleConfig, build_bundle
from edge_downscale.cli import cli
from edge_downscale.errors import BenchError, BundleError, ConfigError
from edge_downscale.eval import bits_per_byte, build_items, score_items, write_eval_data, write_eval_file
from edge_downscale.runtime import Ensemble, open_artifact
from edge_downscale.runtime.roofline import memory_bandwidth, roofline_tok_s, weight_bytes_per_token

FAST = dict(rounds=2, warmup=1, n_prompts=2, max_tokens=6, mc_items=3, max_bytes=1500, piece_chars=400,
            bandwidth_mib=64)


def _chunks(text: str, size: int = 300) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size) if text[i:i + size].strip()]


@pytest.fixture(scope="module")
def eval_data():
    """Real held-out text: stdlib Python source (code) and pydoc's reference prose (docs)."""
    import pydoc_data.topics as topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = _chunks((stdlib / "json/decoder.py").read_text())[:12]
    docs = _chunks("\n".join(topics.topics[k] for k in sorted(topics.topics)[:6]))[:12]
    return {d: (t, build_items(t, n_items=3, context_chars=120, continuation_chars=40, n_choices=3))
            for d, t in {"code": code, "docs": docs}.items()}


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory):
    """Two different tiny models (seeds 0 and 1) exported to GGUF, each with its manifest."""
    from edge_downscale.export import ExportConfig, export_model
    from edge_downscale.models.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("bench-exports")
    other = build_tiny_llama(root / "tiny-seed1", seed=1)
    export_model(str(tiny_model_dir), ExportConfig(out_dir=root / "a", format="gguf", quants="f32"), log=lambda m: None)
    export_model(str(other), ExportConfig(out_dir=root / "b", format="gguf", quants="q8_0"), log=lambda m: None)
    return {"coder": root / "a" / "gguf-f32", "writer": root / "b" / "gguf-q8_0"}


def _members(exports):
    return [{"name": "coder", "path": exports["coder"], "domain": "code", "options": {"n_ctx": 256, "n_threads": 1}},
            {"name": "writer", "path": exports["writer"], "domain": "docs", "options": {"n_ctx": 256, "n_threads": 1}}]


@pytest.fixture(scope="module")
def bundle(exports, eval_data, tmp_path_factory):
    """A route bundle carrying eval/<domain>.jsonl, hashed into ensemble.json ``files``."""
    root = tmp_path_factory.mktemp("bench-bundle")
    files = write_eval_data(root / "eval", eval_data)
    return build_bundle(BundleConfig(out=root / "bundle", members=_members(exports), strategy="route",
                                     files={f"eval/{d}.jsonl": str(p) for d, p in files.items()}),
                        router_texts={d: t for d, (t, _) in eval_data.items()}, log=lambda m: None)


@pytest.fixture(scope="module")
def report(bundle, exports, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out") / "report"
    baseline = exports["coder"] / "model.gguf"  # a GGUF file alone
    return run_bench([bundle], BenchConfig.quick(**FAST, threads=1), baselines=[("base", baseline)], out=out,
                     progress=False), out


def test_one_record_per_configuration_with_finite_metrics(report):
    rep, out = report
    names = [r["name"] for r in rep["records"]]
    assert names == ["base", "bundle/coder", "bundle/writer", "bundle[route]", "bundle[vote]", "bundle[mixture]"]
    assert [s["strategy"] for s in rep["bench"]["skipped"]] == ["cascade"]  # no calibrated thresholds
    for r in rep["records"]:
        for key in ("bpb_mixed", "mc_acc_mixed", "ttft_s", "throughput_tok_s", "j_per_token", "peak_rss_mb", "size_mb"):
            assert r[key] is not None and math.isfinite(r[key]) and r[key] >= 0, (r["name"], key, r[key])
        assert r["energy_source"] in ("estimated", "rapl", "nvml")
        assert len(r["rounds"]) == 2 and r["answer_tokens"] > 0
        assert set(r["domains"]) == {"code", "docs"}
        assert r["peak_rss_mb"] >= r["rss_before_load_mb"] > 0
        if r["streams"]:
            assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["itl_p95_ms"] >= r["itl_p50_ms"] >= 0
    vote = next(r for r in rep["records"] if r["name"] == "bundle[vote]")
    assert not vote["streams"] and vote["decode_tok_s"] is None  # vote answers only when finished
    sizes = {r["name"]: r["size_mb"] for r in rep["records"]}
    assert sizes["bundle[vote]"] == pytest.approx(sizes["bundle/coder"] + sizes["bundle/writer"])
    mixture = next(r for r in rep["records"] if r["name"] == "bundle[mixture]")  # router + 2 members
    assert mixture["streams"] and sizes["bundle[mixture]"] == pytest.approx(sizes["bundle[vote]"])


def test_ratios_are_to_the_first_baseline(report):
    rep, _ = report
    assert rep["bench"]["reference"] == "base"
    base, coder = rep["records"][0], rep["records"][1]
    assert all(v == 1.0 for k, v in base["ratios"].items() if v is not None)
    assert base["ratios"]["bpb_mixed"] == 1.0 and base["ratios"]["j_per_token"] == 1.0
    for r in rep["records"]:
        assert r["ratios"]["bpb_mixed"] == pytest.approx(r["bpb_mixed"] / base["bpb_mixed"])
        assert r["ratios"]["size_mb"] == pytest.approx(r["size_mb"] / base["size_mb"])
    # the baseline is the coder member's own GGUF: same quality, measured separately
    assert coder["bpb_mixed"] == pytest.approx(base["bpb_mixed"], rel=1e-6)


def test_per_domain_bpb_and_accuracy_match_the_eval_functions_on_the_member(report, bundle, eval_data):
    rep, _ = report
    recs = {r["name"]: r for r in rep["records"]}
    cfg = rep["bench"]["config"]
    for name in ("coder", "writer"):
        with open_artifact(bundle / "members" / name, n_ctx=256, n_threads=1) as b:
            for domain, (texts, items) in eval_data.items():
                pieces = split_pieces(texts, cfg["piece_chars"], cfg["max_bytes"])
                direct = bits_per_byte(b, pieces, max_length=256)
                got = recs[f"bundle/{name}"]["domains"][domain]
                assert got["bpb"] == pytest.approx(direct.bits_per_byte, rel=1e-9)
                assert got["n_bytes"] == direct.n_bytes == rep["bench"]["eval_data"]["domains"][domain]["bytes"]
                mc = score_items(b, items[: cfg["mc_items"]], max_length=256)
                assert got["mc_acc"] == pytest.approx(mc.accuracy)
                assert got["mc_item_correct"] == list(mc.item_correct)  # per item, for paired tests
    # two different models: the cross-check could fail
    assert recs["bundle/coder"]["bpb_mixed"] != pytest.approx(recs["bundle/writer"]["bpb_mixed"], rel=1e-4)


def test_report_files(report):
    rep, out = report
    data = json.loads((out / "report.json").read_text())
    assert data["environment"]["cpu"]["model"] and "gpu" in data["environment"]
    assert data["bench"]["config"]["profile"] == "quick" and len(data["records"]) == 6
    md = (out / "report.md").read_text()
    assert "| configuration" in md and "bundle[vote]" in md and "## Notes" in md and "Not measured" in md
    pytest.importorskip("matplotlib")
    assert (out / "quality_vs_energy.png").stat().st_size > 1000 and (out / "bpb_by_domain.png").is_file()


def test_strategy_plan_includes_a_calibrated_cascade(exports, eval_data, tmp_path):
    texts = [t for d in eval_data.values() for t in d[0]][:8]
    calibration = {"prompts": [t[:80] for t in texts], "texts": texts,
                   "choices": [(t[:100], [t[100:140], u[100:140]]) for t, u in zip(texts, texts[1:] + texts[:1])]}
    cascade = build_bundle(BundleConfig(out=tmp_path / "c", members=_members(exports), strategy="cascade"),
                           calibration=calibration, log=lambda m: None)
    plan, skipped = strategy_plan(Ensemble.load(cascade))
    assert list(plan) == ["cascade", "vote"] and plan["cascade"]["thresholds"] and "router" in skipped["route"]
    spec = json.loads((cascade / "ensemble.json").read_text())
    spec["strategy_options"]["thresholds"].pop("generate")
    (cascade / "ensemble.json").write_text(json.dumps(spec))
    plan, skipped = strategy_plan(Ensemble.load(cascade))
    assert "cascade" not in plan and "generate" in skipped["cascade"]


def test_cli_end_to_end(bundle, exports, tmp_path):
    out = tmp_path / "rep"
    args = ["bench", str(bundle), "--baseline", str(exports["writer"]), "--quick", "--rounds", "1", "--max-tokens", "4",
            "--mc-items", "2", "--max-bytes", "800", "--threads", "1", "--no-plots", "--quiet", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "| configuration" in res.output and "bundle[route]" in res.output
    data = json.loads((out / "report.json").read_text())
    cfg = data["bench"]["config"]
    assert (cfg["rounds"], cfg["max_tokens"], cfg["profile"], cfg["n_prompts"]) == (1, 4, "quick", 2)  # explicit flags win
    assert data["bench"]["reference"] == "gguf-q8_0" and data["bench"]["plots"] == []
    assert not list(out.glob("*.png"))
    res = CliRunner().invoke(cli, args)  # the report is there: refused
    assert res.exit_code == 2 and "not empty" in res.output and "--overwrite" in res.output


def _one_line_error(res, *needles):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_tampered_eval_file_and_member_are_refused(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    eval_file = copy / "eval" / "code.jsonl"
    eval_file.write_text(eval_file.read_text().replace("def", "fed", 1))
    res = CliRunner().invoke(cli, ["bench", str(copy), "--out", str(tmp_path / "o")])
    _one_line_error(res, "code.jsonl", "does not match the hash")
    assert not (tmp_path / "o").exists()

    copy2 = tmp_path / "b2"
    shutil.copytree(bundle, copy2)
    gguf = copy2 / "members" / "coder" / "model.gguf"
    data = bytearray(gguf.read_bytes())
    data[-5] ^= 0xFF
    gguf.unlink()
    gguf.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="coder.*does not match its manifest"):
        plan_configurations([copy2])
    _one_line_error(CliRunner().invoke(cli, ["bench", str(copy2), "--out", str(tmp_path / "o")]), "coder", "manifest")


def test_labelled_targets_name_their_rows(bundle, exports):
    configs, _, _ = plan_configurations([("ours", bundle), ("plain-coder", exports["coder"])],
                                        baselines=[("base", exports["coder"])])
    names = [c.name for c in configs]
    assert names[0] == "base" and "plain-coder" in names
    assert "ours/coder" in names and any(n.startswith("ours[") for n in names)
    assert not any(n.startswith(Path(bundle).name) for n in names)


def test_missing_baseline_target_and_eval_data(bundle, exports, tmp_path):
    res = CliRunner().invoke(cli, ["bench", str(bundle), "--baseline", "no-such-model", "--out", str(tmp_path / "o")])
    _one_line_error(res, "no-such-model", "smollm2-135m")
    res = CliRunner().invoke(cli, ["bench", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    _one_line_error(res, "nope", "no such bundle or model")
    # a model alone carries no held-out data
    res = CliRunner().invoke(cli, ["bench", str(exports["coder"]), "--out", str(tmp_path / "o")])
    _one_line_error(res, "edge-downscale build", "--eval-data")
    empty = tmp_path / "evaldir"
    empty.mkdir()
    write_eval_file(empty / "code.jsonl", [], [])
    res = CliRunner().invoke(cli, ["bench", str(exports["coder"]), "--eval-data", str(empty), "--out", str(tmp_path / "o")])
    _one_line_error(res, "code.jsonl", "no text")
    assert not (tmp_path / "o").exists()


def test_split_pieces_cover_the_text_at_whitespace():
    texts = ["alpha beta gamma " * 40, "x" * 90, "short"]
    pieces = split_pieces(texts, 64, 10_000)
    assert "".join(pieces) == "".join(texts) and all(len(p) <= 64 for p in pieces)
    assert all(p.endswith(" ") for p in pieces[:5])  # cut after whitespace, not inside a word
    capped = split_pieces(texts, 64, 200)
    assert sum(len(p.encode()) for p in capped) <= 200 and capped == pieces[: len(capped)]


def test_bench_config_validates_and_the_cli_defaults_come_from_it():
    from edge_downscale.bench import DEFAULT_OUT, QUICK
    from edge_downscale.bench.report import pareto_front
    from edge_downscale.cli import bench as cli_bench

    assert BenchConfig.from_json(BenchConfig().to_json()) == BenchConfig()
    quick = BenchConfig.quick(rounds=3)
    assert quick.rounds == 3 and quick.profile == "quick" and quick.max_bytes == QUICK["max_bytes"] < BenchConfig().max_bytes
    for bad in ({"rounds": 0}, {"threads": 0}, {"max_tokens": True}, {"profile": "fast"}, {"timeout_s": -1}):
        with pytest.raises(ConfigError):
            BenchConfig(**bad)
    assert cli_bench.DEFAULT_OUT == DEFAULT_OUT
    params = {p.name: p for p in cli_bench.bench_cmd.params}
    for name in cli_bench._FIELDS:
        assert params[name].default() == getattr(BenchConfig(), name)
    assert pareto_front([(1, 3), (2, 2), (3, 3), (0.5, 4)]) == [3, 0, 1]
    with pytest.raises(BenchError, match="nothing to measure"):
        plan_configurations([])


def test_importing_bench_leaves_torch_unimported():
    code = ("import sys, edge_downscale.bench, edge_downscale.bench.worker, edge_downscale.bench.report\n"
            "print(','.join(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"bench imported: {out.stdout.strip()}"


def test_without_matplotlib_the_report_says_so_and_skips_plots(report, tmp_path, monkeypatch, capsys):
    import copy

    from edge_downscale.bench.report import write_report

    rep = copy.deepcopy(report[0])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    write_report(tmp_path / "r", rep)
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert "matplotlib is not installed" in (tmp_path / "r" / "report.md").read_text()
    assert not list((tmp_path / "r").glob("*.png")) and rep["bench"]["plots"] == []


# --- roofline -------------------------------------------------------------------------------------

def _write_gguf(path: Path, untied: bool) -> Path:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.ones((32, 8), np.float32))  # 1024 bytes
    if untied:
        w.add_tensor("output.weight", np.ones((32, 8), np.float16))  # 512 bytes
    q8 = gguf.quants.quantize(np.ones((8, 32), np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # 8 blocks x 34 = 272
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))  # 32 bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_bytes_per_token_leave_out_only_an_untied_input_embedding(tmp_path):
    assert weight_bytes_per_token(_write_gguf(tmp_path / "untied.gguf", untied=True)) == 512 + 272 + 32
    (tmp_path / "tied").mkdir()  # an export directory; tied: token_embd is the LM head, read in full
    _write_gguf(tmp_path / "tied" / "model.gguf", untied=False)
    assert weight_bytes_per_token(tmp_path / "tied") == 1024 + 272 + 32


def _onnx_lm(tied: bool):
    """ids -> Gather(embed) -> MatMul(lm head) + bias -> logits; and a GatherBlockQuantized table on the side."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    embed = numpy_helper.from_array(np.ones((16, 4), np.float32), "embed")  # 256 bytes, gathered
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [16], [0.5] * 16)  # 64 bytes (typed field, no raw_data)
    qtable = numpy_helper.from_array(np.ones((16, 2), np.uint8), "qtable")  # 32 bytes, gathered
    scales = numpy_helper.from_array(np.ones((16, 1), np.float16), "scales")  # 32 bytes, gathered (input 2)
    nodes = [helper.make_node("Gather", ["embed", "ids"], ["h"]),
             helper.make_node("GatherBlockQuantized", ["qtable", "ids", "scales"], ["side"], domain="com.microsoft",
                              block_size=16, bits=4),
             helper.make_node("MatMul", ["h", "head"], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["logits"])]
    inits = [embed, bias, qtable, scales]
    if tied:
        nodes.insert(1, helper.make_node("Transpose", ["embed"], ["head"], perm=[1, 0]))
    else:
        inits.append(numpy_helper.from_array(np.ones((4, 16), np.float16), "head"))  # 128 bytes
    graph = helper.make_graph(nodes, "lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 16]),
                               helper.make_tensor_value_info("side", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("tied, expected", [(False, 128 + 64), (True, 256 + 64)])
def test_onnx_bytes_per_token_from_the_graph_and_external_data_entries(tmp_path, tied, expected):
    onnx = pytest.importorskip("onnx")
    inline = tmp_path / "inline"
    inline.mkdir()
    onnx.save_model(_onnx_lm(tied), str(inline / "model.onnx"))
    assert weight_bytes_per_token(inline) == expected
    for data_name in ("model.onnx.data", "model.onnx_data"):
        out = tmp_path / data_name
        out.mkdir()
        onnx.save_model(_onnx_lm(tied), str(out / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=0)
        model = onnx.load(str(out / "model.onnx"), load_external_data=False)
        external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        assert external == {t.name for t in model.graph.initializer} - {"bias"}  # the typed-field one stays inline
        assert weight_bytes_per_token(out / "model.onnx") == expected
        (out / data_name).unlink()  # the sizes come from the graph's entries: the weights are never read
        assert weight_bytes_per_token(out) == expected


def test_bytes_per_token_of_other_files_is_a_format_error_and_unknown_in_the_bench(tmp_path):
    from edge_downscale.bench.targets import token_bytes
    from edge_downscale.errors import ModelFormatError

    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 64)
    with pytest.raises(ModelFormatError):
        weight_bytes_per_token(other)
    assert token_bytes(other) is None and token_bytes(tmp_path) is None  # a directory with no model file
    cut = _write_gguf(tmp_path / "cut.gguf", untied=True)
    cut.write_bytes(cut.read_bytes()[:200])  # inside the tensor table
    assert token_bytes(cut) is None


def test_memory_bandwidth_and_the_roofline():
    for threads in (1, 2):
        bw = memory_bandwidth(threads, mib=8, repeats=2)
        assert math.isfinite(bw) and bw > 0
    with pytest.raises(ConfigError):
        memory_bandwidth(0)
    assert roofline_tok_s(1_000, 2e9) == pytest.approx(2e6)
    with pytest.raises(ConfigError):
        roofline_tok_s(0, 2e9)


def test_roofline_columns_per_configuration(report, bundle):
    rep, out = report
    bw = rep["device"]["bandwidth_gb_s"]
    assert list(bw) == ["1"] and rep["device"]["roofline_threads"] == 1  # threads=1: one measurement
    assert math.isfinite(bw["1"]) and bw["1"] > 0
    members = {m: weight_bytes_per_token(bundle / "members" / m) for m in ("coder", "writer")}
    assert members["coder"] != members["writer"] and all(b > 0 for b in members.values())  # f32 vs q8_0
    recs = {r["name"]: r for r in rep["records"]}
    assert recs["base"]["bytes_per_token"] == members["coder"]  # the coder's own GGUF
    for name in ("coder", "writer"):
        assert recs[f"bundle/{name}"]["bytes_per_token"] == members[name]
    assert recs["bundle[vote]"]["bytes_per_token"] == sum(members.values())  # every member generates
    for r in rep["records"]:
        for m, raw in zip(r["per_round"], r["rounds"]):
            if r["kind"] == "ensemble":  # the members that decoded this round's answer
                assert m["bytes_per_token"] == sum(members[d] for d in raw["decoders"]), r["name"]
            else:
                assert raw["decoders"] is None and m["bytes_per_token"] == r["bytes_per_token"]
            assert m["roofline_tok_s"] == pytest.approx(bw["1"] * 1e9 / m["bytes_per_token"])
            if r["streams"]:
                assert m["decode_share"] == pytest.approx(m["decode_tok_s"] / m["roofline_tok_s"])
            else:
                assert m["decode_share"] is None
        assert r["roofline_tok_s"] > 0
    assert len(recs["bundle[route]"]["rounds"][0]["decoders"]) == 1
    assert set(recs["bundle[vote]"]["rounds"][0]["decoders"]) == set(members)
    md = (out / "report.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| configuration"))
    assert "| roofline tok/s |" in head and "| % of roofline |" in head
    assert "Roofline (Williams" in md and "No roofline" not in md


def test_roofline_columns_show_a_dash_when_unknown(report):
    import copy

    from edge_downscale.bench.report import table_rows

    recs = copy.deepcopy(report[0]["records"][:2])
    recs[1].update(bytes_per_token=None, roofline_tok_s=None, decode_share=None)
    rows = table_rows(recs)
    i, j = rows[0].index("roofline tok/s"), rows[0].index("% of roofline")
    assert rows[1][i] != "-" and rows[1][j].endswith("%")
    assert rows[2][i] == "-" and rows[2][j] == "-"


def _rounds(joules_by_prompt: dict[int, list[float]], tokens: int = 10) -> list[dict]:
    return [{"prompt": p, "joules": j, "answer_tokens": tokens} for p, js in joules_by_prompt.items() for j in js]


def test_energy_ratio_interval_brackets_the_total_ratio_and_narrows_with_rounds():
    from edge_downscale.bench.summary import energy_ratio_interval

    rng = np.random.default_rng(1)
    same = _rounds({0: [2.0, 2.0], 1: [5.0, 5.0]})
    assert energy_ratio_interval(same, same) == pytest.approx([1.0, 1.0])
    double = _rounds({0: [4.0, 4.0], 1: [10.0, 10.0]})
    assert energy_ratio_interval(double, same) == pytest.approx([2.0, 2.0])

    def noisy(n: int, scale: float) -> list[dict]:  # prompt 1 costs 3x prompt 0; 5% noise a round
        return _rounds({p: list(scale * base * (1 + 0.05 * rng.standard_normal(n))) for p, base in ((0, 1.0), (1, 3.0))})

    few = energy_ratio_interval(noisy(3, 0.8), noisy(3, 1.0))
    many = energy_ratio_interval(noisy(48, 0.8), noisy(48, 1.0))
    assert few[0] < many[0] <= 0.8 <= many[1] < few[1]
    assert many[1] - many[0] < 0.05
    assert energy_ratio_interval(same, [dict(same[0], joules=None)]) is None
    assert energy_ratio_interval([], same) is None


def test_report_gives_the_energy_interval_against_the_reference(report):
    rep, out = report
    ref = next(r for r in rep["records"] if r["name"] == rep["bench"]["reference"])
    for r in rep["records"]:
        lo, hi = r["j_per_token_ratio_95"]
        total = r["j_per_token"] / ref["j_per_token"]  # the J/token column's ratio
        assert 0 < lo <= total * (1 + 1e-9) and total <= hi * (1 + 1e-9)
    assert "total J/token, 95%" in (out / "report.md").read_text()
