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


def test_check_int_rejects_bools_floats_and_out_of_range_values():
    from types import SimpleNamespace

    from edge_downscale.config import check_int
    from edge_downscale.errors import ConfigError

    check_int(SimpleNamespace(n=16), "n", 16, 1024)
    for bad, match in [(True, r"n must be an integer in \[16, 1024\], got True"), (16.0, "got 16.0"),
                       (15, "got 15"), (1025, "got 1025")]:
        with pytest.raises(ConfigError, match=match):
            check_int(SimpleNamespace(n=bad), "n", 16, 1024)
    with pytest.raises(ConfigError, match="n must be an integer >= 1, got 0"):
        check_int(SimpleNamespace(n=0), "n", 1)
    with pytest.raises(ConfigError, match="n must be an integer, got 'x'"):
        check_int(SimpleNamespace(n="x"), "n")
