import json
import re

import pytest
import torch
import transformers
from click.testing import CliRunner

from edge_downscale.cli import cli
from edge_downscale.compress.prune import (
    METHODS, FFNPolicy, FFNPolicyConfig, PruneError, PruneNetConfig, PruneNetPolicy, ffn_layers, kept_width,
    learn_ffn_policy, learn_policy, prune_, save_pruned,
)
from edge_downscale.errors import ConfigError
from edge_downscale.models import load_torch


@pytest.fixture
def tiny(tiny_model_dir):
    model, tok, _ = load_torch(str(tiny_model_dir))
    return model, tok


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    model, _, _ = load_torch(str(tiny_model_dir))
    return learn_policy(model, PruneNetConfig(episodes=3, train_ratio=0.5, seed=1), progress=False)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_kept_width_rounds_to_the_multiple_and_refuses_bad_ratios():
    assert kept_width(1536, 0.3) == 1088  # 1075.2 -> nearest multiple of 64
    assert kept_width(1536, 0.5) == 768
    assert kept_width(1536, 0.3, multiple=1) == 1075
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ConfigError, match="ratio"):
            kept_width(1536, bad)
    with pytest.raises(ConfigError, match="keeps"):
        kept_width(256, 0.9)  # 25.6 rows rounds below one block of 64


def test_slicing_keeps_gate_up_down_aligned(tiny):
    """Rows whose down_proj columns are zero contribute nothing: removing exactly them is lossless."""
    model, _ = tiny
    d_ff = model.config.intermediate_size
    dead = torch.arange(0, d_ff, 2)  # every other row
    with torch.no_grad():
        for f in ffn_layers(model):
            f.down.weight[:, dead] = 0
    ids = torch.tensor([[5, 17, 300, 42, 7, 99, 512, 3]])
    before = _logits(model, ids)
    scores = [torch.ones(d_ff).index_fill_(0, dead, 0.0) for _ in ffn_layers(model)]
    report = prune_(model, "magnitude", 0.5, scores=scores)
    assert model.config.intermediate_size == d_ff // 2 == report["kept_width"]
    assert all(f.gate.weight.shape == (d_ff // 2, 64) and f.down.weight.shape == (64, d_ff // 2) for f in ffn_layers(model))
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-5, atol=1e-5)


def test_pruning_the_wrong_rows_changes_outputs(tiny):
    model, _ = tiny
    d_ff = model.config.intermediate_size
    ids = torch.tensor([[5, 17, 300, 42, 7, 99, 512, 3]])
    before = _logits(model, ids)
    prune_(model, "random", 0.5)
    assert not torch.allclose(_logits(model, ids), before, atol=1e-4)
    assert model.config.intermediate_size == d_ff // 2


def test_policy_round_trips_and_is_deterministic(policy, tiny_model_dir, tmp_path):
    path = policy.save(tmp_path / "pol")
    loaded = PruneNetPolicy.load(path)
    model, _, _ = load_torch(str(tiny_model_dir))
    w = ffn_layers(model)[1].gate.weight
    torch.testing.assert_close(loaded.keep_probabilities(w), policy.keep_probabilities(w))
    assert loaded.meta["best_reward"] == policy.meta["best_reward"] and loaded.meta["history"] == policy.meta["history"]
    again = learn_policy(model, PruneNetConfig(episodes=3, train_ratio=0.5, seed=1), progress=False)
    assert again.meta["history"] == policy.meta["history"]
    torch.testing.assert_close(again.keep_probabilities(w), policy.keep_probabilities(w))
    with pytest.raises(PruneError, match="not a PruneNet policy"):
        PruneNetPolicy.load(tmp_path)


def test_policy_learning_keeps_the_best_episode(policy):
    rewards = [h["reward"] for h in policy.meta["history"]]
    assert policy.meta["best_reward"] == max(rewards) > 0
    assert len(policy.meta["best_layer_ks"]) == 2 and all(0 <= k <= 1 for k in policy.meta["best_layer_ks"])


def test_one_policy_prunes_at_several_ratios_with_nested_rows(policy, tiny_model_dir):
    model0 = load_torch(str(tiny_model_dir))[0]
    original = ffn_layers(model0)[0].gate.weight.detach()
    action = policy.scores(model0, seed=0)[0]  # (d_ff,): one seeded draw, ratio-free
    kept, params = {}, {}
    for r in (0.25, 0.5):
        model, _, _ = load_torch(str(tiny_model_dir))
        report = prune_(model, policy, r, seed=0)
        k = report["kept_width"]
        rows = torch.topk(action, k).indices.sort().values
        # the pruned layer holds exactly the sampled rows, in their original order
        torch.testing.assert_close(ffn_layers(model)[0].gate.weight, original[rows])
        kept[r], params[r] = set(rows.tolist()), report["params_after"]
        assert report["seed"] == 0 and report["policy"]["select"] == "sample"
    assert len(kept[0.25]) == 192 and len(kept[0.5]) == 128
    assert kept[0.5] < kept[0.25]  # one draw serves every ratio: the kept rows nest
    assert params[0.5] < params[0.25]


def test_sampled_action_is_seeded_and_reproducible(policy, tiny_model_dir):
    """PruneNet prunes with a draw, not top-k: the seed decides it, and the report records the seed."""
    def rows(seed):
        model = load_torch(str(tiny_model_dir))[0]
        report = prune_(model, policy, 0.5, seed=seed)
        assert report["seed"] == seed
        return report["kept_indices_sha256"], [f.gate.weight.detach().clone() for f in ffn_layers(model)]

    (a, wa), (b, wb), (c, _) = rows(0), rows(0), rows(1)
    assert a == b and all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert a != c
    model = load_torch(str(tiny_model_dir))[0]
    alpha = policy.keep_probabilities(ffn_layers(model)[0].gate.weight)
    top = set(torch.topk(alpha, 128).indices.tolist())
    drawn = set(torch.topk(policy.scores(model, seed=0)[0], 128).indices.tolist())
    assert drawn != top  # a draw from the keep-probabilities, not their top-k
    topk_policy = PruneNetPolicy(policy.net, {**policy.meta, "config": {**policy.meta["config"], "select": "topk"}})
    assert set(torch.topk(topk_policy.scores(model, seed=5)[0], 128).indices.tolist()) == top


def _rows_that_matter(seed=0):
    """A tiny random Llama where every 4th FFN row is scaled up 4x (gate, up, down) and shifted along one
    direction (so a policy on the gate row can see it): those rows dominate both rewards."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg)
    important = torch.arange(0, 256, 4)  # (64,)
    d = torch.nn.functional.normalize(torch.randn(64), dim=0)
    with torch.no_grad():
        for f in ffn_layers(model):
            for lin in (f.gate, f.up):
                lin.weight[important] = 4 * (lin.weight[important] + 0.1 * d)
            f.down.weight[:, important] *= 4
    return model, set(important.tolist())


def _kept_share(model, policy, important, seed=0):
    """Share of the important rows among the rows the policy keeps at 0.75 (64 kept: all could be important)."""
    scores = policy.scores(model, seed=seed)
    return sum(len(set(torch.topk(s, 64).indices.tolist()) & important) for s in scores) / (64 * len(scores))


def test_baselined_gradient_raises_the_reward_where_reinforce_does_not():
    model, important = _rows_that_matter()
    curves, shares = {}, {}
    for gradient in ("reinforce", "baselined"):
        cfg = PruneNetConfig(episodes=6, gradient=gradient, samples=4, lr=1e-2, seed=0)
        policy = learn_policy(model, cfg, ratio=0.5, progress=False)
        curves[gradient] = [h["reward"] for h in policy.meta["history"]]
        shares[gradient] = _kept_share(model, policy, important)
        assert all({"reward", "mean_ks", "alpha_mean", "alpha_std"} <= set(h) for h in policy.meta["history"])
    first, last = ({g: sum(c[:2]) / 2 for g, c in curves.items()}, {g: sum(c[-2:]) / 2 for g, c in curves.items()})
    assert last["baselined"] > 1.5 * first["baselined"], curves
    assert last["reinforce"] < 1.2 * first["reinforce"], curves  # no baseline: every draw is reinforced
    assert shares["baselined"] > 0.6 > 0.4 > shares["reinforce"], shares  # 0.25 = chance


def test_ffn_policy_learns_to_keep_the_rows_that_matter(tmp_path):
    model, important = _rows_that_matter()
    policy = learn_ffn_policy(model, FFNPolicyConfig(episodes=6, seed=0, sequences=4, length=16), ratio=0.5, progress=False)
    h = policy.meta["history"]
    assert h[0]["score_std"] == 0 and h[-1]["score_std"] > 0  # starts uniform, learns a spread
    assert h[-1]["reward"] > h[0]["reward"] + 0.1, [x["reward"] for x in h]  # rewards are -relative error
    assert _kept_share(model, policy, important) > 0.9
    assert policy.meta["method"] == "ffn-policy" and len(policy.weights) == len(policy.meta["features"])
    loaded = FFNPolicy.load(policy.save(tmp_path / "pol"))
    assert loaded.weights == policy.weights and loaded.meta == policy.meta
    assert all(torch.equal(a, b) for a, b in zip(loaded.scores(model), policy.scores(model)))
    with pytest.raises(PruneError, match="'ffn-policy' policy, not 'prunenet'"):
        PruneNetPolicy.load(tmp_path / "pol")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_output_loads_in_plain_transformers(method, tiny, tmp_path):
    model, tok = tiny
    calib = [tok("The quick brown fox jumps over the lazy dog. " * 8, add_special_tokens=False)["input_ids"][:48]] * 2
    learned = {"prunenet": lambda: learn_policy(model, PruneNetConfig(episodes=1), ratio=0.5, progress=False),
               "ffn-policy": lambda: learn_ffn_policy(model, FFNPolicyConfig(episodes=1, sequences=2, length=8), ratio=0.5,
                                                      progress=False)}
    how = learned[method]() if method in learned else method
    report = prune_(model, how, 0.5, calibration=calib)
    assert report["method"] == method
    out = save_pruned(model, tok, tmp_path / method, report)
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(out))  # no edge_downscale involved
    assert plain.config.intermediate_size == 128
    ids = torch.tensor([tok("def f(x): return x", add_special_tokens=False)["input_ids"]])
    torch.testing.assert_close(_logits(plain, ids), _logits(model, ids))


def test_pruned_directory_loads_with_plain_transformers(policy, tiny, tmp_path):
    model, tok = tiny
    report = prune_(model, policy, 0.5)
    out = save_pruned(model, tok, tmp_path / "pruned", report)
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(out))  # no edge_downscale involved
    assert plain.config.intermediate_size == 128
    ids = torch.tensor([tok("def f(x): return x", add_special_tokens=False)["input_ids"]])
    torch.testing.assert_close(_logits(plain, ids), _logits(model, ids))
    saved = json.loads((out / "pruning_report.json").read_text())
    assert saved["params_after"] == sum(p.numel() for p in plain.parameters())
    assert len(saved["layer_ks"]) == 2 and len(saved["kept_indices_sha256"]) == 64
    with pytest.raises(PruneError, match="already exists"):
        save_pruned(model, tok, out, report)


def test_activation_aware_baseline_uses_calibration(tiny, tiny_model_dir):
    model, tok = tiny
    calib = [tok("The quick brown fox jumps over the lazy dog. " * 8, add_special_tokens=False)["input_ids"][:48]] * 2
    report = prune_(model, "activation", 0.25, calibration=calib)
    assert report["calibration_free"] is False and report["kept_width"] == 192
    with pytest.raises(ConfigError, match="calibration"):
        prune_(load_torch(str(tiny_model_dir))[0], "activation", 0.25)


def test_refit_down_proj_lowers_every_layers_output_error(tiny, tiny_model_dir):
    from edge_downscale.compress.prune.methods import down_inputs, random_scores

    model, tok = tiny
    calib = [tok(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}. " * 6,
                 add_special_tokens=False)["input_ids"][:64] for i in range(6)]
    dense_down = [f.down.weight.detach().clone() for f in ffn_layers(model)]  # L x (d_model, d_ff)
    hs: dict[int, list] = {}
    down_inputs(model, calib, lambda i, h: hs.setdefault(i, []).append(h.clone()))
    kept = [torch.topk(s, 192).indices.sort().values for s in random_scores(model, seed=3)]
    plain, refitted = load_torch(str(tiny_model_dir))[0], load_torch(str(tiny_model_dir))[0]
    assert prune_(plain, "random", 0.25, seed=3)["refit"] is False
    report = prune_(refitted, "random", 0.25, seed=3, calibration=calib, refit=True, refit_mode="layer")
    assert report["refit"] is True and report["calibration_free"] is False and report["kept_width"] == 192
    for i, (w, idx) in enumerate(zip(dense_down, kept)):
        h = torch.cat(hs[i])  # (N, d_ff)
        target = h @ w.T  # the dense FFN output (N, d_model)
        err = {name: (h[:, idx] @ ffn_layers(m)[i].down.weight.detach().T - target).pow(2).sum().item()
               for name, m in (("plain", plain), ("refit", refitted))}
        assert err["refit"] < 0.9 * err["plain"], (i, err)
    with pytest.raises(ConfigError, match="calibration"):
        prune_(load_torch(str(tiny_model_dir))[0], "random", 0.25, refit=True)


def test_sequential_refit_lands_closer_to_the_dense_model(tiny_model_dir, tmp_path):
    """Block by block towards the dense output: the last hidden state is nearer the dense one than with
    independent per-layer refits (on the calibration text, where it is a least-squares optimum), and the
    result is a plain transformers model."""
    dense, tok, _ = load_torch(str(tiny_model_dir))
    calib = [tok(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}. " * 6,
                 add_special_tokens=False)["input_ids"][:64] for i in range(6)]
    ids = torch.tensor(calib)

    def last_hidden(m):
        with torch.no_grad():
            return m(input_ids=ids, output_hidden_states=True).hidden_states[-1]

    target = last_hidden(dense)
    err, reports = {}, {}
    for mode in ("layer", "sequential"):
        m = load_torch(str(tiny_model_dir))[0]
        reports[mode] = prune_(m, "random", 0.5, seed=3, calibration=calib, refit=True, refit_mode=mode)
        err[mode] = (last_hidden(m) - target).pow(2).mean().item()
    assert reports["sequential"]["refit_mode"] == "sequential"
    assert reports["sequential"]["kept_indices_sha256"] == reports["layer"]["kept_indices_sha256"]
    assert err["sequential"] < err["layer"], err
    save_pruned(m, tok, tmp_path / "seq", reports["sequential"])
    plain = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "seq"))
    torch.testing.assert_close(last_hidden(plain), last_hidden(m))
    with pytest.raises(ConfigError, match="refit_mode"):
        prune_(load_torch(str(tiny_model_dir))[0], "random", 0.5, calibration=calib, refit=True, refit_mode="greedy")


def test_bad_models_are_refused(tiny):
    model, _ = tiny
    with torch.no_grad():
        ffn_layers(model)[1].up.weight[0, 0] = float("nan")
    with pytest.raises(PruneError, match="NaN"):
        prune_(model, "magnitude", 0.25)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(PruneError, match="supported: .*llama"):
        prune_(gpt2, "magnitude", 0.25)


@pytest.mark.parametrize("cfg_cls", [transformers.Qwen2Config, transformers.MistralConfig, transformers.Gemma3TextConfig])
def test_other_registered_architectures_prune_and_run(cfg_cls):
    cfg = cfg_cls(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    prune_(model, "magnitude", 0.5)
    assert model.config.intermediate_size == 128
    assert _logits(model, torch.tensor([[1, 2, 3]])).shape == (1, 3, 128)


def test_cli_prune_learns_once_and_writes_one_model_per_ratio(tiny_model_dir, tmp_path):
    out = tmp_path / "pruned"
    args = ["prune", str(tiny_model_dir), "--ratios", "0.25,0.5", "--out", str(out), "--episodes", "2", "--quiet"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    # by default a policy is learned at each ratio (the authors' code)
    assert sorted(p.name for p in out.iterdir()) == ["policy-r0.25", "policy-r0.50", "r0.25", "r0.50", "summary.json"]
    assert json.loads((out / "policy-r0.50" / "policy.json").read_text())["train_width"] == 128
    assert transformers.AutoConfig.from_pretrained(str(out / "r0.25")).intermediate_size == 192
    # reuse the saved policy: no learning, same rows (the same seeded draw)
    res2 = CliRunner().invoke(cli, ["prune", str(tiny_model_dir), "--ratios", "0.25", "--out", str(tmp_path / "again"),
                                    "--policy", str(out / "policy-r0.25"), "--quiet"])
    assert res2.exit_code == 0, res2.output
    a = json.loads((out / "r0.25" / "pruning_report.json").read_text())["kept_indices_sha256"]
    b = json.loads((tmp_path / "again" / "r0.25" / "pruning_report.json").read_text())["kept_indices_sha256"]
    assert a == b
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["policy", "r0.25", "summary.json"]
    # learned once at --train-ratio, reused at both; the new method, and a policy of the wrong kind
    res3 = CliRunner().invoke(cli, ["prune", str(tiny_model_dir), "--ratios", "0.25,0.5", "--out", str(tmp_path / "ffn"),
                                    "--method", "ffn-policy", "--train-ratio", "0.5", "--episodes", "2", "--quiet"])
    assert res3.exit_code == 0, res3.output
    assert sorted(p.name for p in (tmp_path / "ffn").iterdir()) == ["policy", "r0.25", "r0.50", "summary.json"]
    assert json.loads((tmp_path / "ffn" / "r0.25" / "pruning_report.json").read_text())["method"] == "ffn-policy"
    res4 = CliRunner().invoke(cli, ["prune", str(tiny_model_dir), "--ratios", "0.25", "--out", str(tmp_path / "wrong"),
                                    "--policy", str(tmp_path / "ffn" / "policy"), "--quiet"])
    assert res4.exit_code == 2 and "'ffn-policy' policy, not 'prunenet'" in res4.output, res4.output
    # bad input: one line, exit 2, nothing written
    for bad, msg in ((["--ratios", "1.5"], "ratio"), (["--ratios", "0.9"], "keeps"), ([], "already exists")):
        target = out if msg == "already exists" else tmp_path / f"bad{len(msg)}"
        r = CliRunner().invoke(cli, ["prune", str(tiny_model_dir), "--out", str(target), "--episodes", "1", "--quiet", *bad])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
        if msg != "already exists":
            assert not target.exists()


def test_cli_prune_refits_in_either_mode(tiny_model_dir, tmp_path):
    """--refit with each --refit-mode: the same rows kept, different down_proj weights, the mode reported."""
    from safetensors.torch import load_file

    reports, downs = {}, {}
    for mode in ("sequential", "layer"):
        out = tmp_path / mode
        res = CliRunner().invoke(cli, ["prune", str(tiny_model_dir), "--ratios", "0.5", "--out", str(out), "--method",
                                       "activation", "--refit", "--refit-mode", mode, "--calib-sequences", "2", "--quiet"])
        assert res.exit_code == 0, res.output
        reports[mode] = json.loads((out / "r0.50" / "pruning_report.json").read_text())
        downs[mode] = load_file(str(out / "r0.50" / "model.safetensors"))["model.layers.1.mlp.down_proj.weight"]
        assert reports[mode]["refit"] is True and reports[mode]["refit_mode"] == mode
    assert reports["sequential"]["kept_indices_sha256"] == reports["layer"]["kept_indices_sha256"]
    assert not torch.allclose(downs["sequential"], downs["layer"])


def test_gradient_option_changes_learning_and_stays_deterministic(tiny_model_dir):
    model, _, _ = load_torch(str(tiny_model_dir))
    cfg = PruneNetConfig(episodes=3, train_ratio=0.5, seed=1, gradient="baselined", lr=1e-2)
    a = learn_policy(model, cfg, progress=False)
    b = learn_policy(model, cfg, progress=False)
    plain = learn_policy(model, PruneNetConfig(episodes=3, train_ratio=0.5, seed=1, lr=1e-2), progress=False)
    w = ffn_layers(model)[0].gate.weight
    torch.testing.assert_close(a.keep_probabilities(w), b.keep_probabilities(w))
    assert a.meta["history"] == b.meta["history"]
    assert not torch.allclose(a.keep_probabilities(w), plain.keep_probabilities(w))
    assert PruneNetConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="samples >= 2"):
        PruneNetConfig(gradient="baselined", samples=1)
    with pytest.raises(ConfigError, match="gradient must be one of reinforce, baselined"):
        PruneNetConfig(gradient="ppo")
    with pytest.raises(ConfigError, match="pass ratio="):
        learn_policy(model, PruneNetConfig(episodes=1), progress=False)  # learns at the target ratio: give it


def test_prune_config_validates_and_round_trips_through_json(tmp_path):
    from edge_downscale.compress.prune import PruneConfig

    cfg = PruneConfig(out_dir=tmp_path / "out", ratios=[0.25, 0.5], method="magnitude",
                      prunenet=PruneNetConfig(episodes=2, seed=3, gradient="baselined"),
                      ffn_policy=FFNPolicyConfig(episodes=3, train_ratio=0.4))
    assert cfg.out_dir == str(tmp_path / "out") and cfg.ratios == (0.25, 0.5)
    assert PruneConfig.from_json(cfg.to_json()) == cfg  # the nested configs come back as themselves
    assert PruneConfig.from_json(PruneConfig(out_dir="x", method="ffn-policy").to_json()).method == "ffn-policy"
    for bad, msg in (({"ratios": ()}, "at least one ratio"), ({"ratios": (1.5,)}, "ratio must be in (0, 1)"),
                     ({"method": "nope"}, "unknown pruning method"), ({"multiple": 0}, "multiple"),
                     ({"prunenet": {"episodes": 0}}, "episodes"), ({"ffn_policy": {"select": "best"}}, "select"),
                     ({"prunenet": {"baseline": True}}, "unknown key"), ({"wat": 1}, "unknown key")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            PruneConfig.from_dict({"out_dir": "x", **bad})
    with pytest.raises(ConfigError, match="out_dir"):
        PruneConfig.from_dict({})


def test_cli_defaults_are_the_config_defaults():
    """One place for every default: the prune/adapt/distill options read the config dataclasses."""
    from edge_downscale.compress.prune import PruneConfig
    from edge_downscale.compress.train.config import DistillConfig, TrainConfig

    params = {cmd: {p.name: p.default for p in cli.commands[cmd].params} for cmd in ("prune", "adapt", "distill")}
    assert params["prune"]["ratios"] == ",".join(f"{r:g}" for r in PruneConfig.ratios)
    for name in ("method", "multiple", "calib_domain", "seed"):
        assert params["prune"][name] == getattr(PruneConfig, name), name
    for name in ("train_ratio", "episodes", "device", "gradient"):
        assert params["prune"][name] == getattr(PruneNetConfig, name), name
    assert FFNPolicyConfig.episodes == PruneNetConfig.episodes and FFNPolicyConfig.train_ratio == PruneNetConfig.train_ratio
    train_fields = {"token_budget", "seq_len", "batch_size", "micro_batch", "lr", "lora_rank", "domain_share",
                    "eval_every", "checkpoint_every", "device", "precision", "seed"}
    for cmd in ("adapt", "distill"):
        for name in train_fields:
            assert params[cmd][name] == getattr(TrainConfig, name), (cmd, name)
        assert params[cmd]["train_mode"] == TrainConfig.train
    for name in ("alpha", "tau", "divergence", "hidden_weight", "cache_topk", "curriculum"):
        assert params["distill"][name] == getattr(DistillConfig, name), name
