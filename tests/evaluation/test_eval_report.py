"""kgface.evaluation.report: figures written whole, metrics.json last, the plots' rows."""
import json

import numpy as np
import pytest

from kgface.data.manifest import read_manifest
from kgface.evaluation import evaluate_sets
from kgface.evaluation.report import report_figures
from tests.evaluation.conftest import generated_manifest


def test_a_report_that_fails_midway_leaves_no_metrics_json(tiny_evaluator, tiny_data, tiny_profiles, tmp_path,
                                                           monkeypatch):
    """metrics.json is written last, every figure under a temporary name: a failed report is visibly unfinished."""
    from kgface.evaluation import report

    gen = generated_manifest(tiny_data, tmp_path, n=12)
    m, scored = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles, return_scored=True)

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "plot_stage_scatter", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="plot failed"):
        report.write_report(out, m, scored, tiny_evaluator, tiny_profiles)
    assert (out / "confusion_real.png").is_file()  # the figure before the failure is whole
    assert not (out / "metrics.json").exists() and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    paths = report.write_report(out, m, scored, tiny_evaluator, tiny_profiles)
    assert json.loads(paths["metrics"].read_text())["generation"] == json.loads(json.dumps(m["generation"]))
    # written again into the same folder without a generated set: the earlier report's generated figures and its
    # metrics.json do not stay to pass for this one's (the report of the real set alone, failing midway)
    m_real, scored_real = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", None, tiny_profiles,
                                        return_scored=True)
    monkeypatch.setattr(report, "plot_stage_scatter", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        report.write_report(out, m_real, scored_real, tiny_evaluator, tiny_profiles)
    assert not (out / "metrics.json").exists() and not (out / "confusion_generated.png").exists()
    monkeypatch.undo()
    report.write_report(out, m_real, scored_real, tiny_evaluator, tiny_profiles)
    assert (out / "confusion_real.png").is_file() and not (out / "generated_best.png").exists()
    assert "generation" not in json.loads((out / "metrics.json").read_text())


def test_per_image_scores_give_back_the_reports_numbers(tiny_evaluator, tiny_data, tiny_profiles, tmp_path):
    """scores_real.csv / scores_generated.csv: one row per scored image, whose headline and group columns select
    exactly the rows of metrics.json's top-1 keys."""
    import pandas as pd

    from kgface.evaluation import report

    gen = generated_manifest(tiny_data, tmp_path, n=30)
    m, scored = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles, return_scored=True)
    paths = report.write_report(tmp_path / "out", m, scored, tiny_evaluator, tiny_profiles)
    real = pd.read_csv(paths["scores_real"], keep_default_na=False)
    assert len(real) == len(scored["real"].table) and "abspath" not in real
    head = real[real["headline"]]
    assert (head["pred_disease"] == head["disease"]).mean() == pytest.approx(m["evaluator"]["real_top1"], abs=1e-4)
    assert {f"p_{c}" for c in tiny_evaluator.classes} <= set(real.columns)
    # the manifest's phenotypes cell as the manifest writes it (JSON: Python's repr did not parse back)
    assert [json.loads(c) for c in real["phenotypes"]] == [dict(sorted(d.items())) for d in
                                                           scored["real"].table["phenotypes"]]
    assert any(json.loads(c) for c in real["phenotypes"])  # some face shows phenotypes: the check has content
    md = (tmp_path / "out" / "report.md").read_text()  # each disease's frequency MAE in the table (no figure had it)
    for d, v in m["generation"]["frequency_mae_per_disease"].items():
        assert f"| `generation.frequency_mae_per_disease.{d}` | {v:.3f}" in md or \
            f"| `generation.frequency_mae_per_disease.{d}` | {v}" in md, d
    g = pd.read_csv(paths["scores_generated"], keep_default_na=False)
    assert len(g) == len(scored["generated"].table) > 2 and list(g["path"][:2]) == ["g000.png", "g001.png"]  # paths as the manifest wrote them
    assert list(g["group"]).count("transform") == 1
    for key in ("seen_disease", "healthy", "heldout"):  # the constructed set has rows of every group
        rows = g[g["group"] == key]
        assert len(rows) == m["generation"][f"{key}_n"] > 0, key
        hit = (rows["pred_disease"] == rows["requested_disease"]).mean()
        assert hit == pytest.approx(m["generation"][f"{key}_top1"], abs=1e-4), key
    assert g["group"].isin(["seen_disease", "healthy"]).sum() == m["generation"]["seen_n"]
    assert g["group"].isin(["seen_disease", "healthy", "heldout"]).sum() == g["headline"].sum()
    assert all(set(d.split(";")) <= set(tiny_evaluator.phenotypes) for d in g["detected"] if d)
    report.write_report(tmp_path / "out", {"evaluator": {}})  # written again without sets: no stale scores
    assert not (tmp_path / "out" / "scores_real.csv").exists()
    assert not (tmp_path / "out" / "scores_generated.csv").exists()


def test_the_real_stage_scatter_leaves_out_ungraded_photos(tiny_evaluator, tiny_data, tmp_path, monkeypatch):
    """A photo without a grade carries a placeholder stage: the stage metrics leave it out, so must the plot."""
    from kgface.evaluation import report, write_report

    df = read_manifest(tiny_data / "manifest.csv")[0]
    test = np.flatnonzero((df["split"] == "test").to_numpy())
    df["stage_known"] = "True"
    df.loc[test[::2], "stage_known"] = "False"
    m, scored = evaluate_sets(tiny_evaluator, df, None, None, return_scored=True)
    plotted = {}

    def spy(table, path, **kw):
        plotted[path.name] = table
        return path

    monkeypatch.setattr(report, "plot_stage_scatter", spy)
    write_report(tmp_path, m, scored, tiny_evaluator)
    t = plotted["stage_real.png"]
    assert len(t) == len(test) - len(test[::2]) and set(t["stage_known"]) == {"True"}


def test_confusions_and_grids_read_the_headline_rows(tiny_evaluator, tiny_data, tiny_profiles, tmp_path,
                                                    monkeypatch):
    """The confusion matrices and best/worst grids read the rows of the top-1 keys (real: stages 2-3 and healthy;
    generated: such requests, no transformation), the generated stage scatter those of stage_spearman (diseased
    requests, no transformation); a subset keeps each row's features and image with it."""
    from kgface.evaluation import report
    from kgface.evaluation.validity import generated_headline_rows

    gen = generated_manifest(tiny_data, tmp_path)  # test faces as requests + one transformation
    m, scored = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles, return_scored=True)
    plotted, ranked = {}, {}

    def confusion(table, classes, names, path, **kw):
        plotted[path.name] = table
        return path

    def scatter(table, path, **kw):
        plotted[path.name] = table
        return path

    def grids(scored_set, label, classes, names, out_dir, prefix, k=8):
        ranked[prefix] = scored_set
        return []

    monkeypatch.setattr(report, "plot_confusion", confusion)
    monkeypatch.setattr(report, "plot_stage_scatter", scatter)
    monkeypatch.setattr(report, "best_worst", grids)
    report.write_report(tmp_path / "out", m, scored, tiny_evaluator, tiny_profiles)
    real = plotted["confusion_real.png"]
    assert len(real) == m["evaluator"]["n_seen"] + m["evaluator"]["n_heldout"]  # real_top1's rows
    assert set(real["stage"][real["disease"] != "healthy"]) == {2, 3}
    g = scored["generated"].table
    shown = plotted["confusion_generated.png"]
    assert len(shown) == m["generation"]["seen_n"] + m["generation"]["heldout_n"]
    assert "transform" in set(g["mode"]) and "transform" not in set(shown["mode"])
    assert set(plotted["stage_generated.png"]["mode"]) == {"sample"}
    assert (plotted["stage_generated.png"]["requested_disease"] != "healthy").all()
    # the grids' subset: table, features and images of the same rows, in order
    sub = ranked["generated"]
    keep = generated_headline_rows(g)
    assert list(sub.table["path"]) == list(g["path"][keep])
    assert np.array_equal(sub.features, scored["generated"].features[keep])
    assert np.array_equal(sub.images.numpy(), scored["generated"].images.numpy()[keep])
    assert len(ranked["real"].table) == len(real)


def test_report_figures_keep_the_reports_captions_and_order(tmp_path):
    from kgface.evaluation.report import figure_line

    for name in ("stage_real.png", "confusion_real.png", "stray.png"):
        (tmp_path / name).write_bytes(b"png")
    figs = [("Real: true stage vs measured severity", "stage_real.png"),
            ("Real (the rows of real_top1): disease confusion", "confusion_real.png")]
    lines = [f"## {c}\n\n{figure_line(c, n)}\n" for c, n in figs] + [figure_line("gone", "missing.png")]
    (tmp_path / "report.md").write_text("# t\n\n" + "\n".join(lines) + "\n")
    assert report_figures(tmp_path) == figs  # the stray PNG is not in the report, the missing one not on disk
    (tmp_path / "report.md").unlink()  # a folder without its report: every figure, by name
    assert [n for _, n in report_figures(tmp_path)] == ["confusion_real.png", "stage_real.png", "stray.png"]


def test_extra_figures_follow_the_reports_own_and_must_lie_beside_it(tmp_path):
    from PIL import Image

    from kgface.evaluation import write_report

    m = {"evaluator": {"real_top1": 0.5}}
    Image.new("RGB", (4, 4)).save(tmp_path / "learned_profiles.png")
    write_report(tmp_path, m, extra_figures=[("Learned profiles", tmp_path / "learned_profiles.png")])
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "## Learned profiles\n\n![Learned profiles](learned_profiles.png)" in md
    assert '<img src="learned_profiles.png"' in page
    assert report_figures(tmp_path) == [("Learned profiles", "learned_profiles.png")]  # what a run's report shows
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    Image.new("RGB", (4, 4)).save(elsewhere / "x.png")
    (tmp_path / "metrics.json").unlink()
    for bad, says in ((elsewhere / "x.png", "not in the report's folder"), (tmp_path / "none.png", "no such file")):
        with pytest.raises(ValueError, match=says):
            write_report(tmp_path, m, extra_figures=[("x", bad)])
        assert not (tmp_path / "metrics.json").exists()


def test_confusion_cells_and_markdown_text_read_as_written():
    from kgface.evaluation.report import cell_text, md_text

    # a share that rounds to 1 prints "1" (0.996 was cut to ".00"); others lose their leading zero only
    assert [cell_text(s) for s in (0.996, 1.0, 0.87, 0.05, 0.994)] == ["1", "1", ".87", ".05", ".99"]
    # a manifest path or name with a table bar or angle brackets stays inside its cell, as text
    assert md_text("data|set <b>") == "data\\|set &lt;b&gt;"


def test_the_report_table_keeps_short_lists_that_say_what_a_number_was_read_on():
    """generation.frequency_mae_stages was left out: frequency_mae showed without the stages it was read at."""
    from kgface.evaluation.report import _flat

    flat = dict(_flat({"generation": {"frequency_mae": 0.2, "frequency_mae_stages": [2, 3],
                                      "frequency_mae_read_at_stages_2_3": ["ORPHA:870"], "seen_top1_ci95": [0.1, None],
                                      "per_image": list(range(40))}}))
    assert flat["generation.frequency_mae_stages"] == "2, 3"
    assert flat["generation.frequency_mae_read_at_stages_2_3"] == "ORPHA:870"
    assert flat["generation.seen_top1_ci95"] == "[0.100, -]" and "generation.per_image" not in flat
