import math
from collections import Counter

import numpy as np
import pytest

from edge_downscale.errors import EvalError
from edge_downscale.eval import bits_per_byte, build_items, paired_mc_test, score_items, windows
from edge_downscale.runtime.base import Backend, log_softmax_gather


@pytest.mark.parametrize("n,L,S", [(2, 8, 4), (7, 8, 4), (8, 8, 4), (9, 8, 4), (100, 16, 5), (100, 16, 16),
                                   (33, 8, 1), (1000, 512, 256)])
def test_windows_score_every_target_once_with_enough_context(n, L, S):
    scored = []
    for begin, end, first_new in windows(n, L, S):
        assert end - begin <= L
        assert begin < first_new <= end
        if begin > 0:  # after the first window every new token sees at least L - S tokens of context
            assert first_new - begin >= L - S
        scored.extend(range(first_new, end))
    assert scored == list(range(1, n))


def test_log_softmax_gather_matches_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 11)) * 30
    tgt = rng.integers(0, 11, size=5)
    expected = [logits[i, tgt[i]] - math.log(np.exp(logits[i]).sum()) for i in range(5)]
    np.testing.assert_allclose(log_softmax_gather(logits, tgt), expected, rtol=1e-6, atol=1e-5)


def test_bpb_matches_an_independent_torch_computation(tiny_backend):
    import torch

    text = "Return the hash value of the object (if it has one). Hash values are integers. ünï ☃\n" * 3
    res = bits_per_byte(tiny_backend, [text], max_length=512, stride=256)
    ids = torch.tensor([tiny_backend.prefix_ids + tiny_backend.tokenize(text)])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_backend.model(ids).logits[0, :-1].double(), -1)
    nll = -logp.gather(-1, ids[0, 1:, None]).sum().item()
    assert res.n_bytes == len(text.encode("utf-8")) > len(text)  # bytes, not characters
    assert res.bits_per_byte == pytest.approx(nll / math.log(2) / res.n_bytes, rel=1e-5)


def test_sliding_window_handles_documents_longer_than_the_window(tiny_backend):
    text = " ".join(f"word{i}" for i in range(400))
    full = bits_per_byte(tiny_backend, [text], max_length=512, stride=256)
    slid = bits_per_byte(tiny_backend, [text], max_length=64, stride=32)
    assert slid.n_windows > full.n_windows >= 2
    assert slid.n_tokens == full.n_tokens
    # different context lengths give different but comparable numbers for a random model
    assert slid.bits_per_byte == pytest.approx(full.bits_per_byte, rel=0.05)


class ByteNgram(Backend):
    """A real (tiny) language model: byte 6-grams interpolated with add-one bigrams, counted on texts."""

    name = "ngram"
    context_length = 4096
    order = 6

    def __init__(self, texts):
        self.big = np.ones((257, 257))
        self.ctx: Counter = Counter()
        self.joint: Counter = Counter()
        for t in texts:
            b = [256] + list(t.encode("utf-8"))
            for i in range(1, len(b)):
                self.big[b[i - 1], b[i]] += 1
                h = tuple(b[max(0, i - self.order):i])
                self.ctx[h] += 1
                self.joint[h + (b[i],)] += 1
        self.big /= self.big.sum(1, keepdims=True)

    def tokenize(self, text):
        return list(text.encode("utf-8"))

    @property
    def prefix_ids(self):
        return [256]

    def token_logprobs(self, sequences):
        out = []
        for s in sequences:
            lp = []
            for i in range(1, len(s)):
                h = tuple(s[max(0, i - self.order):i])
                p = (self.joint[h + (s[i],)] + 2.0 * self.big[s[i - 1], s[i]]) / (self.ctx[h] + 2.0)
                lp.append(math.log(p))
            out.append(np.array(lp))
        return out


def _docs():
    import pydoc_data.topics as t

    return [t.topics[k] for k in sorted(t.topics)][:40]


def test_mc_items_are_deterministic_and_well_formed():
    docs = _docs()
    a = build_items(docs, n_items=25, context_chars=200, continuation_chars=60, seed=3)
    b = build_items(docs, n_items=25, context_chars=200, continuation_chars=60, seed=3)
    c = build_items(docs, n_items=25, context_chars=200, continuation_chars=60, seed=4)
    assert [(i.context, i.choices, i.answer) for i in a] == [(i.context, i.choices, i.answer) for i in b]
    assert [i.context for i in a] != [i.context for i in c]
    assert len(a) == 25
    for item in a:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        truth = item.choices[item.answer]
        assert any(item.context + truth in d or (item.context in d and truth in d) for d in docs)
        assert max(len(c) for c in item.choices) - min(len(c) for c in item.choices) <= 15
    assert len({i.answer for i in a}) > 1  # the answer position varies


def test_mc_scoring_finds_true_continuations_with_a_real_language_model():
    docs = _docs()
    items = build_items(docs, n_items=60, context_chars=200, continuation_chars=60, seed=0)
    res = score_items(ByteNgram(docs), items)
    assert res.n_items == 60 and res.chance == 0.25
    assert res.accuracy > 0.4  # an n-gram LM fit on this text beats chance clearly
    assert len(res.item_correct) == 60 and sum(res.item_correct) == round(res.accuracy * 60)
    # shuffling which index is "true" must destroy the signal: guards against misaligned answers
    for it in items:
        it.answer = (it.answer + 1) % 4
    assert score_items(ByteNgram(docs), items).accuracy < res.accuracy


@pytest.mark.parametrize("a,b,wins,losses,p", [
    ([1, 1, 1, 1], [1, 1, 1, 1], 0, 0, 1.0),  # no disagreement: nothing to tell apart
    ([0, 0, 1, 1], [1, 1, 1, 1], 0, 2, 0.5),  # 2 lost of 2 disagreements: 2 * (1/2)^2
    ([1] * 6 + [0, 1], [0] * 6 + [1, 1], 6, 1, 0.125),  # 2 * (1 + 7) / 2^7
    ([1] * 6, [0] * 6, 6, 0, 0.03125),  # 2 * (1/2)^6
])
def test_paired_mc_test_is_mcnemars_exact_test(a, b, wins, losses, p):
    got = paired_mc_test(a, b)
    assert (got["wins"], got["losses"], got["items"]) == (wins, losses, len(a))
    assert got["p_value"] == pytest.approx(p)
    assert paired_mc_test(b, a)["p_value"] == pytest.approx(p)  # two-sided: symmetric


def test_paired_mc_test_refuses_unpaired_items():
    with pytest.raises(EvalError, match="same items"):
        paired_mc_test([1, 0], [1])


def test_evaluate_takes_loaded_texts_not_domain_names(tiny_backend):
    from edge_downscale.config import EvalConfig
    from edge_downscale.errors import ConfigError
    from edge_downscale.eval import evaluate

    text = "Return the hash value of the object (if it has one). Hash values are integers.\n" * 4
    config = EvalConfig(max_bytes=2000, mc_items=0)
    res = evaluate(tiny_backend, {"mine": ([text], [text])}, config, progress=False)
    assert list(res["domains"]) == ["mine"] and res["domains"]["mine"]["bpb"]["n_bytes"] == len(text.encode())
    assert res["mixed_bpb"] == res["domains"]["mine"]["bpb"]["bits_per_byte"]
    with pytest.raises(ConfigError, match="heldout_by_domain"):
        evaluate(tiny_backend, ["docs"], config, progress=False)
