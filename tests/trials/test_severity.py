"""The severity model on constructed cases with known answers: steady state, onset and carry-over with their time
constants, trend, clipping, the AR(1) noise, and seeded reproducibility of whole trials."""
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from kgface.resources import conf_dir
from kgface.trials.design import design_from_config, simulate, true_effects
from kgface.trials.severity import (Patient, SeverityModel, Treatment, ar1_noise, draw_patient, effect_states,
                                    expected_severity, simulate_patient)


def model(**kw) -> SeverityModel:
    treatments = kw.pop("treatments", {"A": Treatment(-1.0, tau=2.0, tau_off=2.0)})
    return SeverityModel(baseline_mean=2.0, treatments=treatments, **kw)


def test_steady_state_is_baseline_plus_effect():
    m = model()
    patient = Patient(2.0, 0.0, {"A": -1.0})
    days = ["Baseline"] * 5 + ["A"] * 60
    y = expected_severity(days, m, patient)
    assert np.allclose(y[:5], 2.0)
    assert y[-1] == pytest.approx(1.0, abs=1e-9)  # 60 days = 30 time constants
    # the approach is first order: n days on A leave exp(-n / tau) of the effect still to come
    for n in (1, 2, 5, 10):
        assert y[4 + n] == pytest.approx(2.0 - 1.0 * (1 - math.exp(-n / 2.0)), abs=1e-12)


def test_carry_over_decays_with_the_off_time_constant():
    m = model(treatments={"A": Treatment(-1.2, tau=1.0, tau_off=4.0)})
    patient = Patient(1.5, 0.0, {"A": -1.2})
    days = ["A"] * 40 + ["Washout"] * 20
    e = effect_states(days, m, patient)["A"]
    assert e[39] == pytest.approx(-1.2, abs=1e-12)
    for n in (1, 4, 8, 20):
        assert e[39 + n] == pytest.approx(-1.2 * math.exp(-n / 4.0), abs=1e-12)
    # one time constant after stopping, 1/e of the effect is still carried over
    assert e[43] / e[39] == pytest.approx(math.exp(-1.0))


def test_switching_treatments_overlaps_decay_and_onset():
    m = model(treatments={"A": Treatment(-1.0, tau=1.0, tau_off=3.0), "B": Treatment(-0.4, tau=2.0, tau_off=2.0)})
    patient = Patient(2.0, 0.0, {"A": -1.0, "B": -0.4})
    days = ["A"] * 30 + ["B"] * 30
    y = expected_severity(days, m, patient)
    for n in (1, 3, 6):
        carried, onset = -1.0 * math.exp(-n / 3.0), -0.4 * (1 - math.exp(-n / 2.0))
        assert y[29 + n] == pytest.approx(2.0 + carried + onset, abs=1e-9)
    assert y[-1] == pytest.approx(2.0 - math.exp(-30 / 3.0) - 0.4 * (1 - math.exp(-30 / 2.0)), abs=1e-12)
    assert y[-1] == pytest.approx(1.6, abs=1e-4)  # 10 off time constants after A: B's steady state


def test_trend_adds_per_day_and_the_outcome_is_clipped_to_the_scale():
    m = model(treatments={"A": Treatment(-5.0, tau=0.5)}, low=0.0, high=3.0)
    y_trend = expected_severity(["Baseline"] * 10, m, Patient(1.0, 0.1, {"A": -5.0}))
    assert np.allclose(y_trend, 1.0 + 0.1 * np.arange(10))
    _, expected, observed = simulate_patient(["A"] * 20, m, np.random.default_rng(0))
    assert expected.min() < 0 and observed.min() == 0.0 and observed.max() <= 3.0


def test_noise_is_stationary_ar1_with_the_given_sd_and_correlation():
    e = ar1_noise(40000, 0.3, 0.6, np.random.default_rng(1))
    assert e.std() == pytest.approx(0.3, rel=0.05)
    assert np.corrcoef(e[1:], e[:-1])[0, 1] == pytest.approx(0.6, abs=0.03)
    iid = ar1_noise(40000, 0.3, 0.0, np.random.default_rng(1))
    assert abs(np.corrcoef(iid[1:], iid[:-1])[0, 1]) < 0.03


def test_patients_draw_their_own_parameters():
    m = SeverityModel(baseline_mean=1.5, baseline_sd=0.5, trend_sd=0.01,
                      treatments={"A": Treatment(-0.8, sd=0.2)})
    rng = np.random.default_rng(3)
    drawn = [draw_patient(m, rng) for _ in range(4000)]
    effects = np.array([p.effects["A"] for p in drawn])
    assert effects.mean() == pytest.approx(-0.8, abs=0.02) and effects.std() == pytest.approx(0.2, rel=0.05)
    assert all(0.0 <= p.baseline <= 3.0 for p in drawn)


def trial_cfg(**kw):
    cfg = OmegaConf.load(conf_dir() / "trial" / "acne_ab.yaml")
    for key, value in kw.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def test_trials_are_seeded_and_patients_do_not_depend_on_the_trial_size():
    d = design_from_config(trial_cfg())
    a, pa = simulate(d, 11)
    b, pb = simulate(d, 11)
    assert a.equals(b) and pa == pb
    c, _ = simulate(d, 12)
    assert not np.allclose(a["true_severity"], c["true_severity"])
    small, _ = simulate(design_from_config(trial_cfg(patients=2)), 11)
    first = a[a["patient_id"].isin(["P01", "P02"])].reset_index(drop=True)
    assert small.equals(first)
    assert true_effects(d, pa) == {"A": -0.8, "B": -0.3}  # sd 0: every patient has the configured effect


def test_simulated_table_layout():
    d = design_from_config(trial_cfg(**{"schedule.washout_days": 2}))
    table, _ = simulate(d, 0)
    assert len(table) == d.patients * d.schedule.days
    assert list(table.columns[:6]) == ["patient_id", "date", "block", "day", "day_in_block", "treatment"]
    one = table[table["patient_id"] == "P01"]
    assert one["date"].iloc[0].strftime("%Y-%m-%d") == "2024-01-01" and one["date"].is_monotonic_increasing
    assert (one["date"].diff().dropna().dt.days == 1).all()
    washout = table[table["treatment"] == "Washout"]
    assert len(washout) == d.patients * 3 * 2 and not washout["analysed"].any()
    assert not table.loc[table["day_in_block"] <= 5, "analysed"].any()
    assert table.loc[(table["day_in_block"] > 5) & (table["treatment"] != "Washout"), "analysed"].all()


def test_bad_severity_settings_are_one_line_errors_naming_the_key():
    from kgface.trials.severity import SeverityModelError, model_from_config

    good = {"baseline": {"mean": 2.0, "sd": 0.1}, "noise": {"sd": 0.1, "ar": 0.0},
            "treatments": {"A": {"effect": -0.8, "sd": 0.0, "tau": 2.0}}}
    assert model_from_config(good, ("A",), 0.0, 4.0).treatments["A"].effect == -0.8
    cases = [({"treatments": ["A"]}, r"^trial.severity.treatments must be a mapping"),
             ({"treatments": {"A": -0.8}}, r"^trial.severity.treatments.A must be a mapping \{effect, sd, tau, "
                                           r"tau_off\}, not -0.8"),
             ({"baseline": 1.8}, r"^trial.severity.baseline must be a mapping \{mean, sd\}, not 1.8"),
             ({"treatments": {"A": {"effect": True}}}, r"^trial.severity.treatments.A.effect=True is not a number"),
             ({"noise": {"sd": True}}, r"^trial.severity.noise.sd=True is not a number")]
    for change, match in cases:
        with pytest.raises(SeverityModelError, match=match) as info:
            model_from_config({**good, **change}, ("A",), 0.0, 4.0)
        assert "\n" not in str(info.value)


def test_design_sections_that_are_not_mappings_are_refused_in_one_line():
    from kgface.errors import UserError

    for key in ("analysis", "schedule", "severity"):
        with pytest.raises(UserError, match=rf"^trial.{key} must be a mapping of its settings"):
            design_from_config({"disease": "MONDO:0011438", "patients": 2, key: ["x"]})


def test_lesion_readings_beyond_the_curve_are_extrapolated_not_clipped():
    """A calibrated reading below 0 (noise around clear skin) stays below 0 lesions: clipping it to 0 would pull
    measured effects towards 0; inside [0, 3] the curve is the phantom's own and round-trips."""
    from kgface.trials.design import from_condition, to_condition

    inside = np.array([0.0, 5.5, 12.0, 20.5, 50.5, 80.0])
    assert np.allclose(from_condition(to_condition(inside, "lesions"), "lesions"), inside)
    assert np.allclose(from_condition([-0.1, 3.1], "lesions"), [-1.1, 80 + 0.1 * (80 - 50.5) / 0.5])
    assert np.allclose(from_condition([-0.5, 3.5], "severity"), [-0.5, 3.5])  # as the severity scale always was


def test_whole_numbers_are_read_exactly_past_a_floats_53_bits():
    from kgface.errors import UserError
    from kgface.trials.design import whole

    big = 2 ** 53 + 1  # a float rounds it to 2^53: the trial recorded, and drew, a seed it was not given
    assert whole(big, "seed", 0) == big and whole(str(big), "seed", 0) == big
    assert whole(3.0, "seed", 0) == 3 and whole("3.0", "seed", 0) == 3
    for bad in (2.9, "2.9", True, None, "nan", "inf", "abc"):
        with pytest.raises(UserError, match="is not a whole number"):
            whole(bad, "seed", 0)
    with pytest.raises(UserError, match="seed=-1: must be at least 0"):
        whole(-1, "seed", 0)
