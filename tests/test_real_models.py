"""The real pretrained model (SmolLM2-135M from its PyPI wheel) through both backends. CI runs these."""
import inspect
import json.decoder

import pytest

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def heldout_docs_text():
    """Held-out (test split) reference prose of the `docs` demo domain, ~8 KB."""
    from edge_downscale.config import EvalConfig
    from edge_downscale.data import heldout_texts

    texts, _ = heldout_texts("docs", EvalConfig(max_bytes=8000))
    return texts


@pytest.fixture(scope="module")
def torch_smollm2(smollm2_gguf):
    from edge_downscale.models.torch_backend import TorchBackend

    return TorchBackend.from_ref(str(smollm2_gguf), context_length=512)


@pytest.fixture(scope="module")
def llama_smollm2(smollm2_gguf):
    from edge_downscale.runtime.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(smollm2_gguf, n_ctx=512)
    yield backend
    backend.close()


def test_smollm2_pull_is_verified_and_dequantised_for_torch(smollm2_gguf, torch_smollm2):
    from edge_downscale.runtime.gguf_file import check_gguf

    info = check_gguf(smollm2_gguf)
    assert info.architecture == "llama" and info.file_type == "Q4_1"
    assert torch_smollm2.info["dequantized"] is True and "dequantised" in torch_smollm2.info["note"]
    assert 134_000_000 < torch_smollm2.info["n_params"] < 135_000_000


def test_bits_per_byte_agrees_between_torch_and_llama_cpp(torch_smollm2, llama_smollm2, heldout_docs_text):
    from edge_downscale.eval import bits_per_byte

    a = bits_per_byte(torch_smollm2, heldout_docs_text, max_length=512, stride=256)
    b = bits_per_byte(llama_smollm2, heldout_docs_text, max_length=512, stride=256)
    assert a.n_bytes == b.n_bytes > 4000
    assert 0.5 < a.bits_per_byte < 1.5  # a real model on English prose, not a random one (~11 bits/byte)
    assert abs(a.bits_per_byte - b.bits_per_byte) / a.bits_per_byte < 0.02, (a.bits_per_byte, b.bits_per_byte)


def test_real_model_on_python_source(llama_smollm2):
    from edge_downscale.eval import bits_per_byte

    text = open(inspect.getsourcefile(json.decoder), encoding="utf-8").read()[:6000]
    res = bits_per_byte(llama_smollm2, [text], max_length=512, stride=256)
    assert res.n_windows > 2  # longer than one window
    assert 0.6 < res.bits_per_byte < 1.2


def test_multiple_choice_is_well_above_chance(llama_smollm2):
    from edge_downscale.config import EvalConfig
    from edge_downscale.data import heldout_by_domain
    from edge_downscale.eval import evaluate

    config = EvalConfig(max_bytes=2000, mc_items=30)
    res = evaluate(llama_smollm2, heldout_by_domain(["docs"], config), config, progress=False)
    mc = res["domains"]["docs"]["mc"]
    assert mc["n_items"] == 30
    assert mc["accuracy"] >= 0.5, mc  # chance is 0.25


def test_cli_eval_end_to_end_writes_json(tmp_path, smollm2_gguf):
    from click.testing import CliRunner

    from edge_downscale.cli import cli

    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["eval", "smollm2-135m", "--backend", "llamacpp", "--domains", "docs,legal",
                                   "--max-bytes", "3000", "--mc-items", "5", "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "bits/byte" in res.output and "legal" in res.output
    data = __import__("json").loads(out.read_text())
    assert set(data["domains"]) == {"docs", "legal"} and data["mixed_bpb"] > 0


def test_runtime_generation_matches_raw_llama_cpp_greedy(smollm2_gguf, llama_smollm2):
    """Our decode loop (numpy sampling, our KV handling) gives llama-cpp-python's own greedy tokens."""
    import llama_cpp

    prompt = inspect.getsource(json.decoder)[:600]
    ours = llama_smollm2.generate(prompt, max_tokens=24, meter=None)
    ids = llama_smollm2.prefix_ids + llama_smollm2.tokenize(prompt)
    raw = llama_cpp.Llama(model_path=str(smollm2_gguf), n_ctx=512, verbose=False, seed=0)
    try:
        theirs = []
        for tok in raw.generate(ids, temp=0.0, top_k=1, reset=True):
            if tok in llama_smollm2.end_ids or len(theirs) == 24:
                break
            theirs.append(tok)
    finally:
        raw.close()
    assert ours.tokens == theirs and ours.usage.completion_tokens == len(theirs)
    assert ours.text == llama_smollm2.detokenize(theirs)


def test_smollm2_chat_template_and_stop_strings(llama_smollm2):
    """The instruct model's own ChatML template is used, ends on <|im_end|>, and stop strings cut."""
    messages = [{"role": "user", "content": "Write one word: hello."}]
    answer = llama_smollm2.generate(messages, max_tokens=48, meter=None)
    assert answer.template == "model" and "<|im_start|>" not in answer.text
    ids, _, _ = llama_smollm2.prompt_ids(messages, 48)
    assert llama_smollm2.detokenize(ids).rstrip().endswith("assistant")  # generation prompt appended
    cut = llama_smollm2.generate("1, 2, 3, 4, 5,", max_tokens=24, stop=[" 8"], meter=None)
    assert " 8" not in cut.text and cut.finish_reason == "stop"


def test_recovery_training_on_smollm2_pruned_student(tmp_path, smollm2_gguf):
    """The real chain at a tiny budget: prune SmolLM2 30% (random rows), distil from the dense teacher
    with the cached top-k teacher, and check the student learned on held-out text of its domain."""
    from edge_downscale.compress.distill import distill
    from edge_downscale.compress.prune import PruneConfig, prune_to_dirs
    from edge_downscale.compress.train.checkpoints import read_log
    from edge_downscale.compress.train.config import DistillConfig, TrainConfig

    prune_to_dirs(str(smollm2_gguf), PruneConfig(out_dir=tmp_path / "pruned", ratios=(0.3,), method="random"),
                  progress=False)
    config = TrainConfig(token_budget=6 * 4 * 64, seq_len=64, batch_size=4, lr=5e-4, eval_tokens=1040,
                         checkpoint_every=0)
    summary = distill(str(smollm2_gguf), str(tmp_path / "pruned" / "r0.30"), "docs", tmp_path / "student",
                      config=config, kd=DistillConfig(cache_topk=32), progress=False)
    log = read_log(tmp_path / "student")
    start = next(r for r in log if r["event"] == "eval")["val_loss"]
    assert summary["val_loss"] < start  # 1.5k tokens of KD already lower the held-out loss of a 30%-pruned model
    assert any(r["event"] == "teacher_cache" and r["blocks"] > 0 for r in log)
    from edge_downscale.models import load_torch

    model, _, _ = load_torch(str(tmp_path / "student"))
    assert model.config.intermediate_size == 1088  # a plain HF directory with the pruned width


def test_vocabulary_check_refuses_a_teacher_with_another_tokenizer(tmp_path, tiny_model_dir):
    """SmolLM2's real tokenizer against the tiny model's (another BPE): the distill command refuses."""
    from click.testing import CliRunner

    from edge_downscale.cli import cli

    res = CliRunner().invoke(cli, ["distill", "--teacher", "smollm2-135m", "--student", str(tiny_model_dir),
                                   "--domain", "docs", "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code != 0 and "vocabularies differ" in res.output and "same tokenizer" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()
