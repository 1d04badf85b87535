"""The trial's outputs folder: a rerun replaces the previous trial's outputs as a whole (no stale patients, GIFs,
study or calibration files, never an old trial.csv beside new images) and leaves other files alone; the series
legend tells washout days from run-in days. No trained run needed."""
import pandas as pd
import pytest
import torch

from kgface.trials.report import MEASURED, measured_caveat, measured_groups, recovery, write_outputs


def outputs(pids, days=3):
    table = pd.DataFrame([{"patient_id": p, "day": d, "treatment": "A", "true_severity": 1.0,
                           "image": f"images/{p}/day{d}.png"} for p in pids for d in range(1, days + 1)])
    images = {p: torch.full((days, 3, 8, 8), 10 * k, dtype=torch.uint8) for k, p in enumerate(pids)}
    baselines = {p: torch.zeros(3, 8, 8, dtype=torch.uint8) for p in pids}
    return table, images, baselines


def drawer(calibration: bool, fail: bool = False):
    def draw(folder):
        if fail:
            raise RuntimeError("figure failed")
        (folder / "report.md").write_text("report")
        if calibration:
            (folder / "calibration.png").write_bytes(b"png")
    return draw


def test_a_rerun_replaces_the_previous_trials_outputs(tmp_path):
    out = tmp_path / "out"
    table, images, baselines = outputs(["P01", "P02"])
    write_outputs(out, table, images, baselines, {"study": pd.DataFrame({"x": [1]})}, {"run": "a"},
                  drawer(calibration=True), gifs=True)
    for rel in ["images/P02/day3.png", "baselines/P02.png", "gifs/P02.gif", "study.csv", "calibration.png"]:
        assert (out / rel).is_file(), rel
    (out / ".hydra").mkdir()
    (out / ".hydra" / "config.yaml").write_text("kept")
    (out / "notes.txt").write_text("kept")

    table, images, baselines = outputs(["P01"])
    write_outputs(out, table, images, baselines, {"study": None}, {"run": "b"}, drawer(calibration=False), gifs=False)
    for rel in ["images/P02", "baselines/P02.png", "gifs", "study.csv", "calibration.png"]:
        assert not (out / rel).exists(), rel  # what this run does not write is gone, not left from the last one
    new = pd.read_csv(out / "trial.csv")
    assert new["patient_id"].unique().tolist() == ["P01"] and all((out / r).is_file() for r in new["image"])
    assert (out / ".hydra" / "config.yaml").read_text() == "kept" and (out / "notes.txt").read_text() == "kept"
    assert not list(out.glob(".trial-*"))

    # a run that fails before moving in leaves the previous trial whole
    table2, images2, baselines2 = outputs(["P01", "P02", "P03"])
    with pytest.raises(RuntimeError, match="figure failed"):
        write_outputs(out, table2, images2, baselines2, {}, {"run": "c"}, drawer(False, fail=True), gifs=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "trial.csv"), new)
    assert not (out / "images" / "P03").exists() and not list(out.glob(".trial-*"))


def test_raw_readings_are_not_scored_against_the_truth():
    """calibration=none (or auto's fallback): the measured estimates are raw readings, not on the truth's scale."""
    assert measured_caveat({"calibration_mode": "auto", "problem": None}) is None
    assert measured_caveat({"calibration_mode": "none", "problem": None}).startswith("calibration=none")
    assert measured_caveat({"calibration_mode": "auto", "problem": "slope 0.05"}).startswith("slope 0.05")
    est = pd.DataFrame([{"outcome": o, "effect": "A", "covered": False, "low": -1.0, "high": -0.2}
                        for o in ("true_severity", "measured_severity")])
    calibrated, raw = recovery(est).splitlines(), recovery(est, ("measured_severity",)).splitlines()
    assert calibrated[1] == "- From `measured_severity`: A: truth outside the interval, distinguished from no effect."
    assert raw[1] == "- From `measured_severity`: A: distinguished from no effect." and raw[0] == calibrated[0]
    # ... nor given a bias in the effects table (a dash), nor drawn beside the truth's mark
    from kgface.trials.report import effects_table

    est = est.assign(estimate=-0.6, truth=-0.5, bias=-0.1)
    rows = effects_table(est, 0.05, ("measured_severity",)).splitlines()
    assert rows[2] == "| A | -0.500 | -0.600 [-1.000, -0.200] | -0.100 | -0.600 [-1.000, -0.200] | - |", rows
    assert effects_table(est, 0.05).splitlines()[2].endswith("| -0.100 |")


def test_washout_days_are_not_labelled_run_in():
    rows = pd.DataFrame({"treatment": ["Baseline", "Baseline", "A", "A", "Washout", "B", "B"],
                         "analysed": [False, True, False, True, False, False, True]})
    groups = {label: mask.tolist() for label, mask, _ in measured_groups(rows)}
    assert groups[MEASURED] == [False, True, False, True, False, False, True]
    assert groups["measured (run-in, not analysed)"] == [True, False, True, False, False, True, False]
    assert groups["measured (washout, not analysed)"] == [False, False, False, False, True, False, False]


def test_series_figure_draws_at_most_its_panel_limit(tmp_path):
    # one panel per patient: from ~176 patients the figure passed matplotlib Agg's 65,536-px limit and the error
    # threw away every generated image; the figure draws the first MAX_SERIES_PANELS
    from PIL import Image

    from kgface.trials.report import MAX_SERIES_PANELS, plot_series

    def series(n):
        pids = [f"P{k:03d}" for k in range(n)]
        table = pd.DataFrame([{"patient_id": p, "identity": "id", "block": d // 2, "day": d, "treatment": "A",
                               "expected_severity": 1.0, "true_severity": 1.0} for p in pids for d in range(4)])
        images = {p: torch.zeros(4, 3, 8, 8, dtype=torch.uint8) for p in pids}
        return Image.open(plot_series(table, images, {}, ["A"], "A", tmp_path / f"s{n}.png")).size[1]

    assert series(MAX_SERIES_PANELS + 6) == series(MAX_SERIES_PANELS) > series(2)


def test_only_a_randomised_order_makes_the_contrasts_randomised():
    """order=alternating or a fixed list gives every patient one order: A - B was called randomised all the same."""
    from kgface.trials.report import randomisation_note

    assert randomisation_note({"order": "randomised", "treatments": ["A", "B"]}).endswith(
        "contrasts between treatments (A - B) are the randomised ones.")
    for order, shown in (("alternating", "order=alternating"), (["A", "B", "B", "A"], "order=[A, B, B, A]")):
        note = randomisation_note({"order": order, "treatments": ["A", "B"]})
        assert "are the randomised ones" not in note and shown in note and "not balanced by randomisation" in note
    assert "rest on the trend term" in randomisation_note({"order": "randomised", "treatments": ["A"]}, trend=True)
    untrended = randomisation_note({"order": "randomised", "treatments": ["A"]}, trend=False)
    assert "assume no drift over the study" in untrended and "trend term;" not in untrended
    single = randomisation_note({"order": "randomised", "treatments": ["A"]})
    assert single.startswith("The reference block comes first and is not randomised") and "A - B" not in single


def test_the_calibration_line_is_drawn_over_the_images_it_was_fitted_on():
    """The applied line is fitted on the diseased images (true > 0): drawn and labelled so, not extended through
    the healthy points at 0; a refused calibration's line (every image) over every image."""
    import numpy as np

    from kgface.trials.measurement import Calibration
    from kgface.trials.report import calibration_line

    calset = pd.DataFrame({"disease": ["healthy"] * 3 + ["D"] * 4, "true": [0, 0, 0, 0.5, 1.0, 2.0, 3.0],
                           "raw": [0.1, 0.0, 0.2, 0.6, 1.1, 1.9, 3.2], "identity": list("abcdefg")})
    xs, label = calibration_line(calset, Calibration(0.0, 1.0, 0.1, 0.9, 4))
    assert xs[0] == pytest.approx(0.5) and xs[-1] == pytest.approx(3.0)
    assert label.endswith("fitted on the 4 diseased images, true > 0)")
    xs, label = calibration_line(calset, Calibration(0.0, 1.0, 0.1, 0.9, 7))
    assert xs[0] == 0 and label.endswith("fitted on the 7 images)") and np.all(np.diff(xs) > 0)


def test_text_from_the_data_cannot_break_the_report_tables():
    """A treatment or patient name with `|` ended its cell; `<...>` passed through as HTML (the evaluation report
    escaped the same kinds of text)."""
    from kgface.trials.report import _table, effects_table

    est = pd.DataFrame({"effect": ["A|B <x>"], "outcome": ["true_severity"], "truth": [0.5], "estimate": [0.4],
                        "low": [0.1], "high": [0.7], "bias": [-0.1]})
    row = effects_table(est, 0.05).splitlines()[2]
    assert row.startswith("| A\\|B &lt;x&gt; | 0.500 |") and row.count(" | ") == 3
    table = _table(pd.DataFrame({"patient_id": ["P|1"], "df": [3]}), ["patient_id", "df"])
    assert table.splitlines()[2] == "| P\\|1 | 3 |"


def test_the_cluster_caveat_needs_effects_that_vary_between_patients():
    """With every treatment's sd 0 the sample-mean truth is the population mean: nothing lifts cluster coverage."""
    from kgface.config import compose
    from kgface.trials.design import design_from_config
    from kgface.trials.report import _effects_vary, design_dict

    trial = compose("trial", ["run=x"]).trial
    assert not _effects_vary(design_dict(design_from_config(trial)))  # acne_ab: sd 0
    varied = compose("trial", ["run=x", "trial.severity.treatments.A.sd=0.3"]).trial
    assert _effects_vary(design_dict(design_from_config(varied)))
