import json
import math
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edge_downscale.cli import cli
from edge_downscale.compress.laws import (
    LawPoint, LawsConfig, QualityLawFit, Results, RuntimeLawFit, critical_ratio, fit_quality_law,
    fit_runtime_law, holdout_check, load_results, predict, predict_runtime, save_results,
)
from edge_downscale.errors import EdgeDownscaleError, LawFitError

ALPHA, BETA, GAMMA, DELTA = 1.05, 1.6, 0.4, -0.67
UNIT = 1e6  # D in millions of tokens


def law(L0, r, D, alpha=ALPHA, beta=BETA, gamma=GAMMA):
    return L0 ** alpha * (1 + r) ** beta * (1 + 1 / (D / UNIT + 1)) ** gamma


def synthetic(L0s=(0.8, 0.95, 1.3, 1.6), Ds=(0, 0.5e6, 2e6, 8e6), rs=(0.1, 0.2, 0.3, 0.4, 0.5),
              noise=0.003, seed=0, method=None):
    rng = np.random.default_rng(seed)
    pts = []
    for L0 in L0s:
        for D in Ds:
            for r in rs:
                L = law(L0, r, D) * math.exp(rng.normal(0, noise))
                T = 0.010 * (1 + r) ** DELTA * math.exp(rng.normal(0, noise))
                pts.append(LawPoint(r=r, D=D, L0=L0, L=L, T0=0.010, T=T, method=method))
    return pts


def rel(a, b):
    return abs(a - b) / abs(b)


# ----------------------------------------------------------------------------- fitting
def test_noisy_synthetic_points_recover_every_exponent():
    pts = synthetic()
    q = fit_quality_law(pts, tokens_unit=UNIT)
    assert rel(q.alpha, ALPHA) < 0.05 and rel(q.beta, BETA) < 0.05 and rel(q.gamma, GAMMA) < 0.05
    assert q.r2_log > 0.99 and q.r2 > 0.99 and q.notes == {} and q.offset == 0.0
    assert q.n_points == len(pts) == len(q.residuals) and q.n_params == 3
    assert 0 < np.std(q.residuals) < 0.01  # the noise is 0.3% and is seen, not fit away
    t = fit_runtime_law(pts)
    assert rel(t.delta, DELTA) < 0.05 and t.r2_log > 0.99 and t.r2 > 0.99
    assert t.speedup(0.3) == pytest.approx(1.3 ** -t.delta)
    assert predict_runtime(t, 0.3, 0.02) == pytest.approx(0.02 * 1.3 ** t.delta)
    # the law passes through T0 at r = 0: one timed point determines delta
    one = LawPoint(r=0.3, D=0, L0=1.0, L=1.1, T0=0.01, T=0.01 * 1.3 ** DELTA)
    assert fit_runtime_law([one]).delta == pytest.approx(DELTA, rel=1e-12)


def test_all_D0_and_single_L0_reports_gamma_not_identifiable_and_still_predicts():
    pts = [LawPoint(r=r, D=0, L0=0.85, L=law(0.85, r, 0)) for r in (0.0, 0.1, 0.2, 0.4, 0.5)]
    q = fit_quality_law(pts)
    assert q.beta == pytest.approx(BETA, rel=1e-9)
    assert q.gamma is None and "not identifiable: all points have D=0" in q.notes["gamma"]
    assert "single L0" in q.notes["alpha"] and q.fixed_L0 == 0.85 and q.fixed_D == 0
    assert json.loads(json.dumps(q.to_dict()))["gamma"] is None
    assert predict(q, 0.3) == pytest.approx(law(0.85, 0.3, 0), rel=1e-9)  # an unmeasured ratio
    with pytest.raises(LawFitError, match="gamma is not identifiable"):
        predict(q, 0.3, D=1e6)
    with pytest.raises(LawFitError, match="cannot predict for L0"):
        predict(q, 0.3, L0=0.9)


def test_all_D0_with_several_L0_still_separates_alpha():
    pts = [LawPoint(r=r, D=0, L0=L0, L=law(L0, r, 0)) for L0 in (0.8, 1.2, 2.0) for r in (0.1, 0.3, 0.5)]
    q = fit_quality_law(pts)
    assert q.alpha == pytest.approx(ALPHA, rel=1e-9) and q.beta == pytest.approx(BETA, rel=1e-9)
    assert q.gamma is None and q.offset == pytest.approx(GAMMA * math.log(2), rel=1e-9)
    assert predict(q, 0.25, D=0, L0=1.5) == pytest.approx(law(1.5, 0.25, 0), rel=1e-9)


def test_single_L0_with_several_D_fits_alpha_with_the_constant():
    pts = [LawPoint(r=r, D=D, L0=0.85, L=law(0.85, r, D)) for D in (0, 1e6, 4e6) for r in (0.1, 0.3, 0.5)]
    q = fit_quality_law(pts, tokens_unit=UNIT)
    assert "gamma" not in q.notes and q.gamma == pytest.approx(GAMMA, rel=1e-9)
    assert "fit together with the constant" in q.notes["alpha"]
    assert predict(q, 0.2, D=2e6) == pytest.approx(law(0.85, 0.2, 2e6), rel=1e-9)


# ----------------------------------------------------------------------------- critical ratio
def _fit(alpha, beta, gamma, higher_is_better=False, offset=0.0, fixed_D=None):
    return QualityLawFit(metric="x", higher_is_better=higher_is_better, alpha=alpha, beta=beta, gamma=gamma,
                         offset=offset, fixed_L0=None, fixed_D=fixed_D, tokens_unit=1.0, r2_log=1.0, r2=1.0,
                         residuals=[], n_points=0, n_params=3)


def test_critical_ratio_matches_the_closed_form_and_hits_the_target():
    fit, L0, sigma = _fit(1.05, 0.8, 0.3), 0.9, 1.1
    c = critical_ratio(fit, sigma, L0)
    assert c.r_crit == pytest.approx((sigma * L0 ** (1 - 1.05)) ** (1 / 0.8) - 1, rel=1e-12)
    assert c.D is None and "D -> inf" in c.note
    assert predict(fit, c.r_crit, D=math.inf, L0=L0) == pytest.approx(sigma * L0, rel=1e-12)
    assert predict(fit, c.r_crit, D=1e9, L0=L0) > sigma * L0 * (1 - 1e-6)  # finite D is never better
    # alpha = 1 is the paper's sigma^(1/beta) - 1
    assert critical_ratio(_fit(1.0, 0.8, 0.3), sigma, L0).r_crit == pytest.approx(sigma ** (1 / 0.8) - 1)


def test_critical_ratio_for_accuracy_and_degenerate_cases():
    acc = _fit(1.0, -1.05, -0.2, higher_is_better=True)
    c = critical_ratio(acc, 0.9, 0.7)
    assert 0 < c.r_crit < 1 and predict(acc, c.r_crit, D=math.inf, L0=0.7) == pytest.approx(0.63)
    flat = critical_ratio(_fit(1.0, -0.1, 0.3), 1.1, 0.9)  # loss that falls with r: no critical ratio
    assert flat.r_crit is None and "does not degrade" in flat.note
    missed = critical_ratio(_fit(1.0, 0.8, 0.3, offset=0.5), 1.1, 0.9)  # L(r=0) = e^0.5 L0 > 1.1 L0
    assert missed.r_crit is None and "missed even at r = 0" in missed.note
    no_gamma = _fit(1.0, 0.8, None, offset=0.05, fixed_D=0.0)
    c = critical_ratio(no_gamma, 1.2, 0.9)
    assert c.D == 0.0 and "not the D -> inf limit" in c.note
    assert predict(no_gamma, c.r_crit, D=0, L0=0.9) == pytest.approx(1.2 * 0.9)
    with pytest.raises(LawFitError):
        critical_ratio(no_gamma, -1.0, 0.9)


# ----------------------------------------------------------------------------- holdout
def test_holdout_predicts_exact_law_within_one_percent():
    pts = synthetic(noise=0.0)
    h = holdout_check(pts, 0.3, tokens_unit=UNIT)
    assert len(h.quality) == 16 and all(row["ratio"] == 0.3 for row in h.quality)
    assert h.max_rel_error < 0.01 and h.runtime_max_rel_error < 0.01 and len(h.runtime) == 16
    with pytest.raises(LawFitError, match="no point at ratio 0.35"):
        holdout_check(pts, 0.35)


def test_holdout_flags_data_that_does_not_follow_the_law():
    # quality that explodes past r = 0.4 (as measured without recovery) is not a power law in (1+r)
    pts = [LawPoint(r=r, D=0, L0=0.85, L=0.85 * (1 + 8 * r ** 4)) for r in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert holdout_check(pts, 0.5).max_rel_error > 0.05
    # an outlier at the held-out ratio must not leak into the fit: the prediction is the exact law
    pts = [LawPoint(r=r, D=0, L0=0.85, L=law(0.85, r, 0) * (1.2 if r == 0.3 else 1.0)) for r in (0.1, 0.2, 0.3, 0.4)]
    assert holdout_check(pts, 0.3).quality[0]["predicted"] == pytest.approx(law(0.85, 0.3, 0), rel=1e-9)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: fit_quality_law([]), "no points"),
    (lambda: LawPoint(r=1.5, D=0, L0=1.0, L=1.1), r"outside \[0, 1\)"),
    (lambda: LawPoint(r=0.2, D=0, L0=1.0, L=-1.1), "must be positive"),
    (lambda: LawPoint(r=0.2, D=-5, L0=1.0, L=1.1), "negative"),
    (lambda: LawPoint(r=0.2, D=0, L0=1.0, L=1.1, T0=0.01), "both"),
    (lambda: fit_quality_law([LawPoint(r=0.1, D=0, L0=0.8, L=1.0), LawPoint(r=0.3, D=5, L0=0.9, L=1.2)]),
     "2 point.* for 3 free parameters"),
    (lambda: fit_quality_law([LawPoint(r=0.3, D=0, L0=0.8, L=1.0), LawPoint(r=0.3, D=0, L0=0.8, L=1.1)]),
     "two compression ratios"),
    # every dense value grows with r exactly as (1 + r): alpha and beta cannot be told apart
    (lambda: fit_quality_law([LawPoint(r=r, D=0, L0=1 + r, L=1 + 2 * r) for r in (0.1, 0.2, 0.3, 0.4)]),
     "collinear"),
    (lambda: fit_runtime_law([LawPoint(r=0.2, D=0, L0=1.0, L=1.1)]), "runtimes"),
])
def test_bad_points_are_law_fit_errors(make, match):
    with pytest.raises(LawFitError, match=match):
        make()


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


@pytest.mark.parametrize("content, match", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ({"points": []}, "no points"),
    ({"points": [{"ratio": 1.5, "dense": 1, "value": 1}]}, "point 0: ratio 1.5"),
    ({"points": [{"ratio": 0.1, "dense": 1, "value": 1, "tokns": 3}]}, "unknown key.*tokns"),
    ({"points": [{"ratio": 0.1, "dense": 1}]}, "missing key.*value"),
    ({"points": [{"ratio": 0.1, "dense": 1, "value": 1}], "metric": "bleu"}, "higher_is_better"),
])
def test_bad_results_files_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "RESULTS.json"
    if content is not None:
        _write(path, content)
    with pytest.raises(LawFitError, match=match) as e:
        load_results(path)
    assert "\n" not in str(e.value) and isinstance(e.value, EdgeDownscaleError)


# ----------------------------------------------------------------------------- round trips
def test_results_fits_and_config_round_trip(tmp_path):
    pts = synthetic(Ds=(0, 1e6), L0s=(0.9, 1.1), method="prunenet")
    save_results(Results(pts, tokens_unit=UNIT), tmp_path / "r.json")
    back = load_results(tmp_path / "r.json")
    assert back.points == pts and back.tokens_unit == UNIT and back.higher_is_better is False
    q = fit_quality_law(pts, tokens_unit=UNIT)
    assert QualityLawFit.from_dict(json.loads(json.dumps(q.to_dict()))) == q
    t = fit_runtime_law(pts)
    assert RuntimeLawFit.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    cfg = LawsConfig(method="prunenet", target_ratio=1.2, holdout=(0.3,))
    assert LawsConfig.from_json(cfg.to_json()) == cfg


def test_importing_laws_imports_neither_torch_nor_matplotlib():
    code = "import sys, edge_downscale.compress.laws; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ----------------------------------------------------------------------------- CLI
def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_bad_file_is_a_one_line_error(tmp_path):
    for path in (tmp_path / "missing.json", _write(tmp_path / "bad.json", {"points": [
            {"ratio": 0.2, "dense": 1.0, "value": -3}]})):
        res = run("laws", "fit", path)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output


def test_cli_fits_reports_plots_and_writes_json(tmp_path):
    pts = synthetic(method="prunenet") + synthetic(L0s=(0.9,), Ds=(0,), method="random")
    results = tmp_path / "RESULTS.json"
    save_results(Results(pts, tokens_unit=UNIT), results)
    res = run("laws", "fit", results)
    assert res.exit_code == 2 and "--method" in res.output  # two methods: choose one

    png, out = tmp_path / "fit.png", tmp_path / "fit.json"
    # the synthetic law does not pass through L0 at r = 0 (alpha != 1, gamma != 0): fit it as generated
    res = run("laws", "fit", results, "--method", "prunenet", "--target", 1.5, "--holdout", 0.3,
              "--plot", png, "--json", out, "--no-dense")
    assert res.exit_code == 0, res.output
    assert "beta" in res.output and "delta" in res.output and "r_crit" in res.output and "holdout r=0.3" in res.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    report = json.loads(out.read_text())
    assert report["method"] == "prunenet" and report["n_points"] == 80
    assert rel(report["quality"]["beta"], BETA) < 0.05 and rel(report["runtime"]["delta"], DELTA) < 0.05
    assert report["holdout"][0]["max_rel_error"] < 0.05
    assert all(c["sigma"] == 1.5 and 0 < c["r_crit"] < 1 for c in report["critical"])

    res = run("laws", "fit", results, "--method", "random")  # all D=0, one L0: gamma is n/a
    assert res.exit_code == 0, res.output
    assert "6 points" in res.output  # 5 measured ratios + the dense model at r = 0 (default)
    assert "n/a" in res.output and "not identifiable" in res.output


def test_dense_points_anchor_the_fit_at_r0():
    from edge_downscale.compress.laws import LawPoint, fit_quality_law, predict, with_dense_points

    # exact law with alpha = 1 passes through L0 at r = 0, so adding dense points keeps beta
    pts = [LawPoint(r, 0, L0, L0 * (1 + r) ** 2.0, 1.0, (1 + r) ** -0.6, "m") for L0 in (0.8, 1.0, 1.3)
           for r in (0.1, 0.2, 0.5)]
    anchored = with_dense_points(pts)
    assert len(anchored) == len(pts) + 3 and all(p.L == p.L0 for p in anchored if p.r == 0)
    assert with_dense_points(anchored) == anchored  # idempotent
    fit = fit_quality_law(anchored)
    assert abs(fit.beta - 2.0) < 1e-6 and abs(predict(fit, 0.0, 0, 1.3) - 1.3) < 1e-6
