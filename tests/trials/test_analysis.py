"""Effect estimation: exact recovery on noise-free constructed trials, the calibration and measurement model, and the
analysis judged over many simulated trials — bias and interval coverage of the effect estimated from image-measured
severities (measurement model fitted from the evaluator on real phantom images) against the simulated effect."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from kgface.errors import UserError
from kgface.resources import conf_dir
from kgface.trials.analysis import (NotIdentifiable, analysed_rows, check_identifiable, coverage_study,
                                    estimate_effects, patient_effects)
from kgface.trials.design import design_from_config, simulate, true_effects
from kgface.trials.measurement import calibration_problem, fit_calibration, fit_measurement_model


def trial_cfg(**kw):
    cfg = OmegaConf.load(conf_dir() / "trial" / "acne_ab.yaml")
    for key, value in kw.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


NOISE_FREE = {"severity.noise.sd": 0.0, "severity.baseline.sd": 0.2, "severity.treatments.A.tau": 1.0,
              "severity.treatments.A.tau_off": 1.0, "severity.treatments.B.tau": 1.0,
              "severity.treatments.B.tau_off": 1.0, "schedule.block_days": 14, "schedule.baseline_days": 14,
              "analysis.skip_days": 8}


@pytest.mark.parametrize("unit, cov", [("block", "nonrobust"), ("day", "hac"), ("day", "cluster")])
def test_noise_free_trial_recovers_the_effects(unit, cov):
    d = design_from_config(trial_cfg(**NOISE_FREE, **{"analysis.unit": unit, "analysis.cov": cov}))
    table, patients = simulate(d, 0)
    assert (table["expected_severity"] > 0).all()
    est = estimate_effects(table, "true_severity", d, true_effects(d, patients)).set_index("effect")
    assert list(est.index) == ["A", "B", "A - B"]
    # what is left is the carry-over after 8 of 1-day time constants: exp(-9) of the effect
    assert est.loc["A", "estimate"] == pytest.approx(-0.8, abs=1e-3)
    assert est.loc["B", "estimate"] == pytest.approx(-0.3, abs=1e-3)
    assert est.loc["A - B", "estimate"] == pytest.approx(-0.5, abs=1e-3)
    assert (est["high"] - est["low"] < 0.01).all()


def test_hac_with_no_lags_is_the_sandwich_within_patients_not_the_model_errors():
    """cov=hac, hac_lags=0: White's heteroskedasticity-robust errors (statsmodels HC1: HC0 x n / (n - k)), not the
    plain OLS ones (which they equal for a balanced two-level regressor: A is on a quarter of the days here)."""
    import statsmodels.api as sm

    from kgface.trials.analysis import _fit

    rng = np.random.default_rng(0)
    x = pd.DataFrame({"const": 1.0, "A": np.tile([0.0, 0.0, 0.0, 1.0], 20)})
    y = 0.5 * x["A"].to_numpy() + rng.normal(size=80) * (0.2 + 2.0 * x["A"].to_numpy())  # noisier under A
    groups, w = np.repeat(np.arange(4), 20), np.ones(80)
    hac0, plain = _fit(y, x, groups, "hac", 0, w), _fit(y, x, groups, "nonrobust", 0, w)
    white = sm.WLS(y, x, weights=w).fit(cov_type="HC1")
    assert np.allclose(hac0.bse, white.bse) and abs(hac0.bse["A"] / plain.bse["A"] - 1) > 0.2


def test_per_patient_effects_find_each_patients_own_effect():
    d = design_from_config(trial_cfg(**NOISE_FREE, **{"severity.treatments.A.sd": 0.3}))
    table, patients = simulate(d, 4)
    truths = {pid: p.effects for pid, p in patients.items()}
    assert (table["expected_severity"] > 0).all()  # nothing clipped: the known answer holds
    assert np.std([t["A"] for t in truths.values()]) > 0.05
    pp = patient_effects(table, "true_severity", d, truths=truths)
    a = pp[pp["effect"] == "A"].set_index("patient_id")
    for pid, t in truths.items():
        assert a.loc[pid, "estimate"] == pytest.approx(t["A"], abs=2e-3)
    # pooled without the trend term (every patient has the same block counts), the estimate is the patients' mean
    # effect; with it, a design-weighted mean (docs/trials.md)
    flat = design_from_config(trial_cfg(**NOISE_FREE, **{"severity.treatments.A.sd": 0.3, "analysis.trend": False}))
    pooled = estimate_effects(table, "true_severity", flat, true_effects(d, patients)).set_index("effect")
    assert pooled.loc["A", "truth"] == pytest.approx(np.mean([t["A"] for t in truths.values()]))
    assert pooled.loc["A", "estimate"] == pytest.approx(pooled.loc["A", "truth"], abs=2e-3)


def test_per_patient_intervals_hold_under_autocorrelated_noise():
    """One patient's own fit uses its block means: with AR(1) noise of lag-1 correlation 0.5, its daily rows treated
    as independent days covered the truth in 0.74-0.77 of 95% intervals (measured: docs/trials.md)."""
    d = design_from_config(trial_cfg(**{"severity.noise.ar": 0.5}))
    covered = []
    for r in range(50):
        table, patients = simulate(d, 100 + r)
        pp = patient_effects(table, "true_severity", d, truths={k: p.effects for k, p in patients.items()})
        assert set(pp["unit"]) == {"block"} and (pp["df"] == 1).all()  # 5 block means, 4 parameters
        covered += list(pp["covered"].astype(float))
    assert 0.9 <= np.mean(covered) <= 0.99, np.mean(covered)
    # a patient with too few blocks for the model (one cycle, the trend term) falls back to its daily rows
    one = design_from_config(trial_cfg(**{"schedule.cycles": 1, "patients": 2}))
    table, _ = simulate(one, 0)
    fallback = patient_effects(table, "true_severity", one)
    assert set(fallback["unit"]) == {"day"} and (fallback["df"] == 15 - 4).all()  # 3 blocks x 5 analysed days


def test_block_means_weigh_by_their_analysed_days():
    """A 7-day baseline beside 14-day blocks (2 vs 9 analysed days): each block mean weighs by its days, the
    weighted least-squares answer computed here from the block means (plain OLS gave 0.91-0.92 coverage)."""
    from kgface.trials.analysis import analysed_rows

    d = design_from_config(trial_cfg(**{"schedule.baseline_days": 7, "schedule.block_days": 14}))
    table, _ = simulate(d, 0)
    rows = analysed_rows(table, "true_severity", "block")
    assert sorted(set(rows["days"])) == [2, 9]
    x = np.column_stack([np.ones(len(rows)), rows["treatment"] == "A", rows["treatment"] == "B"]
                        + [rows["patient_id"] == pid for pid in sorted(set(rows["patient_id"]))[1:]]
                        + [rows["day"]]).astype(float)
    w, y = rows["days"].to_numpy(float), rows["true_severity"].to_numpy(float)
    beta = np.linalg.solve(x.T @ (w[:, None] * x), x.T @ (w * y))
    resid = y - x @ beta
    cov = (w * resid ** 2).sum() / (len(y) - x.shape[1]) * np.linalg.inv(x.T @ (w[:, None] * x))
    est = estimate_effects(table, "true_severity", d).set_index("effect")
    assert est.loc["A", "estimate"] == pytest.approx(beta[1], abs=1e-10)
    assert est.loc["B", "estimate"] == pytest.approx(beta[2], abs=1e-10)
    assert est.loc["A", "se"] == pytest.approx(np.sqrt(cov[1, 1]), rel=1e-8)
    assert est.loc["A - B", "se"] == pytest.approx(np.sqrt(cov[1, 1] + cov[2, 2] - 2 * cov[1, 2]), rel=1e-8)


def test_design_checks_measure_the_run_in_bias_and_warn():
    """The steady state is the estimand; with no carry-over (tau_off ~0), alternating blocks (A B A B: no block
    follows its own treatment) and no trend term, each treatment block starts from 0, so the analysis of the
    noise-free course finds effect x mean(1 - exp(-n / tau)) over the analysed days n = skip + 1 .. block_days."""
    from kgface.trials.analysis import design_checks

    slow_on = {**{f"severity.treatments.{t}.tau_off": 0.01 for t in "AB"}, "severity.treatments.A.tau": 3.0,
               "severity.treatments.B.tau": 3.0, "analysis.trend": False, "schedule.order": "alternating"}
    d = design_from_config(trial_cfg(**slow_on))
    table, patients = simulate(d, 0)
    checks, notes = design_checks(table, d, patients)
    bias = checks.set_index("effect")["runin_bias"]
    shortfall = np.mean([np.exp(-n / 3.0) for n in range(6, 11)])  # skip 5 of 10-day blocks
    assert bias["A"] == pytest.approx(0.8 * shortfall, abs=1e-4)  # the table keeps 4 decimals
    assert bias["B"] == pytest.approx(0.3 * shortfall, abs=1e-4)
    assert (checks["model_gap"].abs() < 1e-4).all()  # every patient shares the effects, no drift
    assert (checks["runin_bias_se"] == checks["runin_bias"] / checks["se"]).all() and (checks["se"] > 0).all()
    assert len(notes) == 1 and "trial.analysis.skip_days=5" in notes[0] and "12+ days" in notes[0], notes
    # per-patient drifts and effects that differ are not run-in: the bias stays the onset's (the analysis is linear
    # in the outcome), and what one slope cannot follow goes to model_gap
    drifting = design_from_config(trial_cfg(**{**slow_on, "severity.trend.sd": 0.05, "analysis.trend": True,
                                               "schedule.cycles": 3, "schedule.order": "randomised"}))
    table, patients = simulate(drifting, 0)
    checks = design_checks(table, drifting, patients)[0].set_index("effect")
    assert checks["model_gap"].abs().max() > 0.01  # four different drifts, one slope
    assert np.ptp([p.trend for p in patients.values()]) > 0.05
    flat = design_from_config(trial_cfg(**{**slow_on, "analysis.trend": True, "schedule.cycles": 3,
                                           "schedule.order": "randomised"}))
    same_orders, flat_patients = simulate(flat, 0)
    assert same_orders["treatment"].equals(table["treatment"])  # drifts change no order
    flat_bias = design_checks(same_orders, flat, flat_patients)[0].set_index("effect")["runin_bias"]
    assert checks["runin_bias"].to_numpy() == pytest.approx(flat_bias.to_numpy(), abs=2e-4)


def test_design_checks_stay_quiet_for_sound_designs_and_name_the_others():
    from kgface.trials.analysis import design_checks

    def checks(**kw):
        d = design_from_config(trial_cfg(**kw))
        table, patients = simulate(d, 0)
        return design_checks(table, d, patients)

    # the default: a run-in bias of 0.13 / 0.04 / 0.17 standard errors (A / B / A - B), nothing to say
    default, notes = checks()
    assert notes == [] and (default["runin_bias_se"].abs() < 0.2).all() and (default["runin_bias"] > 0).all()
    # no true effect at all (a placebo against placebo): the 4-decimal residue is no warning
    null, notes = checks(**{"severity.treatments.A.effect": 0.0, "severity.treatments.B.effect": 0.0})
    assert notes == [] and (null["runin_bias"].abs() < 1e-3).all()
    # a baseline near 0: the analysed days clipped at the bound are named
    notes = checks(**{"severity.baseline.mean": 0.5})[1]
    assert len(notes) == 1 and "of the analysed days sit at the scale's bounds [0, 3]" in notes[0]
    # one cycle: each patient's own intervals fall back to daily rows, and the report says so
    notes = checks(**{"schedule.cycles": 1, "patients": 6})[1]
    assert len(notes) == 1 and notes[0].startswith("P01, P02, P03, P04, P05, P06 have too few blocks"), notes
    # with the trend term (the default) a patient's one order leaves the trend to the drift inside blocks: said
    assert "only by the drift inside each block" in notes[0]
    assert "(3 for 4 parameters)" in notes[0] and notes[0].endswith("set trial.schedule.cycles >= 2 for per-patient "
                                                                       "intervals from block means")
    # one treatment: two cycles give 3 block means for 3 parameters, which do separate the trend: 3 cycles needed
    only_a = {"A": {"effect": -0.8, "sd": 0.0, "tau": 1.5, "tau_off": 1.5}}
    single = {"schedule.treatments": ["A"], "patients": 2, "severity.treatments": only_a}
    (note,) = [n for n in checks(**single, **{"schedule.cycles": 2})[1] if n.startswith("P01, P02 have too few")]
    assert "(3 for 3 parameters)" in note and "drift inside each block" not in note
    assert note.endswith("set trial.schedule.cycles >= 3 for per-patient intervals from block means"), note
    assert not any("too few blocks" in n for n in checks(**single, **{"schedule.cycles": 3})[1])
    # ... and with unit=day too, where each patient's daily rows are full rank (randomised orders that differ keep
    # the pooled fit identifiable)
    notes = checks(**{"schedule.cycles": 1, "patients": 6, "schedule.order": "randomised", "analysis.unit": "day"})[1]
    assert len(notes) == 1 and notes[0].startswith("P01, P02, P03, P04, P05, P06: their blocks alone cannot "
                                                   "separate the study-day trend"), notes
    assert checks(**{"analysis.unit": "day"})[1] == []  # two cycles: nothing to say
    # daily rows with autocorrelated noise: intervals the coverage table shows too narrow, said (block means: quiet)
    notes = checks(**{"analysis.unit": "day", "analysis.cov": "hac", "severity.noise.ar": 0.5})[1]
    assert len(notes) == 1 and notes[0].startswith("trial.severity.noise.ar=0.5 correlates neighbouring days"), notes
    assert "0.84-0.88 of 95% with Newey-West" in notes[0] and "0.76" not in notes[0]  # the numbers of its own cov
    notes = checks(**{"analysis.unit": "day", "analysis.cov": "cluster", "severity.noise.ar": 0.5})[1]
    assert len(notes) == 1 and "cov=cluster) need not hold" in notes[0] and "not measured" in notes[0], notes
    notes = checks(**{"analysis.unit": "day", "severity.noise.ar": -0.3})[1]  # negative AR: said too (was silent)
    assert len(notes) == 1 and "noise.ar=-0.3" in notes[0] and "0.76-0.79" in notes[0], notes
    assert checks(**{"severity.noise.ar": 0.5})[1] == []  # block means 6 days apart: 0.5^6 = 0.016 of it left
    # ... but AR 0.9 keeps 0.9^6 = 0.53 of the noise across the skipped days: neighbouring block means correlate
    notes = checks(**{"severity.noise.ar": 0.9})[1]
    assert len(notes) == 1 and notes[0].startswith("trial.severity.noise.ar=0.9 still correlates neighbouring "
                                                   "blocks' analysed days 6 days apart (0.53 > 0.1)"), notes
    # a common drift without the trend term: the reference block comes first, so the drift is a bias of every draw
    notes = checks(**{"severity.trend.mean": 0.01, "analysis.trend": False})[1]
    assert len(notes) == 1 and notes[0].startswith("trial.analysis.trend=false while the patients drift "
                                                   "(trial.severity.trend mean 0.01, sd 0 per day)"), notes
    assert checks(**{"severity.trend.mean": 0.01})[1] == []  # the trend term takes it
    assert checks(**{"analysis.trend": False})[1] == []  # no drift: nothing to say
    # a washout lengthens the gap between treatment blocks, not the one after the baseline (none follows it)
    notes = checks(**{"severity.noise.ar": 0.7, "schedule.washout_days": 3})[1]
    assert len(notes) == 1 and "6 days apart (0.12 > 0.1)" in notes[0] and notes[0].endswith("raise "
                                                                                           "trial.analysis.skip_days")


def test_a_cluster_sandwich_over_one_patient_is_refused_not_read_with_other_df():
    """The config refuses cov=cluster with one patient; a Design built in code past it got t with n - k df."""
    d = design_from_config(trial_cfg(patients=1))
    one = dataclasses.replace(d, analysis=dataclasses.replace(d.analysis, cov="cluster"))
    table, _ = simulate(one, 0)
    with pytest.raises(NotIdentifiable, match="at least 2 patients"):
        estimate_effects(table, "true_severity", one)


def test_calibration_and_measurement_model_on_a_known_instrument():
    rng = np.random.default_rng(0)
    identity = np.repeat(np.arange(30), 4)
    true = np.tile([0.0, 1.0, 2.0, 3.0], 30) + rng.uniform(-0.3, 0.3, 120)
    raw = 0.4 + 0.5 * true + rng.normal(0, 0.2, 30)[identity] + rng.normal(0, 0.1, 120)
    cal = fit_calibration(true, raw)
    assert cal.slope == pytest.approx(0.5, abs=0.05) and cal.slope_se > 0 and calibration_problem(cal) is None
    assert np.allclose(cal.to_true(cal.intercept + cal.slope * true), true)
    model = fit_measurement_model(true, raw, identity)
    assert model.between_sd == pytest.approx(0.2, abs=0.07)
    assert np.std(model.within) == pytest.approx(0.1, abs=0.03)
    sim = model.measure(np.full(20000, 1.0), np.zeros(20000), np.random.default_rng(1))
    assert sim.std() == pytest.approx(np.std(model.within), rel=0.05)  # one patient: one shared offset
    flat = fit_calibration(true, rng.normal(1.0, 0.3, 120))
    assert "barely rises" in calibration_problem(flat)


def test_calibration_needs_a_line_that_rises_inside_the_disease():
    """An evaluator that tells healthy from diseased but reads every stage alike fitted a steep line through the
    healthy faces at 0 (slope ~0.5, 'resolved') and then measured every effect as about 0: the line must rise on the
    diseased images alone too; a handful of faces, or diseased images of one severity, cannot show it does."""
    from kgface.trials.measurement import calibrate

    rng = np.random.default_rng(0)

    def calset(raw_of, faces=10, per_face=3, severities=(1.0, 2.0, 3.0), stage0=0):
        rows = [{"true": 0.0, "raw": rng.normal(0, 0.1), "identity": f"h{i}", "disease": "healthy"} for i in range(10)]
        rows += [{"true": 0.0, "raw": rng.normal(0, 0.1), "identity": f"z{i}", "disease": "D"} for i in range(stage0)]
        for f in range(faces):
            for k in range(per_face):
                s = severities[k % len(severities)]
                rows.append({"true": s, "raw": raw_of(s) + rng.normal(0, 0.1), "identity": f"d{f}", "disease": "D"})
        return pd.DataFrame(rows)

    line, problem = calibrate(calset(lambda s: 0.5 * s), "D")
    assert problem is None and line.slope == pytest.approx(0.5, abs=0.05)
    # the line applied is the diseased images' own: healthy faces read far below stage 1 (0 vs 0.7 + 0.3 s) made
    # the line over all images ~0.5 steep, and (raw - a) / b shrank every effect inside the disease to ~0.6 of it
    jump = calset(lambda s: 0.7 + 0.3 * s)
    overall = fit_calibration(jump["true"], jump["raw"], jump["identity"])
    line, problem = calibrate(jump, "D")
    assert problem is None and overall.slope > 0.45 and line.slope == pytest.approx(0.3, abs=0.04)
    assert line.n == 30 and line.intercept == pytest.approx(0.7, abs=0.1)
    flat = calset(lambda s: 1.5)
    overall = fit_calibration(flat["true"], flat["raw"], flat["identity"])
    assert calibration_problem(overall) is None and overall.slope > 0.4  # the line alone passed
    line, problem = calibrate(flat, "D")
    assert line is not None and problem.startswith("the evaluator's severity barely rises with the true severity "
                                                   "among the 30 diseased calibration images")
    _, problem = calibrate(calset(lambda s: 0.5 * s, severities=(3.0,)), "D")
    assert problem.startswith("the diseased calibration images hold one severity (30 of them)")
    _, problem = calibrate(calset(lambda s: 0.5 * s, faces=2, per_face=6), "D")  # 12 images, 2 faces
    assert problem.startswith("only 12 images of D of known severity outside the evaluator's training split, from 2 "
                              "faces (calibration needs >= 8 images of >= 3 faces)")
    # images of the disease at severity 0 count for no line: the applied one is fitted above 0 (4 images, 2 faces
    # passed the rule with 6 stage-0 images beside them)
    line, problem = calibrate(calset(lambda s: 0.5 * s, faces=2, per_face=2, stage0=6), "D")
    assert line is None and problem.startswith("only 4 images of D above severity 0 (the applied line is fitted on "
                                               "these) outside the evaluator's training split, from 2 faces")


def test_the_calibration_slope_error_counts_faces_not_images():
    """Six images per face, one severity per face and a shared reading offset: the slope varies over repeated
    calibration sets as 20 faces allow, not 120 images. The OLS error was a third of the spread; the error
    clustered by identity follows it (CR1 runs a little low with 20 clusters)."""
    rng = np.random.default_rng(0)
    slopes, ols, clustered = [], [], []
    identity = np.repeat(np.arange(20), 6)
    for _ in range(200):
        true = rng.uniform(0, 3, 20)[identity]
        raw = 0.5 + 0.5 * true + rng.normal(0, 0.3, 20)[identity] + rng.normal(0, 0.1, 120)
        plain, grouped = fit_calibration(true, raw), fit_calibration(true, raw, identity)
        assert grouped.slope == plain.slope
        slopes.append(plain.slope), ols.append(plain.slope_se), clustered.append(grouped.slope_se)
    spread = np.std(slopes)
    assert np.mean(ols) < 0.5 * spread and 0.75 * spread < np.mean(clustered) < 1.25 * spread


def test_true_severity_recovery_over_many_trials_sanity():
    d = design_from_config(trial_cfg())
    runs, summary = coverage_study(d, 200, seed=1)
    assert set(runs["trial"]) == set(range(200)) and set(summary["outcome"]) == {"true_severity"}
    assert (summary["skipped"] == 0).all()  # two cycles: every draw can be analysed
    for r in summary.itertuples():
        assert abs(r.bias) < 0.02, r
        # 95% intervals: Monte-Carlo se ~0.015 over 200 trials; measured 0.935 / 0.935 / 0.975 (A - B is a little
        # conservative). 0.99 fails intervals that are far too wide (e.g. t at a wrong, tiny df)
        assert 0.90 <= r.coverage <= 0.99, r


NOT_IDENTIFIABLE = [  # the trend term and one order for everyone: day is a combination of intercept and dummies
    ({"schedule.order": "alternating", "schedule.cycles": 1}, 0),
    ({"schedule.order": ["A", "B"], "schedule.cycles": 1}, 0),
    ({"schedule.order": "randomised", "schedule.cycles": 1, "patients": 2}, 2),  # seed 2: both draw A, B
]


@pytest.mark.parametrize("override, seed", NOT_IDENTIFIABLE)
def test_a_design_that_cannot_separate_trend_and_treatments_is_refused(override, seed):
    d = design_from_config(trial_cfg(**NOISE_FREE, **override))
    table, patients = simulate(d, seed)
    for check in (lambda: check_identifiable(table, d), lambda: estimate_effects(table, "true_severity", d)):
        with pytest.raises(NotIdentifiable) as info:
            check()
        msg = str(info.value)
        assert isinstance(info.value, UserError) and "\n" not in msg
        assert "trial.schedule.cycles" in msg and "trial.analysis.trend=false" in msg, msg
    # the advice works: without the trend term the same trial gives the true effects
    flat = design_from_config(trial_cfg(**NOISE_FREE, **override, **{"analysis.trend": False}))
    check_identifiable(table, flat)
    est = estimate_effects(table, "true_severity", flat).set_index("effect")["estimate"]
    assert est["A"] == pytest.approx(-0.8, abs=1e-3) and est["B"] == pytest.approx(-0.3, abs=1e-3)


def test_default_and_crossed_designs_are_identifiable():
    default = design_from_config(trial_cfg())
    check_identifiable(simulate(default, 0)[0], default)
    # one randomised cycle is fine as soon as the patients' orders differ (seed 0: A, B and B, A)
    d = design_from_config(trial_cfg(**NOISE_FREE, **{"schedule.cycles": 1, "patients": 2}))
    table, patients = simulate(d, 0)
    check_identifiable(table, d)
    est = estimate_effects(table, "true_severity", d, true_effects(d, patients)).set_index("effect")
    assert est.loc["A", "estimate"] == pytest.approx(-0.8, abs=1e-3)


def test_a_patient_fit_with_one_analysed_day_per_level_is_refused():
    # pooled: the two patients' orders differ (identifiable); each patient alone: 3 days for 4 coefficients
    d = design_from_config(trial_cfg(**{**NOISE_FREE, "schedule.cycles": 1, "patients": 2,
                                        "schedule.block_days": 9, "schedule.baseline_days": 9}))
    table, _ = simulate(d, 0)
    estimate_effects(table, "true_severity", d)
    with pytest.raises(NotIdentifiable, match="P01's own fit"):
        check_identifiable(table, d)
    # without the trend each patient's own fit is full rank, on 3 days for 3 coefficients: no residual df, refused
    # before any image (it used to write NaN per-patient intervals) while the pooled fit stands
    flat = design_from_config(trial_cfg(**{**NOISE_FREE, "schedule.cycles": 1, "patients": 2, "analysis.trend": False,
                                           "schedule.block_days": 9, "schedule.baseline_days": 9}))
    table, _ = simulate(flat, 0)
    assert estimate_effects(table, "true_severity", flat)["se"].notna().all()
    with pytest.raises(NotIdentifiable, match=r"^P01's own fit has no residual degrees of freedom \(3 rows for 3 "
                                              r"parameters\); lengthen trial.schedule.block_days"):
        check_identifiable(table, flat)


def test_studies_skip_draws_that_cannot_be_analysed():
    d = design_from_config(trial_cfg(**{"schedule.cycles": 1, "patients": 2}))
    runs, summary = coverage_study(d, 40, seed=0)
    skipped = int(summary["skipped"].iloc[0])
    assert 5 < skipped < 35  # about half the draws give both patients one order
    assert (summary["trials"] == 40 - skipped).all() and runs["trial"].nunique() == 40 - skipped
    # daily rows with the trend are full rank even when both patients drew one order; kgface.trial refuses such a
    # draw (the blocks cannot separate trend and treatments), so the study leaves it out too
    daily = design_from_config(trial_cfg(**{"schedule.cycles": 1, "patients": 2, "analysis.unit": "day"}))
    refused = 0
    for r in range(40):
        table, _ = simulate(daily, 1_000_003 + r)  # the study's own draws for seed 0
        try:
            check_identifiable(table, daily)
        except NotIdentifiable:
            refused += 1
    runs, summary = coverage_study(daily, 40, seed=0)
    assert refused > 5 and (summary["skipped"] == refused).all() and runs["trial"].nunique() == 40 - refused


def test_cluster_intervals_use_patients_minus_one_df():
    """cov=cluster: t with patients - 1 df, what statsmodels' own conf_int gives (not n - k df)."""
    import statsmodels.formula.api as smf
    from scipy import stats

    d = design_from_config(trial_cfg(**{"analysis.unit": "day", "analysis.cov": "cluster"}))
    table, _ = simulate(d, 0)
    est = estimate_effects(table, "true_severity", d).set_index("effect")
    rows = table[table["analysed"]]
    ref = smf.ols("true_severity ~ C(treatment, Treatment('Baseline')) + C(patient_id) + day", data=rows).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(rows["patient_id"])[0]}, use_t=True)
    ci = ref.conf_int()
    for k in ("A", "B"):
        name = f"C(treatment, Treatment('Baseline'))[T.{k}]"
        assert est.loc[k, "estimate"] == pytest.approx(ref.params[name], abs=1e-9)
        assert [est.loc[k, "low"], est.loc[k, "high"]] == pytest.approx(list(ci.loc[name]), abs=1e-9)
    assert (est["df"] == d.patients - 1).all()
    half = est.loc["A - B", "high"] - est.loc["A - B", "estimate"]
    assert half == pytest.approx(stats.t.ppf(0.975, d.patients - 1) * est.loc["A - B", "se"])


def test_by_patient_effects_estimate_the_patients_mean_effect():
    """effects=by_patient: treatment-by-patient terms make the pooled estimate the mean of the patients' own effects,
    with the trend term too (effects=common gives a design-weighted mean there), and its intervals are built for
    that mean: nominal where effects differ between patients, where common's are far too wide."""
    hetero = {"severity.treatments.A.sd": 0.3}
    d = design_from_config(trial_cfg(**NOISE_FREE, **hetero, **{"analysis.effects": "by_patient"}))
    table, patients = simulate(d, 4)
    truth = true_effects(d, patients)
    est = estimate_effects(table, "true_severity", d, truth).set_index("effect")
    for k in ("A", "B", "A - B"):  # carry-over after 8 of 1-day time constants: exp(-9) of the effect
        assert est.loc[k, "estimate"] == pytest.approx(est.loc[k, "truth"], abs=1e-3)
    common = design_from_config(trial_cfg(**NOISE_FREE, **hetero))
    gap = estimate_effects(table, "true_severity", common, truth).set_index("effect")
    assert abs(gap.loc["A", "estimate"] - gap.loc["A", "truth"]) > 0.01  # the design-weighted mean

    # the same fit and linear combination as statsmodels' formula interface, on a noisy trial
    import statsmodels.formula.api as smf

    d = design_from_config(trial_cfg(**hetero, **{"analysis.effects": "by_patient"}))
    table, patients = simulate(d, 0)
    est = estimate_effects(table, "true_severity", d).set_index("effect")
    rows = analysed_rows(table, "true_severity", "block")
    ref = smf.wls("true_severity ~ C(treatment, Treatment('Baseline')) * C(patient_id) + day", data=rows,
                  weights=rows["days"]).fit()
    others = sorted(rows["patient_id"].unique())[1:]
    for k in ("A", "B"):
        main = f"C(treatment, Treatment('Baseline'))[T.{k}]"
        w = pd.Series(0.0, index=ref.params.index)
        w[main] = 1.0
        for pid in others:
            w[f"{main}:C(patient_id)[T.{pid}]"] = 1 / d.patients
        test = ref.t_test(w.to_numpy()[None])
        assert est.loc[k, "estimate"] == pytest.approx(float(test.effect[0]), abs=1e-9)
        assert est.loc[k, "se"] == pytest.approx(float(test.sd[0, 0]), abs=1e-9)
    assert (est["df"] == ref.df_resid).all() and ref.df_resid == len(rows) - (len(d.treatments) + 1) * d.patients - 1

    # over simulated trials with effects that differ between patients: near-nominal and half as wide as common's
    _, by_patient = coverage_study(d, 100, seed=1)
    _, pooled = coverage_study(design_from_config(trial_cfg(**hetero)), 100, seed=1)
    by_patient, pooled = by_patient.set_index("effect"), pooled.set_index("effect")
    assert by_patient["coverage"].between(0.88, 0.99).all(), by_patient["coverage"]
    assert (pooled["coverage"] >= 0.97).all() and (by_patient["ci_width"] < 0.6 * pooled["ci_width"]).all()


def test_by_patient_effects_are_checked():
    with pytest.raises(UserError, match="trial.analysis.effects=each is unknown"):
        design_from_config(trial_cfg(**{"analysis.effects": "each"}))
    for cov in ("cluster", "hac"):  # a by-patient sandwich has ~0 to say once each patient has its own effects
        with pytest.raises(UserError, match=f"effects=by_patient needs cov=nonrobust \\(got cov={cov}"):
            design_from_config(trial_cfg(**{"analysis.effects": "by_patient", "analysis.cov": cov}))
    # one block per treatment: a patient's own effect would be one block's difference (and, on block means without
    # the trend, a fit with as many parameters as rows): refused in the config, whatever trend and unit
    for extra in ({}, {"analysis.trend": False}, {"analysis.unit": "day"}, {"schedule.order": ["B", "A"]}):
        with pytest.raises(UserError, match=r"effects=by_patient needs every patient to repeat a treatment \(got "
                                            r"trial.schedule.order=.*cycles=1") as info:
            design_from_config(trial_cfg(**{"analysis.effects": "by_patient", "schedule.cycles": 1, **extra}))
        assert "trial.schedule.cycles >= 2" in str(info.value) and "\n" not in str(info.value)
    design_from_config(trial_cfg(**{"analysis.effects": "by_patient", "schedule.cycles": 1,
                                    "schedule.order": ["A", "B", "A"]}))  # A repeats within the cycle: accepted

    # a Design built in code skips that check; the analysis still refuses the fit rather than answer arbitrarily
    def by_patient(**over):
        d = design_from_config(trial_cfg(**NOISE_FREE, **over))
        return dataclasses.replace(d, analysis=dataclasses.replace(d.analysis, effects="by_patient"))

    d = by_patient(**{"schedule.cycles": 1, "patients": 2})
    table, _ = simulate(d, 0)  # seed 0: the two patients' orders differ, which is enough for effects=common
    check_identifiable(table, design_from_config(trial_cfg(**NOISE_FREE, **{"schedule.cycles": 1, "patients": 2})))
    with pytest.raises(NotIdentifiable, match="effects=by_patient cannot separate") as info:
        check_identifiable(table, d)
    assert "trial.schedule.cycles >= 2 or trial.analysis.effects=common" in str(info.value)
    assert "\n" not in str(info.value)
    # where common effects cannot be told apart either (one order for every patient), the message says that instead
    same = by_patient(**{"schedule.cycles": 1, "schedule.order": ["A", "B"]})
    with pytest.raises(NotIdentifiable, match="every patient's blocks come in the same order"):
        check_identifiable(simulate(same, 0)[0], same)
    # ... with effects=common on daily rows too: full rank there (blocks last days), but the trend would be told from
    # the treatments only by the drift inside each block
    daily = design_from_config(trial_cfg(**NOISE_FREE, **{"schedule.cycles": 1, "schedule.order": ["A", "B"],
                                                          "analysis.unit": "day"}))
    with pytest.raises(NotIdentifiable, match="every patient's blocks come in the same order"):
        check_identifiable(simulate(daily, 0)[0], daily)
    # without the trend the fit is full rank with no residual df: refused, not NaN intervals
    flat = by_patient(**{"schedule.cycles": 1, "analysis.trend": False})
    table, _ = simulate(flat, 0)
    for check in (check_identifiable, lambda t, d: estimate_effects(t, "true_severity", d)):  # before any image, too
        with pytest.raises(NotIdentifiable, match=r"the fit has no residual degrees of freedom \(12 rows for 12 "
                                                  r"parameters\); set trial.schedule.cycles > 1 or "
                                                  r"trial.analysis.unit=day"):
            check(table, flat)


@pytest.mark.parametrize("name", ["day", "const", "patient[P02]"])
def test_treatment_names_like_design_columns_keep_their_effects(name):
    params = {"effect": -0.8, "sd": 0.0, "tau": 1.0, "tau_off": 1.0}
    d = design_from_config(trial_cfg(**NOISE_FREE, **{"schedule.treatments": [name, "B"],
                                                      "severity.treatments": {name: params,
                                                                              "B": {**params, "effect": -0.3}}}))
    table, patients = simulate(d, 0)
    est = estimate_effects(table, "true_severity", d, true_effects(d, patients)).set_index("effect")
    assert list(est.index) == [name, "B", f"{name} - B"]
    assert est.loc[name, "estimate"] == pytest.approx(-0.8, abs=1e-3)
    assert est.loc["B", "estimate"] == pytest.approx(-0.3, abs=1e-3)
    assert est.loc[f"{name} - B", "estimate"] == pytest.approx(-0.5, abs=1e-3)


@pytest.fixture(scope="module")
def real_measurement():
    """The measurement model of a known instrument: readings rise 0.5 per unit of severity, each face has its own
    offset (sd 0.2) and each image its own error (sd 0.1), fitted on 40 faces of 4 graded images each. (The micro
    run's evaluator cannot serve: out of sample it does not resolve severity at all, slope 0.03 +- 0.13; the line
    the trial used to fit on its training faces made it look as if it did.)"""
    rng = np.random.default_rng(7)
    identity = np.repeat(np.arange(40), 4).astype(str)
    true = np.tile([0.0, 1.0, 2.0, 3.0], 40) + rng.uniform(-0.3, 0.3, 160)
    raw = 0.4 + 0.5 * true + rng.normal(0, 0.2, 40)[np.repeat(np.arange(40), 4)] + rng.normal(0, 0.1, 160)
    return fit_measurement_model(true, raw, identity)


def test_measured_effects_over_simulated_trials_bias_and_coverage(real_measurement):
    """The image modality judged over 100 trials: effects estimated from calibrated readings of an instrument
    with face offsets and image noise, the line refitted per trial, against the known simulated effects."""
    assert calibration_problem(real_measurement.calibration) is None
    d = design_from_config(trial_cfg())
    runs, summary = coverage_study(d, 100, seed=0, measurement=real_measurement)
    s = summary.set_index(["outcome", "effect"])
    for effect in ("A", "B", "A - B"):
        m, t = s.loc[("measured_severity", effect)], s.loc[("true_severity", effect)]
        assert m["trials"] == 100
        assert abs(m["bias"]) <= 3 * m["bias_mc_se"] + 0.02, (effect, m.to_dict())
        # 95% intervals over 100 trials (Monte-Carlo se ~0.025): measured 0.94 / 0.93 / 0.93; all 100 covered
        # (intervals far too wide) fails
        assert 0.88 <= m["coverage"] <= 0.99, (effect, m.to_dict())
        assert m["ci_width"] > t["ci_width"]  # the instrument adds noise: wider than from true severities
    measured = runs[runs["outcome"] == "measured_severity"]
    assert measured["estimate"].notna().all() and (measured["high"] > measured["low"]).all()


def test_study_draws_whose_refitted_line_is_too_flat_are_left_out():
    """A line that only just resolves severity: many refits fail calibration=auto's rule; dividing by them gave
    estimates without bound, so such draws are counted and left out, as the trial would not calibrate them."""
    rng = np.random.default_rng(0)
    truths = np.repeat(np.arange(4.0), 5)
    raw = 0.5 + 0.15 * truths + rng.normal(0, 0.5, len(truths))
    model = fit_measurement_model(truths, raw, np.arange(len(truths)).astype(str))
    d = design_from_config(trial_cfg(patients=2, **{"schedule.cycles": 2}))
    runs, summary = coverage_study(d, 30, seed=0, measurement=model)
    flat = int(summary["skipped_calibration"].iloc[0])
    assert 0 < flat < 30 and (summary["skipped"] == flat).all()  # two cycles: nothing else is left out
    assert (summary["trials"] == 30 - flat).all() and runs["trial"].nunique() == 30 - flat


def test_a_study_with_every_draw_left_out_still_counts_them():
    """An instrument blind to severity: every refitted line is too flat and every draw is left out; the empty
    summary kept the counts, which the trial's note reports instead of a wrong reason."""
    rng = np.random.default_rng(0)
    truths = np.repeat(np.arange(4.0), 5)
    model = fit_measurement_model(truths, rng.normal(1.0, 0.5, len(truths)), np.arange(len(truths)).astype(str))
    runs, summary = coverage_study(design_from_config(trial_cfg(patients=2)), 6, seed=0, measurement=model)
    assert summary.empty and runs.empty
    assert summary.attrs == {"skipped": 6, "skipped_calibration": 6}


def test_the_study_is_reproducible(real_measurement):
    d = design_from_config(trial_cfg(patients=2))
    a = coverage_study(d, 5, seed=3, measurement=real_measurement)[0]
    b = coverage_study(d, 5, seed=3, measurement=real_measurement)[0]
    assert len(a) > 0  # two empty frames are equal too
    pd.testing.assert_frame_equal(a, b)


def test_calibration_never_reads_the_evaluators_training_faces(trial_run, tmp_path):
    """The micro run holds 4 held-out acne faces: its training faces made up the rest of a calibration line fitted
    in-sample. Now the training split never enters: calibration=auto keeps the raw readings and says why,
    calibration=real refuses; the calibration leaves out every face the evaluator's trained_on list names, whatever
    split the manifest gives it (the run's own keeps the val faces, which only set its probe's temperature), and so
    does a photo without a grade."""
    import json
    import shutil
    from pathlib import Path

    from omegaconf import OmegaConf

    from kgface.data.manifest import read_manifest
    from kgface.errors import UserError
    from kgface.evaluation import load_evaluator
    from kgface.trials.images import calibration_set, instrument

    manifest = Path(json.loads((trial_run / "data.json").read_text())["manifest"])

    def meter(mode):
        cfg = OmegaConf.create({"evaluator_dir": None, "calibration": mode})
        return instrument(cfg, trial_run, OmegaConf.load(trial_run / "config.yaml"), manifest, [], None,
                          "MONDO:0011438", progress=False)

    few = meter("auto")
    assert few.line is None and few.calibration.slope == 1.0 and few.calibration.n == 0
    assert few.problem.startswith("only 4 images of MONDO:0011438 of known severity outside")
    assert set(few.calset["split"]) == {"test"} and few.calset_note.endswith("known severity, test")
    with pytest.raises(UserError, match="only 4 images of MONDO:0011438"):
        meter("real")
    # the same images under a manifest that calls the training faces test faces, and one graded photo unknown
    copy = tmp_path / "data"
    shutil.copytree(manifest.parent, copy)
    df = pd.read_csv(copy / manifest.name, dtype=str, keep_default_na=False)
    df["stage_known"] = "True"
    acne_test = df.index[(df["disease"] == "MONDO:0011438") & (df["split"] == "test")]
    df.loc[acne_test[0], "stage_known"] = "False"
    df.loc[df["split"] == "train", "split"] = "test"
    df.to_csv(copy / manifest.name, index=False)
    evaluator = load_evaluator(trial_run)
    train = read_manifest(manifest)[0].query("split == 'train' and disease in ['MONDO:0011438', 'healthy']")
    val = read_manifest(manifest)[0].query("split == 'val' and disease in ['MONDO:0011438', 'healthy']")
    for own in (True, False):  # the run's evaluator keeps the manifest's val faces; another one's list is final
        calset, note = calibration_set(evaluator, copy / manifest.name, "MONDO:0011438", own=own)
        assert len(train) and "left out: the evaluator learned from them" in note
        assert not set(calset["identity"]) & set(train["identity"])
        assert (calset["disease"] == "MONDO:0011438").sum() == 3
        assert set(calset["identity"]) & set(val["identity"]) == (set(val["identity"]) if own else set())
    # the trial's own patients (their baseline faces) are no calibration faces: the line reads their days
    patients = set(calset["identity"].drop_duplicates()[:2])
    calset, note = calibration_set(evaluator, copy / manifest.name, "MONDO:0011438", patients=patients | {""})
    assert len(patients) == 2 and not set(calset["identity"]) & patients
    assert "(the faces of 2 of the trial's own patients left out)" in note


@pytest.mark.parametrize("key, words", [
    ("analysis.skip", "trial.analysis.skip is not a trial setting; trial.analysis takes alpha, cov"),
    ("schedule.washout", "trial.schedule.washout is not a trial setting"),
    ("severity.noise.rho", "trial.severity.noise.rho is not a trial setting; trial.severity.noise takes ar, sd"),
    ("severity.treatments.A.delay", "trial.severity.treatments.A.delay is not a trial setting"),
    ("patient", "trial.patient is not a trial setting")])
def test_a_typo_in_a_trial_file_is_refused(key, words):
    """Hydra refuses unknown keys only on the command line: in a study file they ran with the default, silently."""
    from kgface.errors import UserError

    cfg = trial_cfg()
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, key, 5, force_add=True)
    with pytest.raises(UserError, match="^" + words.replace("(", r"\(")):
        design_from_config(cfg)


def test_hac_on_block_means_is_refused():
    """A patient's few block means under hac_lags >= their count: a by-patient sandwich read with n - k df."""
    with pytest.raises(UserError, match=r"^trial.analysis.cov=hac is for unit=day"):
        design_from_config(trial_cfg(**{"analysis.cov": "hac"}))
    assert design_from_config(trial_cfg(**{"analysis.cov": "hac", "analysis.unit": "day"})).analysis.cov == "hac"


def test_one_image_per_face_resamples_residuals_with_the_noise_variance():
    """With one image per face the resampled residuals carry SSR / (n - 2), the line's unbiased noise variance
    (SSR / n understated it by 25% at the 8-image minimum)."""
    rng = np.random.default_rng(4)
    truths = np.repeat(np.arange(4.0), 2)
    raw = 0.4 + 0.9 * truths + rng.normal(0, 0.3, len(truths))
    model = fit_measurement_model(truths, raw, np.arange(len(truths)).astype(str))
    slope, intercept = np.polyfit(truths, raw, 1)
    ssr = float(((raw - intercept - slope * truths) ** 2).sum())
    assert np.mean(model.within ** 2) == pytest.approx(ssr / (len(truths) - 2), rel=1e-6)
    assert model.between_sd == 0.0
