"""Effect estimation: exact recovery on noise-free constructed trials, the calibration and measurement model, and the
analysis judged over many simulated trials — bias and interval coverage of the effect estimated from image-measured
severities (measurement model fitted from the evaluator on real phantom images) against the simulated effect."""
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from kgface.resources import conf_dir
from kgface.trials.analysis import coverage_study, estimate_effects, patient_effects
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


def test_true_severity_recovery_over_many_trials_sanity():
    d = design_from_config(trial_cfg())
    runs, summary = coverage_study(d, 60, seed=1)
    assert set(runs["trial"]) == set(range(60)) and set(summary["outcome"]) == {"true_severity"}
    for r in summary.itertuples():
        assert abs(r.bias) < 0.02, r
        assert 0.88 <= r.coverage <= 1.0, r


@pytest.fixture(scope="module")
def real_measurement(trial_run, trial_manifest):
    """The measurement model of the micro run's evaluator on the run's real acne and healthy phantom images."""
    from pathlib import Path

    from kgface.evaluation import load_evaluator
    from kgface.trials.images import calibration_set

    calset, note = calibration_set(load_evaluator(trial_run), Path(trial_manifest), "MONDO:0011438")
    assert set(calset["disease"]) == {"MONDO:0011438", "healthy"} and len(calset) >= 8
    return fit_measurement_model(calset["true"], calset["raw"], calset["identity"])


def test_measured_effects_over_simulated_trials_bias_and_coverage(real_measurement):
    """The image modality judged over 100 trials: effects estimated from calibrated evaluator readings, simulated
    with the noise the evaluator shows on real phantom images, against the known simulated effects."""
    problem = calibration_problem(real_measurement.calibration)
    assert problem is None, f"the micro evaluator no longer resolves acne severity: {problem}"
    d = design_from_config(trial_cfg())
    runs, summary = coverage_study(d, 100, seed=0, measurement=real_measurement)
    s = summary.set_index(["outcome", "effect"])
    for effect in ("A", "B", "A - B"):
        m, t = s.loc[("measured_severity", effect)], s.loc[("true_severity", effect)]
        assert m["trials"] == 100
        assert abs(m["bias"]) <= 3 * m["bias_mc_se"] + 0.02, (effect, m.to_dict())
        assert 0.88 <= m["coverage"] <= 1.0, (effect, m.to_dict())
        assert m["ci_width"] > t["ci_width"]  # the instrument adds noise: wider than from true severities
    measured = runs[runs["outcome"] == "measured_severity"]
    assert measured["estimate"].notna().all() and (measured["high"] > measured["low"]).all()


def test_the_study_is_reproducible(real_measurement):
    d = design_from_config(trial_cfg(patients=2))
    a = coverage_study(d, 5, seed=3, measurement=real_measurement)[0]
    b = coverage_study(d, 5, seed=3, measurement=real_measurement)[0]
    pd.testing.assert_frame_equal(a, b)
