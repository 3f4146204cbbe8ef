"""OnnxBackend.generate on the tiny random Llama: the IOBinding decode loop against a plain one and torch."""
import numpy as np
import pytest

from edge_downscale.export.onnx import export_onnx
from edge_downscale.runtime import ContextOverflowError
from edge_downscale.runtime.onnx import OnnxBackend

PROMPT = "def hash(object):\n    Return the hash value of the object"
LONG = ("Assignment statements are used to (re)bind names to values and to modify attributes or items of "
        "mutable objects. ") * 8
N_NEW = 16


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tmp_path_factory):
    return export_onnx(tiny_model_dir, tmp_path_factory.mktemp("onnx-gen") / "tiny-onnx")


@pytest.fixture(scope="module")
def backend(onnx_dir):
    with OnnxBackend(onnx_dir) as b:
        yield b


def plain_decode(backend, prompt_ids, n_new):
    """The pre-IOBinding loop: numpy feeds, every output copied back, the cache fed in as numpy. Greedy."""
    session = backend._session
    names = [o.name for o in session.get_outputs()]
    past = dict(backend._past)
    step, seen, tokens, rows = np.asarray(prompt_ids, dtype=np.int64)[None, :], 0, [], []
    while len(tokens) < n_new:
        n = step.shape[1]
        feed = {"input_ids": step, "attention_mask": np.ones((1, seen + n), dtype=np.int64),
                "position_ids": np.arange(seen, seen + n, dtype=np.int64)[None, :], **past}
        out = dict(zip(names, session.run(names, feed)))
        seen += n
        past = {k: out[k.replace("past_key_values", "present")] for k in past}
        rows.append(out["logits"][0, -1])
        tokens.append(int(rows[-1].argmax()))
        step = np.array([[tokens[-1]]], dtype=np.int64)
    return tokens, np.stack(rows)  # (n_new,), (n_new, V)


def test_bound_loop_matches_the_plain_loop_and_torch(backend, tiny_model_dir):
    import torch

    from edge_downscale.models import load_torch

    ids = backend.prefix_ids + backend.tokenize(PROMPT)
    want, want_rows = plain_decode(backend, ids, N_NEW)
    steps = backend._decode(ids)
    rows = [next(steps)]
    for tok in want[:-1]:
        rows.append(steps.send(tok))
    steps.close()
    np.testing.assert_allclose(np.stack(rows), want_rows, atol=1e-5, rtol=0)  # same logits, step by step
    assert backend.greedy(ids, N_NEW, stop_at_eos=False) == want
    bos = backend.prefix_ids  # a one-token prompt: its logits come from the decode-step buffer
    assert backend.greedy(bos, 6, stop_at_eos=False) == plain_decode(backend, bos, 6)[0]

    model, _, _ = load_torch(str(tiny_model_dir))
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False,
                             pad_token_id=backend._eos)[0, len(ids):].tolist()
    assert want == ref

    gen = backend.generate(PROMPT, max_tokens=N_NEW, meter=None)  # stops at the first end-of-turn token
    ends = [i for i, t in enumerate(want) if t in backend.end_ids]
    assert gen.tokens == want[: ends[0] if ends else N_NEW]
    assert gen.finish_reason == ("stop" if ends else "length")
    assert gen.usage.prompt_tokens == len(ids) and gen.usage.completion_tokens == len(gen.tokens)
    assert backend.generate(PROMPT, max_tokens=N_NEW, meter=None).tokens == gen.tokens  # no state carried over


def test_thread_count_does_not_change_greedy_tokens(onnx_dir, backend):
    ids = backend.prefix_ids + backend.tokenize(PROMPT)
    with OnnxBackend(onnx_dir, n_threads=1) as one:
        assert one.greedy(ids, N_NEW, stop_at_eos=False) == backend.greedy(ids, N_NEW, stop_at_eos=False)


def test_stream_chunks_concatenate_to_the_final_text(backend):
    chunks = list(backend.generate(PROMPT, max_tokens=N_NEW, temperature=0.8, seed=3, stream=True, meter=None))
    final = chunks[-1].final
    assert final is not None and all(c.final is None for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == final.text
    assert final.text == backend.generate(PROMPT, max_tokens=N_NEW, temperature=0.8, seed=3, meter=None).text


def test_stop_strings_cut_the_text(backend):
    full = backend.generate(PROMPT, max_tokens=24, temperature=1.0, seed=0, meter=None)
    text = full.text
    assert len(text) > 10, f"sampled text too short for the test: {text!r}"
    stop = text[6:9]
    cut = backend.generate(PROMPT, max_tokens=24, temperature=1.0, seed=0, stop=[stop, "\x00never"], meter=None)
    assert cut.text == text[: text.find(stop)] and stop not in cut.text
    assert cut.finish_reason == "stop" and len(cut.tokens) <= len(full.tokens)


def test_sampling_is_reproducible_per_seed(backend):
    kw = dict(max_tokens=N_NEW, temperature=1.0, top_k=50, top_p=0.95, meter=None)
    a, b, c = (backend.generate(PROMPT, seed=s, **kw) for s in (7, 7, 8))
    assert a.tokens == b.tokens and a.text == b.text and a.logprobs == b.logprobs
    assert a.tokens != c.tokens


def test_context_overflow_truncates_or_refuses(onnx_dir):
    with OnnxBackend(onnx_dir, context_length=64) as small:
        assert small.context_length == 64
        assert len(small.prefix_ids + small.tokenize(LONG)) > 64
        gen = small.generate(LONG, max_tokens=8, meter=None)
        assert gen.usage.truncated_tokens > 0 and gen.usage.prompt_tokens <= 64 - 8
        assert gen.usage.prompt_tokens + gen.usage.truncated_tokens == len(small.prefix_ids + small.tokenize(LONG))
        with pytest.raises(ContextOverflowError, match="tokens but only"):
            small.generate(LONG, max_tokens=8, overflow="error", meter=None)
        with pytest.raises(ContextOverflowError, match="context length 64"):
            next(small._decode(list(range(65))))
        steps = small._decode(list(range(63)))  # the decode loop itself stops at the context length
        next(steps)
        steps.send(5)
        with pytest.raises(ContextOverflowError, match="context length 64"):
            steps.send(5)


def test_chat_messages_use_the_model_template(backend):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a hash?"}]
    gen = backend.generate(messages, max_tokens=6, meter=None)
    assert gen.template == "model"
    rendered = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is a hash?<|im_end|>\n<|im_start|>assistant\n"
    assert gen.usage.prompt_tokens == len(backend.tokenize(rendered, special=True))
    assert backend.generate(PROMPT, max_tokens=2, meter=None).template is None
