"""Treatment schedules: block layout per order, washouts, seeded randomisation, and clear errors for bad input."""
import numpy as np
import pytest
from omegaconf import OmegaConf

from kgface.errors import UserError
from kgface.trials.design import check_size, design_from_config
from kgface.trials.schedule import WASHOUT, ScheduleError, days_of, schedule_from_config


def spec(**kw) -> dict:
    base = {"reference": "Baseline", "baseline_days": 3, "treatments": ["A", "B"], "order": "alternating",
            "cycles": 2, "block_days": 4, "washout_days": 0}
    return {**base, **kw}


def layout(blocks):
    return [(b.index, b.treatment, b.start, b.days) for b in blocks]


def test_alternating_blocks_and_days():
    s = schedule_from_config(spec(), skip_days=1)
    blocks = s.blocks(np.random.default_rng(0))
    assert layout(blocks) == [(1, "Baseline", 0, 3), (2, "A", 3, 4), (3, "B", 7, 4), (4, "A", 11, 4), (5, "B", 15, 4)]
    assert s.days == 19
    days = days_of(blocks)
    assert days["day"].tolist() == list(range(1, 20))
    assert days["day_in_block"][:8].tolist() == [1, 2, 3, 1, 2, 3, 4, 1]
    assert days["treatment"][3] == "A" and days["block"][-1] == 5


def test_washout_between_treatment_blocks_only():
    s = schedule_from_config(spec(washout_days=2, cycles=1))
    blocks = s.blocks(np.random.default_rng(0))
    assert [b.treatment for b in blocks] == ["Baseline", "A", WASHOUT, "B"]
    assert layout(blocks)[-1] == (4, "B", 9, 4) and s.days == 13 == sum(b.days for b in blocks)


def test_explicit_order_repeats_per_cycle():
    s = schedule_from_config(spec(order=["A", "B", "B", "A"], cycles=2, baseline_days=2))
    assert [b.treatment for b in s.blocks(np.random.default_rng(0))][1:] == ["A", "B", "B", "A"] * 2
    assert s.days == 2 + 8 * 4


def test_randomised_order_is_a_seeded_permutation_per_cycle():
    s = schedule_from_config(spec(order="randomised", cycles=6, treatments=["A", "B", "C"]))
    draw = lambda seed: [b.treatment for b in s.blocks(np.random.default_rng(seed))][1:]  # noqa: E731
    first = draw(7)
    assert first == draw(7)
    cycles = [first[k:k + 3] for k in range(0, 18, 3)]
    assert all(sorted(c) == ["A", "B", "C"] for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1  # not the same order every cycle
    assert any(draw(seed) != first for seed in range(8))


@pytest.mark.parametrize("override, message", [
    ({"block_days": -3}, "durations cannot be negative"),
    ({"washout_days": -1}, "durations cannot be negative"),
    ({"baseline_days": -5}, "durations cannot be negative"),
    ({"block_days": 0}, "must be at least 1"),
    ({"cycles": 0}, "must be at least 1"),
    ({"block_days": 2.5}, "whole number of days"),
    ({"block_days": "ten"}, "not a number of days"),
    ({"order": ["A", "C"]}, "unknown treatment(s) C"),
    ({"order": ["A", "Baseline"]}, "unknown treatment(s) Baseline"),
    ({"order": ["A", "A"]}, "never gives B"),
    ({"order": []}, "empty list"),
    ({"order": "shuffled"}, "order=shuffled is unknown"),
    ({"treatments": []}, "treatments is empty"),
    ({"treatments": ["A", "Washout"]}, "reserved"),
    ({"treatments": ["A", "A"]}, "twice"),
    ({"baseline_days": 0}, "nothing is left to compare"),
    ({"baseline_days": 2}, "nothing is left to compare"),  # skip_days=2 drops all of it
    ({"block_days": 2}, "no treatment day would be analysed"),
])
def test_bad_schedules_are_clear_errors(override, message):
    with pytest.raises(ScheduleError) as info:
        schedule_from_config(spec(**override), skip_days=2)
    assert message in str(info.value) and "\n" not in str(info.value)


def trial_cfg(**kw):
    cfg = OmegaConf.load(__import__("kgface.resources", fromlist=["conf_dir"]).conf_dir() / "trial" / "acne_ab.yaml")
    for key, value in kw.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


@pytest.mark.parametrize("override, message", [
    ({"severity.treatments": {"A": {"effect": -1}}}, "no parameters for B"),
    ({"severity.treatments.C": {"effect": -1}}, "parameters for C, which the schedule does not give"),
    ({"severity.treatments.A.tau": 0}, "trial.severity.treatments.A.tau=0 must be > 0"),
    ({"severity.treatments.B.tau_off": -2}, "trial.severity.treatments.B.tau_off=-2 must be > 0"),
    ({"severity.treatments.A.sd": -0.1}, "trial.severity.treatments.A.sd=-0.1 must be >= 0"),
    ({"severity.noise.ar": 1.0}, "trial.severity.noise.ar=1.0 must lie in (-1, 1)"),
    ({"severity.noise.sd": -1}, "trial.severity.noise.sd=-1 must be >= 0"),
    ({"severity.baseline.mean": 5}, "trial.severity.baseline.mean=5 lies outside the scale"),
    ({"severity.treatments.A.effect": "big"}, "trial.severity.treatments.A.effect='big' is not a number"),
    ({"patients": 0}, "at least one patient"),
    ({"start_date": "next monday"}, "not a date"),
    ({"start_date": "9999-12-20"}, "study days passes the last date Python writes (9999-12-31)"),
    ({"severity.noise.sd": 10 ** 400}, "trial.severity.noise.sd=1000"),  # float() overflows: still one line
    ({"analysis.alpha": 10 ** 400}, "trial.analysis.alpha=1000"),
    ({"scale": "grade"}, "trial.scale=grade is unknown"),
    ({"analysis.cov": "robust"}, "trial.analysis.cov=robust is unknown"),
    ({"analysis.unit": "week"}, "trial.analysis.unit=week is unknown"),
    ({"analysis.skip_days": -1}, "trial.analysis.skip_days=-1: durations cannot be negative"),
])
def test_bad_trial_configs_are_clear_errors(override, message):
    with pytest.raises(UserError) as info:
        design_from_config(trial_cfg(**override))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override, message", [
    ({"analysis.alpha": "five"}, "trial.analysis.alpha='five' must be a number in (0, 1)"),
    ({"analysis.alpha": 0}, "trial.analysis.alpha=0 must be a number in (0, 1)"),
    ({"analysis.hac_lags": "x"}, "trial.analysis.hac_lags='x' is not a whole number"),
    ({"analysis.hac_lags": -1}, "trial.analysis.hac_lags=-1: cannot be negative"),
    ({"analysis.study_trials": 2.7}, "trial.analysis.study_trials=2.7 is not a whole number"),
    ({"analysis.trend": "false"}, "trial.analysis.trend='false' must be true or false"),
    ({"patients": 2.9}, "trial.patients=2.9 is not a whole number"),
    ({"patients": "many"}, "trial.patients='many' is not a whole number"),
    ({"schedule.order": 5}, "trial.schedule.order=5 must be alternating | randomised or a list of treatment names"),
    ({"schedule.treatments": "drugX"}, "trial.schedule.treatments='drugX' must be a list of treatment names"),
    ({"schedule.cycles": True}, "trial.schedule.cycles=True is not a number of days"),
    ({"schedule.cycles": float("inf")}, "trial.schedule.cycles=inf is not a number of days"),
    ({"schedule.block_days": float("nan")}, "trial.schedule.block_days=nan is not a number of days"),
    ({"schedule.reference": "Washout"}, "trial.schedule.reference=Washout is reserved for the untreated gaps"),
])
def test_bad_values_name_their_key_in_one_line(override, message):
    """What used to be a traceback (float('five'), int('x'), order 5) or a silent change (2.9 patients -> 2,
    'drugX' -> treatments d, r, u, g, X, trend 'false' -> True) is a one-line UserError naming the key."""
    with pytest.raises(UserError) as info:
        design_from_config(trial_cfg(**override))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_whole_numbers_given_as_floats_or_strings_still_work():
    d = design_from_config(trial_cfg(**{"patients": 3.0, "analysis.study_trials": "5", "analysis.trend": False,
                                        "analysis.skip_days": "2.0"}))
    assert (d.patients, d.analysis.study_trials, d.analysis.trend, d.analysis.skip_days) == (3, 5, False, 2)


def test_default_design_and_image_budget():
    d = design_from_config(trial_cfg())
    assert d.treatments == ("A", "B") and d.reference == "Baseline" and d.schedule.days == 50
    assert check_size(d, 5000) == 4 * 50
    with pytest.raises(ScheduleError, match="more than max_images=100"):
        check_size(d, 100)
