"""The run's sample grid: which noise each (disease, stage, copy) starts from."""
import pytest

from kgface.diffusion.samples import grid_requests
from kgface.kg.profiles import FacialProfile, healthy_profile


def _profiles():
    return [FacialProfile(f"D:{i}", f"disease {i}", "test") for i in range(3)] + [healthy_profile("test")]


def test_each_disease_and_copy_has_its_own_noise_shared_across_its_stages():
    stages, per_cell, seed = [0, 1, 2, 3], 2, 100
    reqs, rows = grid_requests(_profiles(), stages, per_cell, seed)
    assert len(reqs) == len(rows) == 4 * per_cell * len(stages)
    assert [r.seed for r in reqs] == [r["seed"] for r in rows]
    sick = [r for r in rows if r["disease"] != "healthy"]
    by_face = {}
    for r in sick:
        by_face.setdefault((r["disease"], r["seed"]), []).append(r["stage"])
    # 3 diseases x 2 copies = 6 faces, each drawn at every stage (a progression of one face)
    assert len(by_face) == 6 and all(v == stages for v in by_face.values())
    assert sorted(s for _, s in by_face) == list(range(seed, seed + 6))
    # healthy has no stages: 8 cells, 8 faces, none of them a sick disease's face
    healthy = [r["seed"] for r in rows if r["disease"] == "healthy"]
    assert len(set(healthy)) == 8 and not set(healthy) & {s for _, s in by_face}
    assert {r["stage"] for r in rows if r["disease"] == "healthy"} == {0}
    assert {r.severity for r, row in zip(reqs, rows) if row["disease"] == "healthy"} == {0.0}


def test_shared_noise_draws_copy_k_of_every_disease_from_one_face():
    # the validation grids' layout: a column is one face across diseases (healthy keeps its own faces)
    _, rows = grid_requests(_profiles(), [0, 3], 2, 100, shared_noise=True)
    sick = {(r["disease"], r["stage"], r["seed"]) for r in rows if r["disease"] != "healthy"}
    assert {s for _, _, s in sick} == {100, 101} and len(sick) == 3 * 2 * 2
    healthy = [r["seed"] for r in rows if r["disease"] == "healthy"]
    assert len(set(healthy)) == 4 and min(healthy) > 101


def test_a_fractional_stage_is_refused_before_anything_is_drawn():
    with pytest.raises(ValueError, match=r"samples.stages=\[0, 1.5\]"):
        grid_requests(_profiles(), [0, 1.5], 1, 0)


def test_grid_labels_keep_the_held_out_mark_of_a_long_name(tmp_path, monkeypatch):
    import torch

    from kgface import sheets
    from kgface.diffusion.samples import fit_label, save_grid

    # 'Cornelia de Lange syndrome (held out)' was cut to its first 26 characters: the mark was lost
    assert fit_label("Cornelia de Lange syndrome (held out)", 26) == "Cornelia de L.. (held out)"
    assert fit_label("Down syndrome (held out)", 26) == "Down syndrome (held out)"  # fits: unchanged
    assert fit_label("Pediatric-onset Graves disease", 26) == "Pediatric-onset Graves d.."
    assert all(len(fit_label("x" * 40 + " (held out)", w)) <= w for w in (2, 5, 13, 14, 26))
    seen = {}
    real_sheet = sheets.labelled_sheet

    def spy(rows, **kw):
        seen["labels"] = [label for label, _ in rows]
        return real_sheet(rows, **kw)

    monkeypatch.setattr(sheets, "labelled_sheet", spy)
    rows = [{"disease": "ORPHA:199"}, {"disease": "ORPHA:870"}]
    names = {"ORPHA:199": "Cornelia de Lange syndrome (held out)", "ORPHA:870": "Down syndrome"}
    save_grid(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), rows, names, tmp_path / "g.png", ["stage 3"])
    assert seen["labels"] == ["ORPHA:199\nCornelia de L.. (held out)", "ORPHA:870\nDown syndrome"]
    assert (tmp_path / "g.png").is_file()


def test_transform_pair_titles_mark_a_cut_name(tmp_path, monkeypatch):
    import torch
    from PIL import Image, ImageDraw

    from kgface.diffusion.samples import save_pairs

    titles = []
    real_text = ImageDraw.ImageDraw.text

    def spy(self, xy, text, *args, **kw):
        titles.append(text)
        return real_text(self, xy, text, *args, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", spy)
    src = tmp_path / "src.png"
    Image.new("RGB", (64, 64), "grey").save(src)
    rows = [{"disease": "ORPHA:199"}, {"disease": "ORPHA:870"}]
    names = {"ORPHA:199": "Cornelia de Lange syndrome", "ORPHA:870": "Down"}
    out = save_pairs([str(src)] * 2, torch.zeros(2, 3, 64, 64, dtype=torch.uint8), rows, names, tmp_path / "t.png")
    # a 64-px cell holds 10 characters: a cut title ends '..' (it used to stop mid-word unmarked)
    assert titles == ["-> Corne..", "-> Down"]
    assert Image.open(out).size == (2 * 68, 2 * 64 + 14 + 4)
    # a photo of another shape shows the centre crop the transformation edited, not the whole photo squashed
    wide = tmp_path / "wide.png"
    photo = Image.new("RGB", (128, 64), "blue")
    photo.paste((255, 0, 0), (0, 0, 32, 64))  # red left quarter: outside the centre square
    photo.save(wide)
    out = save_pairs([str(wide)], torch.zeros(1, 3, 64, 64, dtype=torch.uint8), rows[:1], names, tmp_path / "w.png")
    r, g, b = Image.open(out).convert("RGB").getpixel((1, 32))
    assert b > 200 and r < 50


def test_a_run_that_skips_diseases_draws_the_others_from_the_same_noise():
    """A class run cannot draw the held-out diseases; with the run's full order its other requests keep the seeds a
    KG run draws them from, so the baselines' paired test can match (disease, stage, seed)."""
    full = _profiles()
    subset = [p for p in full if p.disease_id != "D:0"]  # D:0 held out
    _, all_rows = grid_requests(full, [2, 3], 2, 100)
    _, own_rows = grid_requests(full, [2, 3], 2, 100, seed_order=[p.disease_id for p in full])
    assert own_rows == all_rows  # the default order is the profiles' own
    _, sub_rows = grid_requests(subset, [2, 3], 2, 100, seed_order=[p.disease_id for p in full])
    assert sub_rows == [r for r in all_rows if r["disease"] != "D:0"]
    _, shifted = grid_requests(subset, [2, 3], 2, 100)  # without it, every later disease moved to other noise
    seeds_of = lambda rows: [r["seed"] for r in rows if r["disease"] == "D:1"]  # noqa: E731
    assert seeds_of(shifted) != seeds_of(all_rows)


def test_transformations_keep_their_noise_when_a_run_skips_a_disease():
    import pandas as pd

    from kgface.diffusion.samples import transform_jobs

    full = _profiles()
    subset = [p for p in full if p.disease_id != "D:0"]
    test = pd.DataFrame([{"identity": f"h{k}", "disease": "healthy", "stage": 0, "abspath": f"/h{k}.png"}
                         for k in range(2)] +
                        [{"identity": f"s{d}", "disease": f"D:{d}", "stage": 3, "abspath": f"/s{d}.png"}
                         for d in range(3)])
    order = [p.disease_id for p in full]
    every = transform_jobs(full, test, 2, 500)
    # 2 identities x 3 diseases, then 3 diseases -> healthy; seeds 500.. in that order, each once
    assert [(path, p.disease_id, s) for path, p, s, _ in every][:4] == [
        ("/h0.png", "D:0", 3), ("/h0.png", "D:1", 3), ("/h0.png", "D:2", 3), ("/h1.png", "D:0", 3)]
    assert [sd for *_, sd in every] == list(range(500, 509))
    assert transform_jobs(full, test, 2, 500, seed_order=order) == every
    skipped = transform_jobs(subset, test, 2, 500, seed_order=order)
    assert skipped == [j for j in every if j[1].disease_id != "D:0" and j[0] != "/s0.png"]
