import pytest

from edge_downscale.config import EvalConfig
from edge_downscale.errors import ConfigError


def test_eval_config_round_trips_through_json():
    cfg = EvalConfig(max_length=256, stride=128, max_bytes=None, mc_items=7)
    assert EvalConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("bad", [dict(stride=0), dict(stride=600, max_length=512), dict(split="dev"),
                                 dict(max_bytes=0), dict(mc_choices=1), dict(max_length=8)])
def test_eval_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        EvalConfig(**bad)


def test_unknown_keys_are_errors_not_silently_dropped():
    with pytest.raises(ConfigError, match="unknown key"):
        EvalConfig.from_dict({"max_lenght": 10})
    with pytest.raises(ConfigError, match="JSON"):
        EvalConfig.from_json("{not json")
