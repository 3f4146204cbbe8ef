"""KD losses against hand-computed values, and the vocabulary check."""
import math

import pytest
import torch

from edge_downscale.compress.distill import check_same_vocabulary, kd_loss
from edge_downscale.errors import ConfigError


def _softmax(xs, tau):
    e = [math.exp(x / tau) for x in xs]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


S, T, Y = [1.0, 0.0, -1.0], [0.0, 2.0, 0.5], 1  # one position, vocabulary of 3


def _tensors():
    return torch.tensor([[S]]), torch.tensor([[T]]), torch.tensor([[Y]])


def test_forward_kd_matches_a_hand_computed_example():
    ce = -math.log(_softmax(S, 1.0)[Y])
    soft = _kl(_softmax(T, 2.0), _softmax(S, 2.0))
    expected = 0.3 * ce + 0.7 * 4.0 * soft
    got = kd_loss(*_tensors(), alpha=0.3, tau=2.0, divergence="forward")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_reverse_kl_and_generalised_jsd_match_hand_computed_values():
    ps, pt = _softmax(S, 1.0), _softmax(T, 1.0)
    got = kd_loss(*_tensors(), alpha=0.0, tau=1.0, divergence="reverse")
    assert got.item() == pytest.approx(_kl(ps, pt), rel=1e-6)
    beta = 0.25
    m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
    got = kd_loss(*_tensors(), alpha=0.0, tau=1.0, divergence="jsd", beta=beta)
    assert got.item() == pytest.approx(beta * _kl(pt, m) + (1 - beta) * _kl(ps, m), rel=1e-6)


def test_padding_is_ignored_and_gradients_reach_only_the_student():
    s = torch.tensor([[S, [5.0, 5.0, 5.0]]], requires_grad=True)
    t = torch.tensor([[T, [0.0, 0.0, 9.0]]], requires_grad=True)
    one = kd_loss(*_tensors())
    two = kd_loss(s, t, torch.tensor([[Y, -100]]))
    assert two.item() == pytest.approx(one.item(), rel=1e-6)
    two.backward()
    assert s.grad is not None and t.grad is None and s.grad[0, 1].abs().sum() == 0


def test_bad_settings_and_shape_mismatch_are_refused():
    s, t, y = _tensors()
    with pytest.raises(ConfigError, match="share a vocabulary"):
        kd_loss(s, torch.zeros(1, 1, 4), y)
    with pytest.raises(ConfigError, match="divergence"):
        kd_loss(s, t, y, divergence="cosine")
    with pytest.raises(ConfigError, match="tau"):
        kd_loss(s, t, y, tau=0)


def test_vocabulary_check(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    check_same_vocabulary(tok, AutoTokenizer.from_pretrained(tiny_model_dir))

    class Shifted:
        def get_vocab(self):
            return {k: v + 1 for k, v in tok.get_vocab().items()}

    with pytest.raises(ConfigError, match="with other ids.*same family"):
        check_same_vocabulary(tok, Shifted())
