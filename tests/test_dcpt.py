import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from edge_downscale.cli import cli
from edge_downscale.compress.laws.dcpt import (
    DcptFit, DcptPoint, fit_dcpt, load_dcpt_points, predict_dcpt, propose_share, save_dcpt_points,
)
from edge_downscale.errors import EdgeDownscaleError, LawFitError

# True law with D in raw tokens divided by 1e6 (B below is per million tokens).
TRUE = dict(E=1.8, B=3.0, C=0.25, eta=0.6, beta=0.35, gamma=0.5)
GEN = dict(E=2.1, B=1.5, C=0.3, eta=0.8, beta=0.3, gamma=0.7)  # general loss, in the general share 1 - r
EPS, MTOK = 0.01, 1e6
DS = (1e6, 2e6, 4e6, 8e6, 16e6, 32e6)
RS = (0.1, 0.25, 0.5, 0.75, 1.0)
HELD_OUT = [(3e6, 0.4), (24e6, 0.6), (1.5e6, 0.9), (12e6, 0.15), (6e6, 0.33)]  # none on the fitting grid


def law(D, x, p=TRUE):
    return p["E"] + p["B"] * x ** p["eta"] / (D / MTOK) ** p["beta"] + p["C"] / (x + EPS) ** p["gamma"]


def synthetic(noise=1e-3, seed=0, Ds=DS, rs=RS):
    """Domain loss from TRUE at share r; general loss from GEN at the general share 1 - r (none at r = 1)."""
    rng = np.random.default_rng(seed)
    pts = []
    for D in Ds:
        for r in rs:
            dom = law(D, r) * (1 + rng.normal(0, noise))
            gen = law(D, 1 - r, GEN) * (1 + rng.normal(0, noise)) if r < 1 else None
            pts.append(DcptPoint(D, r, dom, gen))
    return pts


def raw_B(fit):
    """B for D in millions of tokens (the fit counts D in its own tokens_unit)."""
    return fit.B * (fit.tokens_unit / MTOK) ** fit.beta


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def noisy_fit():
    return fit_dcpt(synthetic())


# ----------------------------------------------------------------------------- fitting
def test_noisy_points_predict_held_out_shares_and_budgets_and_recover_parameters(noisy_fit):
    f = noisy_fit
    assert f.target == "domain" and f.n_points == 30 and f.n_params == 6 and f.notes == {}
    assert f.fixed_r is None and f.fixed_D is None and f.eps == EPS
    assert f.r2 > 0.9999 and 0 < f.rmse < 0.01  # 0.1% noise on losses ~2.5-4.5: seen, not fit away
    for D, r in HELD_OUT:
        assert rel(predict_dcpt(f, D, r), law(D, r)) < 2e-3, (D, r)
    assert rel(f.E, TRUE["E"]) < 0.03 and rel(f.C, TRUE["C"]) < 0.1 and rel(raw_B(f), TRUE["B"]) < 0.1
    for name in ("eta", "beta", "gamma"):
        assert rel(getattr(f, name), TRUE[name]) < 0.05, name


def test_noiseless_points_are_fitted_exactly():
    f = fit_dcpt(synthetic(noise=0.0))
    assert f.rmse < 1e-6
    for name in ("E", "C", "eta", "beta", "gamma"):
        assert rel(getattr(f, name), TRUE[name]) < 1e-3, name
    assert rel(raw_B(f), TRUE["B"]) < 1e-3


def test_predict_is_vectorised_and_checks_its_domain(noisy_fit):
    D = np.array([2e6, 8e6, 3e7])
    r = np.array([[0.2], [0.7]])  # broadcasts to (2, 3)
    out = predict_dcpt(noisy_fit, D, r)
    assert out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(predict_dcpt(noisy_fit, 3e7, 0.7), rel=1e-12)
    assert isinstance(predict_dcpt(noisy_fit, 2e6, 0.2), float)
    assert predict_dcpt(noisy_fit, 2e6, 0.2) > predict_dcpt(noisy_fit, 3e7, 0.2)  # more tokens, lower loss
    for D, r in ((0, 0.5), (-1e6, 0.5), (1e6, 0.0), (1e6, 1.2), (float("nan"), 0.5)):
        with pytest.raises(LawFitError):
            predict_dcpt(noisy_fit, D, r)


def test_general_fit_uses_the_general_share_one_minus_r():
    pts = synthetic()
    g = fit_dcpt(pts, "general")
    assert g.target == "general" and g.n_points == 24  # r = 1 runs have no replay loss
    assert g.r2 > 0.999
    for D, r in HELD_OUT:
        if r <= 0.75:  # inside the measured general shares 1 - r in [0.25, 0.9]; r = 0.9 would extrapolate
            assert rel(predict_dcpt(g, D, r), law(D, 1 - r, GEN)) < 3e-3, (D, r)
    # the same numbers read with r instead of 1 - r are a different law: the domain fit of them is worse
    swapped = [DcptPoint(p.D, p.r, p.general_loss) for p in pts if p.general_loss is not None]
    assert fit_dcpt(swapped).rmse > 2 * g.rmse


def test_one_share_leaves_share_terms_unidentified_and_predicts_only_there():
    pts = [p for p in synthetic(noise=0.0) if p.r == 0.5]
    f = fit_dcpt(pts)
    assert f.eta is None and f.C is None and f.gamma is None and f.fixed_r == 0.5 and f.n_params == 3
    assert {"eta", "C", "gamma"} <= set(f.notes) and "r=0.5" in f.notes["gamma"]
    assert predict_dcpt(f, 3e6, 0.5) == pytest.approx(law(3e6, 0.5), rel=1e-5)
    with pytest.raises(LawFitError, match="only r=0.5"):
        predict_dcpt(f, 3e6, 0.6)
    with pytest.raises(LawFitError, match="cannot compare shares"):
        propose_share(f, 3e6)


def test_one_budget_leaves_beta_unidentified_and_two_shares_are_flagged():
    pts = [p for p in synthetic(noise=0.0) if p.D == 4e6]
    f = fit_dcpt(pts)
    assert f.beta is None and f.fixed_D == 4e6 and "not identifiable" in f.notes["beta"]
    assert f.rmse < 1e-4
    with pytest.raises(LawFitError, match="only D=4e"):
        predict_dcpt(f, 8e6, 0.5)
    two = fit_dcpt([p for p in synthetic(noise=0.0) if p.r in (0.25, 0.75)])
    assert all("only two shares" in two.notes[k] for k in ("E", "C", "gamma"))


def test_too_few_points_and_degenerate_data_are_refused():
    with pytest.raises(LawFitError, match="5 point.*6 free parameters"):
        fit_dcpt(synthetic()[::6])  # 5 points, each at a new (D, r)
    with pytest.raises(LawFitError, match="several budgets and shares"):
        fit_dcpt([DcptPoint(1e6, 0.5, 3.0), DcptPoint(1e6, 0.5, 3.1)])
    with pytest.raises(LawFitError, match="no point has a general loss"):
        fit_dcpt([DcptPoint(1e6, 0.5, 3.0)], "general")
    with pytest.raises(EdgeDownscaleError, match="target"):
        fit_dcpt(synthetic(), "replay")


def test_fit_json_round_trip(noisy_fit, tmp_path):
    text = json.dumps(noisy_fit.to_dict())
    back = DcptFit.from_dict(json.loads(text))
    assert back == noisy_fit
    assert predict_dcpt(back, 5e6, 0.3) == predict_dcpt(noisy_fit, 5e6, 0.3)
    data = noisy_fit.to_dict()
    data.pop("beta")
    with pytest.raises(LawFitError, match="missing key"):
        DcptFit.from_dict(data)
    with pytest.raises(LawFitError, match="target"):
        DcptFit.from_dict(noisy_fit.to_dict() | {"target": "code"})


# ----------------------------------------------------------------------------- proposing a share
def hand_fit(target="domain", **params):
    """eta = gamma = 1, so the domain optimum is analytic: d/dr [B' r + C/(r + eps)] = 0 -> r* = sqrt(C/B') - eps."""
    p = dict(E=2.0, B=4.0, C=0.18, eta=1.0, beta=0.5, gamma=1.0) | params
    return DcptFit(target=target, **p, eps=EPS, tokens_unit=MTOK, fixed_r=None, fixed_D=None,
                   r_range=[0.1, 1.0], D_range=[1e6, 1e8], rmse=0.0, r2=1.0, residuals=[], n_points=30,
                   n_params=6)


def test_propose_share_finds_the_analytic_optimum_and_it_grows_with_the_budget():
    f = hand_fit()
    # D = 4e6: B' = 4 / 4^0.5 = 2 -> r* = sqrt(0.18 / 2) - 0.01 = 0.29
    prop = propose_share(f, 4e6)
    assert prop["share"] == pytest.approx(0.29, abs=1e-9) and prop["unconstrained_share"] == prop["share"]
    assert prop["domain_loss"] == pytest.approx(2.0 + 2 * 0.29 + 0.18 / 0.30, rel=1e-12)
    assert prop["general_loss"] is None and prop["constraint_active"] is False and "minimises" in prop["reason"]
    # the same optimum by brute force on a grid ten times finer
    fine = np.linspace(1e-4, 1.0, 10_000)
    assert prop["share"] == pytest.approx(fine[np.argmin(predict_dcpt(f, 4e6, fine))], abs=1e-3)
    # D = 64e6: B' = 4 / 8 = 0.5 -> r* = sqrt(0.36) - 0.01 = 0.59
    assert propose_share(f, 64e6)["share"] == pytest.approx(0.59, abs=1e-9)
    # a huge budget: the training term vanishes and all-domain wins
    big = propose_share(f, 1e14)
    assert big["share"] == 1.0 and "r = 1" in big["reason"] and any("extrapolated" in c for c in big["caveats"])
    assert propose_share(f, 4e6, grid=[0.1, 0.3, 0.5])["share"] == 0.3


def test_general_constraint_moves_the_share_towards_more_replay():
    dom = hand_fit()
    # general loss 2 + 0.5 / (1 - r + eps): rises with r (forgetting); its minimum is at the smallest r
    gen = hand_fit("general", E=2.0, B=0.0, C=0.5)
    prop = propose_share(dom, 4e6, gen, max_general_increase=0.05)
    grid = np.linspace(0.001, 1.0, 1000)
    g_min = 2.0 + 0.5 / (1 - 0.001 + EPS)
    r_max = 1 + EPS - 0.5 / (1.05 * g_min - 2.0)  # largest r with 2 + 0.5/(1 - r + eps) <= 1.05 g_min
    assert 0.15 < r_max < 0.29  # binding: the domain optimum 0.29 is beyond it
    assert prop["constraint_active"] is True
    assert prop["share"] == pytest.approx(grid[grid <= r_max].max(), abs=1e-9)
    assert prop["share"] < prop["unconstrained_share"] == pytest.approx(0.29)
    assert prop["general_loss_min"] == pytest.approx(g_min) and prop["general_min_share"] == pytest.approx(0.001)
    assert prop["general_loss"] <= prop["general_loss_limit"] == pytest.approx(1.05 * g_min)
    assert prop["domain_loss"] > prop["unconstrained_domain_loss"]
    assert "above the limit" in prop["reason"]
    # a looser limit stops binding; a tighter one moves the share further towards replay
    loose = propose_share(dom, 4e6, gen, max_general_increase=1.0)
    assert loose["share"] == pytest.approx(0.29) and loose["constraint_active"] is False
    assert "keeps the predicted general loss" in loose["reason"]
    assert propose_share(dom, 4e6, gen, max_general_increase=0.01)["share"] < prop["share"]
    with pytest.raises(LawFitError, match="general fit"):
        propose_share(dom, 4e6, dom)
    with pytest.raises(EdgeDownscaleError, match="max_general_increase"):
        propose_share(dom, 4e6, gen, max_general_increase=-0.1)


# ----------------------------------------------------------------------------- loading
def write_run(path, share, evals, tail=""):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"kind": "cpt", "domain_share": share}))
    lines = [json.dumps({"event": "start"})]
    for rec in evals:
        lines.append(json.dumps({"event": "step", "step": 1, "tokens": rec.get("tokens", 0), "loss": 9.0}))
        lines.append(json.dumps({"event": "eval", "step": 1, **rec}))
    (path / "train_log.jsonl").write_text("\n".join(lines) + "\n" + tail)
    return path


def test_run_directory_and_points_file_load_together(tmp_path):
    run = write_run(tmp_path / "run-a", 0.5, [
        {"tokens": 0, "val_loss": 5.0, "replay_val_loss": 5.5},  # before training: skipped
        {"tokens": 1000, "val_loss": 3.2, "replay_val_loss": 3.6},
        {"tokens": 2000, "val_loss": 3.0, "replay_val_loss": None},
        {"tokens": 2000, "val_loss": 2.9},  # logged again after a resume: the last one wins
    ], tail='{"event": "eval", "tokens": 3000, "val')  # a write cut short at the end: ignored
    points_file = tmp_path / "points.json"
    save_dcpt_points([DcptPoint(5e6, 1.0, 2.5), DcptPoint(1e7, 0.25, 2.7, 3.1)], points_file)
    pts = load_dcpt_points([run, str(points_file)])
    assert [(p.D, p.r, p.loss, p.general_loss) for p in pts] == [
        (1000, 0.5, 3.2, 3.6), (2000, 0.5, 2.9, None), (5e6, 1.0, 2.5, None), (1e7, 0.25, 2.7, 3.1)]
    assert load_dcpt_points(points_file) == pts[2:]


@pytest.mark.parametrize("make, match", [
    (lambda d: d / "missing.json", "no such file or directory"),
    (lambda d: d, "no run.json"),
    (lambda d: write_run(d / "r", 1.5, [{"tokens": 10, "val_loss": 3.0}]), "share 1.5 is outside"),
    (lambda d: write_run(d / "r", 0.5, [{"tokens": 10}]), 'line 3: an eval line needs "tokens" and "val_loss"'),
    (lambda d: write_run(d / "r", 0.5, [{"tokens": 10, "val_loss": float("nan")}]), "line 3: 'loss' must be finite"),
    (lambda d: write_run(d / "r", 0.5, [{"tokens": 0, "val_loss": 3.0}]), "no eval line after training started"),
    (lambda d: _file(d / "p.json", "{not json"), "not valid JSON"),
    (lambda d: _file(d / "p.json", '{"points": []}'), "no points"),
    (lambda d: _file(d / "p.json", '{"rows": []}'), 'a "points" list'),
    (lambda d: _file(d / "p.json", '{"points": [{"tokens": 1e6, "share": 0, "loss": 2}]}'), "point 0: share 0 is outside"),
    (lambda d: _file(d / "p.json", '{"points": [{"tokens": 1e6, "share": 0.5, "loss": NaN}]}'), "'loss' must be finite"),
    (lambda d: _file(d / "p.json", '{"points": [{"tokens": 1e6, "share": 0.5}]}'), "missing key"),
    (lambda d: _file(d / "p.json", '{"points": [{"tokens": 1e6, "share": 0.5, "loss": 2, "x": 1}]}'), "unknown key"),
])
def test_bad_inputs_are_one_line_law_fit_errors(tmp_path, make, match):
    with pytest.raises(LawFitError, match=match) as e:
        load_dcpt_points(make(tmp_path))
    assert "\n" not in str(e.value)


def _file(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- CLI
def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_fits_proposes_plots_and_writes_json(tmp_path):
    pts = synthetic()
    points_file, png, out = tmp_path / "points.json", tmp_path / "dcpt.png", tmp_path / "dcpt.json"
    save_dcpt_points(pts, points_file)
    res = run_cli("laws", "dcpt", points_file, "--budget", 2e7, "--plot", png, "--json", out)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    share = report["proposal"]["share"]
    assert f"proposed domain share at D = 2e+07 tokens: r = {share:.3f}" in res.output
    assert "domain " in res.output and "general " in res.output and "gamma" in res.output
    # the CLI's proposal is the library's, from the same fits
    dom, gen = DcptFit.from_dict(report["domain"]), DcptFit.from_dict(report["general"])
    assert share == propose_share(dom, 2e7, gen, 0.05)["share"]
    assert rel(predict_dcpt(dom, 3e6, 0.4), law(3e6, 0.4)) < 2e-3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_general_losses_and_bad_sources(tmp_path):
    points_file = tmp_path / "points.json"
    save_dcpt_points([DcptPoint(p.D, p.r, p.loss) for p in synthetic()], points_file)
    res = run_cli("laws", "dcpt", points_file)
    assert res.exit_code == 0, res.output
    assert "at D = 3.2e+07 tokens" in res.output and "no general (replay) losses measured" in res.output
    for bad in (tmp_path / "missing.json", tmp_path):
        res = run_cli("laws", "dcpt", bad)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    assert "Usage" in run_cli("laws", "dcpt").output  # SOURCES are required
    assert "r^eta / D^beta" in run_cli("laws", "dcpt", "--help").output


def test_points_reject_values_outside_the_law():
    for kwargs, match in ((dict(D=0, r=0.5, loss=2.0), "D = 0"), (dict(D=1e6, r=0.5, loss=math.inf), "finite"),
                          (dict(D=1e6, r=0.5, loss=2.0, general_loss=-1.0), "general_loss")):
        with pytest.raises(LawFitError, match=match):
            DcptPoint(**kwargs)
