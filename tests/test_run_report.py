"""kgface/run_report.py on constructed metrics: intervals in brackets only where metrics.json has them, the
baselines' comparison table, and numbers without intervals (evaluate=false, older runs) printed as before."""
import numpy as np

from kgface.run_report import comparison_lines, fmt, loss_curve, plot_loss, wall_time_line, with_interval, \
    write_run_report


def test_with_interval_prints_brackets_only_for_a_real_interval():
    assert with_interval(0.6894, [0.6054, 0.7627]) == "0.689 [0.61, 0.76]"
    assert with_interval(0.0, [0.0, 0.138]) == "0.000 [0.00, 0.14]"
    for interval in (None, [None, None], [0.1], "x", [0, 1]):  # JSON nulls, malformed, ints: the number alone
        assert with_interval(0.5, interval) == fmt(0.5) == "0.500"
    assert with_interval(None, [0.1, 0.2]) == "-"


def test_wall_time_line_reads_in_seconds_and_minutes():
    line = wall_time_line({"profiles_s": 1.94, "vae_s": 3.4, "generator_kg_s": 2549.3, "total_s": 2557.0})
    assert line == "Wall time: 2,557 s (42.6 min; profiles 1.9 s, vae 3.4 s, generator_kg 2,549.3 s)."
    assert wall_time_line({"total_s": 90}) == "Wall time: 90 s (1.5 min)."
    assert wall_time_line({}) == "Wall time: not recorded."


def test_comparison_lines():
    assert comparison_lines(None) == [] and comparison_lines({"reference": "kg", "modes": {}}) == []
    lines = comparison_lines({"reference": "kg", "test": "Fisher's exact, one-sided",
                              "modes": {"text": {"heldout_top1": {"reference": 0.2083, "other": 0.0,
                                                                  "difference": 0.2083, "p_greater": 0.0248,
                                                                  "counts": [5, 24, 0, 24]}}}})
    assert lines[0] == "## `kg` against the other conditionings"
    assert "| `text` | `generation.heldout_top1` | 5 / 24 | 0 / 24 | 0.208 | 0.025 | - |" in lines  # no pairing
    paired = {"only_a": 5, "only_b": 1, "n": 24, "p_greater": 0.1094}
    lines = comparison_lines({"reference": "kg", "test": "Fisher's exact, one-sided",
                              "modes": {"text": {"heldout_top1": {"difference": 0.1667, "p_greater": 0.094,
                                                                  "counts": [5, 24, 1, 24], "paired": paired}}}})
    assert "| `text` | `generation.heldout_top1` | 5 / 24 | 1 / 24 | 0.167 | 0.094 | 5 / 1; 0.109 |" in lines


def test_run_report_brackets_and_comparison(tmp_path):
    metrics = {"generation": {"seen_disease_top1": 0.5, "seen_disease_top1_ci95": [0.3, 0.7],
                              "stage_spearman": 0.4},
               "timings": {"total_s": 1.0}}
    write_run_report(tmp_path, metrics, ["kg"])
    text = (tmp_path / "report.md").read_text()
    assert "| `generation.seen_disease_top1` | 0.500 [0.30, 0.70] |" in text
    assert "| `generation.stage_spearman` | 0.400 |" in text and "In brackets: 95% intervals" in text
    del metrics["generation"]["seen_disease_top1_ci95"]
    write_run_report(tmp_path, metrics, ["kg"])  # an older run's metrics: no intervals, no line about them
    assert "In brackets" not in (tmp_path / "report.md").read_text()


def test_the_pooled_rows_have_their_seen_twins_beside_them(tmp_path):
    """Baselines: class draws no held-out disease, so the pooled rows compare kg and class on other disease mixes;
    the _seen rows read the seen diseases alone, under each pooled row."""
    kg = {"stage_spearman": 0.6, "stage_spearman_seen": 0.7, "profile_match_f1": 0.2, "profile_match_f1_seen": 0.25,
          "frequency_mae": 0.3, "frequency_mae_seen": 0.28}
    cls = {"stage_spearman": 0.65, "profile_match_f1": 0.22, "frequency_mae": 0.31}
    metrics = {"baselines": {"kg": {"generation": kg}, "class": {"generation": cls}}, "timings": {"total_s": 1.0}}
    write_run_report(tmp_path, metrics, ["kg", "class"])
    rows = [r for r in (tmp_path / "report.md").read_text().splitlines() if r.startswith("| `generation.")]
    keys = [r.split("`")[1] for r in rows]
    assert keys == ["generation.stage_spearman", "generation.stage_spearman_seen", "generation.profile_match_f1",
                    "generation.profile_match_f1_seen", "generation.frequency_mae", "generation.frequency_mae_seen"]
    assert rows[1].startswith("| `generation.stage_spearman_seen` | 0.700 | 0.650 |")  # class: its pooled key
    assert rows[5].startswith("| `generation.frequency_mae_seen` | 0.280 | 0.310 |")  # (no held-out request)
    cls["heldout_n"] = 4  # a conditioning that did draw held-out requests but has no _seen key: no number
    write_run_report(tmp_path, metrics, ["kg", "class"])
    assert "| `generation.stage_spearman_seen` | 0.700 | - |" in (tmp_path / "report.md").read_text()
    write_run_report(tmp_path, {"generation": cls, "timings": {"total_s": 1.0}}, ["kg"])  # no held-out: no twin row
    assert "_seen" not in (tmp_path / "report.md").read_text()
    assert "held-out ones among them" in rows[0]


def test_loss_curve_draws_each_mean_at_the_last_step_of_its_window(tmp_path):
    steps, means, k = loss_curve([float(i) for i in range(1, 201)])  # the loss at step s is s
    assert k == 4 and steps[0] == 4 and steps[-1] == 200 and len(steps) == len(means) == 197
    np.testing.assert_allclose(means, steps - 1.5)  # mean of steps s-3..s
    steps, means, k = loss_curve([0.5, 0.25])
    assert k == 1 and steps.tolist() == [1, 2] and means.tolist() == [0.5, 0.25]
    assert len(loss_curve([])[0]) == 0
    plot_loss([0.5, 0.25, 0.1], tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0
