"""`python -m kgface.trial` end to end on the micro run: the table's columns and counts, images, report and figures;
same seed = identical table and image bytes; consecutive days share noise; bad input = one-line errors, nothing
written. The micro generator and evaluator are untrained: structure is asserted, not image quality."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

SMALL = ["trial.patients=2", "trial.schedule.baseline_days=4", "trial.schedule.block_days=4",
         "trial.schedule.cycles=1", "trial.analysis.skip_days=1", "trial.analysis.study_trials=20", "progress=false"]
SEED_COLUMNS = ["patient_id", "date", "block", "day", "treatment", "AcneSeverity"]


def trial(run, out, *overrides):
    from kgface.trial import main

    return main([f"run={run}", f"hydra.run.dir={out}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def trial_out(trial_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("trial") / "a"
    trial(trial_run, out)
    return out


def test_trial_writes_the_table_images_and_report(trial_out):
    table = pd.read_csv(trial_out / "trial.csv")
    assert list(table.columns[:6]) == SEED_COLUMNS
    for col in ["image", "true_severity", "measured_severity", "measured_severity_raw", "expected_severity",
                "condition_severity", "lesion_count", "analysed", "day_in_block", "identity", "disease"]:
        assert col in table.columns, col
    assert len(table) == 2 * 12 and table.groupby("patient_id").size().tolist() == [12, 12]
    assert table["AcneSeverity"].equals(table["true_severity"]) and set(table["disease"]) == {"MONDO:0011438"}
    assert table.groupby("patient_id")["treatment"].apply(lambda t: sorted(set(t))).tolist() == \
        [["A", "B", "Baseline"]] * 2
    assert table["date"].iloc[0] == "2024-01-01" and table["date"].iloc[11] == "2024-01-12"
    assert table["true_severity"].between(0, 3).all() and table["measured_severity"].notna().all()
    assert table["identity"].nunique() == 2  # two distinct baseline faces
    parquet = pd.read_parquet(trial_out / "trial.parquet")
    assert list(parquet.columns) == list(table.columns)
    parquet["date"] = parquet["date"].dt.strftime("%Y-%m-%d")
    pd.testing.assert_frame_equal(parquet, table, check_dtype=False)
    for rel in table["image"]:
        img = Image.open(trial_out / rel)
        assert img.size == (32, 32) and img.mode == "RGB"
    for rel in ["report.md", "series.png", "effects.png", "trial.json", "patients.csv",
                "effects.csv", "patient_effects.csv", "study.csv", "gifs/P01.gif", "baselines/P02.png"]:
        assert (trial_out / rel).is_file(), rel
    assert not (trial_out / "calibration.png").exists()  # 4 held-out acne faces: no line (below)
    assert Image.open(trial_out / "gifs" / "P01.gif").n_frames == 12
    # the side tables: each patient's face and drawn effects, and their own N-of-1 estimates against those
    patients = pd.read_csv(trial_out / "patients.csv", dtype={"identity": str}).set_index("patient_id")
    assert list(patients.index) == ["P01", "P02"]
    assert patients["identity"].to_dict() == \
        pd.read_csv(trial_out / "trial.csv", dtype=str).groupby("patient_id")["identity"].first().to_dict()
    pe = pd.read_csv(trial_out / "patient_effects.csv")
    assert set(pe["patient_id"]) == {"P01", "P02"} and {"A", "B"} <= set(pe["effect"])
    # one cycle: 3 block means cannot hold 4 parameters, so each patient's fit is on its 9 analysed days (3 per block)
    assert set(pe["unit"]) == {"day"} and (pe["df"] == 9 - 4).all()
    arms = pe[pe["effect"].isin(["A", "B"])]
    assert len(arms) == 4 and np.allclose(
        arms["truth"], [patients.loc[r.patient_id, f"effect_{r.effect}"] for r in arms.itertuples()])
    for side in ("true", "measured"):
        low, estimate, high = (pe[f"{side}_{c}"] for c in ("low", "estimate", "high"))
        assert (low <= estimate).all() and (estimate <= high).all()
    study = pd.read_csv(trial_out / "study.csv")
    # without a calibration line the study judges the design on true severities alone: A, B and A - B
    assert len(study) == len(json.loads((trial_out / "trial.json").read_text())["study"]["summary"]) == 3
    assert set(study["outcome"]) == {"true_severity"}
    assert not list(trial_out.glob(".trial-*"))  # the staging folder is gone


def test_report_gives_both_estimates_with_intervals_and_bias(trial_out):
    effects = pd.read_csv(trial_out / "effects.csv")
    assert set(effects["outcome"]) == {"true_severity", "measured_severity"}
    assert set(effects["effect"]) == {"A", "B", "A - B"}
    assert (effects["low"] <= effects["estimate"]).all() and (effects["estimate"] <= effects["high"]).all()
    assert np.allclose(effects["bias"], effects["estimate"] - effects["truth"])
    summary = json.loads((trial_out / "trial.json").read_text())
    assert summary["truth"] == {"A": -0.8, "B": -0.3}
    assert summary["design"]["schedule"]["block_days"] == 4 and summary["images"] == 24
    assert summary["images_settings"]["dtype"] == "fp32"  # a tiny run: the precision its images were drawn in
    assert summary["images_settings"]["adapter_scale"] == 1.0  # the KG branch's weight the images were drawn at
    # the micro run has 4 acne faces outside the evaluator's training split: too few for a line, so the readings
    # stay raw (calibration=auto), the report says why, and the measured outcome is left out of the study
    assert summary["measurement"]["calibration"] is None and summary["measurement"]["calibration_mode"] == "auto"
    assert summary["measurement"]["problem"].startswith("only 4 images of MONDO:0011438 of known severity")
    assert summary["study_note"].startswith("True severities only: only 4 images")
    assert len(summary["study"]["summary"]) == 3
    # one randomised cycle, 2 patients: the study's draws where both patients got one order cannot be analysed
    assert 0 < summary["study"]["summary"][0]["skipped"] < 20
    report = (trial_out / "report.md").read_text()
    for text in ["## Effects", "measured_severity: estimate [95% CI]", "![series](series.png)", "## Coverage study",
                 "gifs/P01.gif", "`gifs/`: one animation per patient.",
                 "- `effects.csv`, `patient_effects.csv`, `study.csv`: the tables above", "| A - B |",
                 "True severities only: only 4 images",
                 "**The measured estimates are not on the true scale**",
                 "contrasts between treatments (A - B) are the randomised ones",
                 "Each simulated trial's truth is the mean effect of the patients it drew (a sample mean)."]:
        assert text in report, text
    assert "cov: cluster" not in report  # the caveat belongs to clustered intervals only
    # a 1-day run-in with tau 1.5 d: the estimates are short of the steady state, measured on the noise-free course
    # of this very table and named in the report
    from kgface.config import compose
    from kgface.trials.analysis import design_checks
    from kgface.trials.design import design_from_config

    from kgface.trials.design import simulate

    design = design_from_config(compose("trial", [o for o in SMALL if o.startswith("trial.")]).trial)
    table, patients = simulate(design, summary["seed"])  # the trial is a function of its design and seed
    checks, notes = design_checks(table, design, patients)
    assert [r["runin_bias"] for r in summary["runin_bias"]] == pytest.approx(list(checks["runin_bias"]), abs=1e-9)
    assert summary["design_warnings"] == notes and checks["runin_bias"].abs().max() > 0.1
    # the 1-day run-in, and one cycle: each patient's own intervals come from daily rows
    assert len(notes) == 2 and "trial.analysis.skip_days=1 leaves" in notes[0] and "too few blocks" in notes[1]
    from kgface.evaluation.report import md_text  # (a note's ">= 2" is written &gt;= in Markdown, as shown)

    assert all(f"**Design warning**: {md_text(n)}." in report for n in notes) and "- Run-in bias (" in report


def test_same_seed_same_table_and_image_bytes(trial_run, trial_out, tmp_path):
    """(Another seed, another trial: test_photo_input_other_seed_and_a_run_without_evaluator.)"""
    trial(trial_run, tmp_path / "b")
    assert (trial_out / "trial.csv").read_bytes() == (tmp_path / "b" / "trial.csv").read_bytes()
    table = pd.read_csv(trial_out / "trial.csv")
    for rel in table["image"]:
        assert (trial_out / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_photo_input_other_seed_and_a_run_without_evaluator(trial_run, trial_out, tmp_path, session_cache_dir):
    """input= photos become the baseline faces; another seed, another trial; a run without evaluator/ gets one
    fitted on its dataset with its evaluator config (here from the cache the training run filled), on the KG's
    profiles even where the generator was conditioned on learned frequencies (conditioning_profiles.json); the
    analysis with treatment-by-patient terms (two cycles: each patient repeats its treatments)."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(trial_run, bare, ignore=shutil.ignore_patterns("evaluator", "checkpoints", "evaluation"))
    learned = json.loads((bare / "profiles.json").read_text())["profiles"]
    for p in learned:
        for ph in p["phenotypes"]:
            ph["frequency"] = 0.5
    (bare / "conditioning_profiles.json").write_text(json.dumps(learned))
    evaluators = sorted((session_cache_dir / "evaluator").iterdir())
    photos = tmp_path / "photos"
    photos.mkdir()
    for k, src in enumerate(sorted((trial_run / "samples" / "images").glob("*.png"))[:2]):
        Image.open(src).save(photos / f"face{k}.png")
    trial(bare, tmp_path / "c", "seed=1", f"input={photos}", "trial.schedule.cycles=2",
          "trial.analysis.effects=by_patient", "trial.analysis.study_trials=0", "gifs=false")
    other = pd.read_csv(tmp_path / "c" / "trial.csv")
    table = pd.read_csv(trial_out / "trial.csv")
    baseline = [t.loc[t["treatment"] == "Baseline", "true_severity"].to_numpy() for t in (other, table)]
    assert len(baseline[0]) == len(baseline[1]) == 8 and not np.allclose(*baseline)  # another seed, another trial
    assert other.groupby("patient_id")["identity"].first().tolist() == ["face0", "face1"]
    for k, pid in enumerate(["P01", "P02"]):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "c" / "baselines" / f"{pid}.png")),
                              np.asarray(Image.open(photos / f"face{k}.png").convert("RGB")))
    measurement = json.loads((tmp_path / "c" / "trial.json").read_text())["measurement"]
    assert "fitted on the run's dataset" in measurement["evaluator"]
    assert sorted((session_cache_dir / "evaluator").iterdir()) == evaluators  # the training run's, not a new one
    assert json.loads((tmp_path / "c" / "trial.json").read_text())["design"]["analysis"]["effects"] == "by_patient"
    report = (tmp_path / "c" / "report.md").read_text()
    assert "treatment-by-patient terms" in report
    # the file list names what this trial wrote: no study.csv, no gifs/
    assert "- `effects.csv`, `patient_effects.csv`: the tables above" in report and "gifs/" not in report
    assert not (tmp_path / "c" / "study.csv").exists() and not (tmp_path / "c" / "gifs").exists()
    effects = pd.read_csv(tmp_path / "c" / "effects.csv")
    # 2 patients x 5 block means, 2 x (2 treatments + intercept) + the trend's 1 parameters: 3 df
    common = (trial_out / "report.md").read_text()
    assert (effects["df"] == 3).all() and "treatment-by-patient terms" not in common
    assert "one effect per treatment for every patient (`effects: common`)" in common


def test_consecutive_days_share_the_patients_noise(trial_run):
    """Equal severities give the same image whatever the batch; another patient (seed) gives another image; pixels
    outside the mask are the baseline's."""
    from kgface.diffusion.generator import Generator
    from kgface.diffusion.run_loading import load_run
    from kgface.diffusion.editing import edit_mask
    from kgface.trials.images import Baseline, daily_images

    backbone, conditioner, profiles, cfg = load_run(trial_run)
    # 4 micro training steps leave the zero-initialised adapter values ~0 (the severity's effect then rounds away
    # in uint8); give them the size training would, so the test is about the daily pipeline, not about the model
    with torch.no_grad():
        for name, p in backbone.unet.named_parameters():
            if "to_v_ip" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    gen = Generator(backbone, conditioner, guidance=3.0, steps=2)
    acne = next(p for p in profiles if p.disease_id == "MONDO:0011438")
    face = torch.from_numpy(np.asarray(Image.open(sorted((trial_run / "samples" / "images").glob("*.png"))[0])
                                       .convert("RGB")).copy()).permute(2, 0, 1)
    mask = edit_mask(["cheeks", "forehead"], None, 32)
    faces = [Baseline("x", face, "test"), Baseline("x", face, "test")]
    days = np.array([1.0, 2.5, 1.0])
    a, b = daily_images(gen, acne, faces, [days, days], [11, 12], 0.8, mask, batch_size=2, progress=False)
    assert torch.equal(a[0], a[2])  # day 1 and day 3: same severity, other batches
    assert not torch.equal(a[0], a[1])  # the severity condition changes the image
    assert not torch.equal(a[0], b[0])  # another patient seed, another draw
    kept = mask[0] == 0
    assert torch.equal(a[:, :, kept], face[:, kept].expand(3, -1, -1))


def fails(capsys, run, out, *overrides) -> str:
    with pytest.raises(SystemExit) as info:
        trial(run, out, *overrides)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kgface.trial: error:"), err
    assert not (out / "trial.csv").exists() and not (out / "images").exists()  # nothing half-written
    return err[0]


@pytest.mark.parametrize("overrides, message", [
    (["trial.schedule.block_days=-4"], "durations cannot be negative"),
    (["trial.schedule.washout_days=-1"], "durations cannot be negative"),
    (["trial.schedule.order=[A,C]"], "unknown treatment(s) C"),
    (["trial.schedule.order=[A,placebo]"], "unknown treatment(s) placebo"),
    (["trial.analysis.skip_days=6", "trial.schedule.baseline_days=10"], "no treatment day would be analysed"),
    (["trial.schedule.baseline_days=0"], "nothing is left to compare"),
    (["trial.schedule.cycles=0"], "must be at least 1"),
    (["max_images=10"], "more than max_images=10"),
    (["strength=0"], "strength=0 must lie in (0, 1]"),
    (["device=banana"], "device=banana is not a torch device; use cpu, cuda, cuda:N or auto"),
    (["trial.mask=jaw"], "trial.mask=jaw is neither an image file nor a region"),  # the key this entry reads
    (["calibration=maybe"], "calibration=maybe is unknown"),
    (["seed=-1"], "seed=-1: numpy seeds cannot be negative"),
    (["seed=abc"], "seed='abc' is not a whole number"),
    (["trial.analysis.alpha=five"], "trial.analysis.alpha='five' must be a number in (0, 1)"),
    (["trial.analysis.trend='false'"], "trial.analysis.trend='false' must be true or false"),
    (["trial.analysis.effects=by_patient", "trial.analysis.cov=cluster"], "trial.analysis.effects=by_patient "
                                                                          "needs cov=nonrobust (got cov=cluster"),
    (["trial.analysis.effects=by_patient", "trial.schedule.cycles=1"], "trial.analysis.effects=by_patient needs "
                                                                         "every patient to repeat a treatment"),
    (["trial.schedule.treatments=drugX"], "trial.schedule.treatments='drugX' must be a list"),
    (["trial.schedule.order=alternating", "trial.schedule.cycles=1"], "cannot separate the treatments from the "
                                                                        "study-day trend"),
    (["batch_size=0"], "batch_size=0: must be at least 1"),
    (["steps=abc"], "steps='abc' is not a whole number"),
    (["guidance=abc"], "guidance=abc: not a number; give one (e.g. 3), or null for the run's"),
    (["guidance=inf"], "guidance=inf: not a finite number"),
    (["strength=nan"], "strength=nan: not a finite number; give one in (0, 1]"),
    (["trial.disease=null"], "trial.disease=None: name the disease the trial follows"),  # was the string "None"
])
def test_bad_designs_fail_before_anything_loads(tmp_path, capsys, overrides, message):
    err = fails(capsys, tmp_path / "no-run", tmp_path / "o", *overrides)
    assert message in err


@pytest.mark.parametrize("held", ["data.json", "model", "metrics.json", "manifest.csv"])
def test_a_trial_never_writes_into_another_jobs_output(tmp_path, capsys, held):
    """A train run, an evaluation or a generated set / dataset in OUT: its report.md and images/ would be replaced."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.md").write_text("theirs")
    if held == "model":
        (out / held).mkdir()
    else:
        (out / held).write_text("{}")
    kind = "a kgface.train run" if held in ("data.json", "model") else "another kgface output"
    assert f"holds {kind} ({held}), whose files the trial would replace" in fails(capsys, tmp_path / "no-run", out)
    assert (out / "report.md").read_text() == "theirs"


def test_a_trial_never_replaces_files_it_did_not_write(tmp_path, capsys):
    """OUT's images/ and report.md without trial.csv or trial.json are a user's own (the trial deleted them when it
    moved its own in), and a baseline photo in an earlier trial's images/ is this call's input."""
    out = tmp_path / "o"
    (out / "images").mkdir(parents=True)
    (out / "images" / "mine.png").write_bytes(b"not ours")
    (out / "report.md").write_text("theirs")
    with pytest.raises(SystemExit) as info:
        trial(tmp_path / "no-run", out)
    assert info.value.code == 2
    assert "holds report.md, images that no earlier run of the trial wrote (no trial.csv or trial.json or " in \
        capsys.readouterr().err
    assert (out / "images" / "mine.png").read_bytes() == b"not ours" and (out / "report.md").read_text() == "theirs"
    (out / "trial.json").write_text("{}")  # an earlier trial's folder: replaced, but not while it holds the input
    with pytest.raises(SystemExit) as info:
        trial(tmp_path / "no-run", out, f"input={out / 'images'}")
    assert info.value.code == 2 and f"input={out / 'images'} lies in {out}'s images" in capsys.readouterr().err
    # ... nor a photo a manifest outside it lists there
    listing = tmp_path / "faces.csv"
    listing.write_text(f"path,disease,stage,split,identity\n{out / 'images' / 'mine.png'},healthy,0,test,p1\n")
    with pytest.raises(SystemExit) as info:
        trial(tmp_path / "no-run", out, f"input={listing}")
    assert info.value.code == 2 and f"lies in {out}'s images" in capsys.readouterr().err
    assert (out / "images" / "mine.png").is_file()


def test_baseline_photos_are_one_per_named_person(tmp_path):
    from kgface.errors import UserError
    from kgface.trials.images import baseline_faces

    for i, sub in enumerate(("x", "y")):  # two unnamed people whose photos share a file name
        (tmp_path / sub).mkdir()
        Image.new("RGB", (20, 20), (40 * i, 90, 120)).save(tmp_path / sub / "a.png")
    listing = tmp_path / "faces.csv"
    listing.write_text("path,disease,stage,split,identity\nx/a.png,healthy,0,test,\ny/a.png,healthy,0,test,\n")
    faces = baseline_faces(2, 16, 0, input_spec=str(listing))
    assert len(faces) == 2 and not torch.equal(faces[0].image, faces[1].image)
    listing.write_text("path,disease,stage,split,identity\nx/a.png,healthy,0,test,p1\ny/a.png,healthy,0,test,p1\n")
    with pytest.raises(UserError, match="gives 1 identities' photo"):  # one named person twice is one patient
        baseline_faces(2, 16, 0, input_spec=str(listing))


def test_a_trial_never_writes_into_a_train_run(tmp_path, capsys):
    run = tmp_path / "run"  # a whole run (data.json + profiles.json): RUN/trial would sit among its files
    run.mkdir()
    for name in ("data.json", "profiles.json"):
        (run / name).write_text("{}")
    assert f"lies in the kgface.train run {run.resolve()}" in fails(capsys, tmp_path / "no-run", run / "trial")
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == ["data.json", "profiles.json"]


def test_bad_inputs_against_a_run(trial_run, tmp_path, capsys):
    assert "healthy" in fails(capsys, trial_run, tmp_path / "a", "trial.disease=healthy")
    assert "trial.disease=Acnee: unknown disease 'Acnee'" in fails(capsys, trial_run, tmp_path / "a2",
                                                                   "trial.disease=Acnee")
    assert "lesion-count scale" in fails(capsys, trial_run, tmp_path / "b", "trial.disease=ORPHA:870",
                                         "trial.scale=lesions")
    one = tmp_path / "one.png"
    Image.open(sorted((trial_run / "samples" / "images").glob("*.png"))[0]).save(one)
    assert "one person per patient" in fails(capsys, trial_run, tmp_path / "c", f"input={one}")
    twice = tmp_path / "twice.csv"  # two photos of one person are one patient, not two independent ones
    other = tmp_path / "other.png"
    Image.open(one).save(other)
    twice.write_text(f"path,disease,stage,split,identity\n{one},healthy,0,test,p1\n{other},healthy,0,test,p1\n")
    assert "gives 1 identities' photo(s) for trial.patients=2" in fails(capsys, trial_run, tmp_path / "c2",
                                                                         f"input={twice}")
    assert "does not exist" in fails(capsys, tmp_path / "missing", tmp_path / "d")
    assert "evaluator_dir=" in fails(capsys, trial_run, tmp_path / "e", f"evaluator_dir={tmp_path / 'none'}")
    assert "is a model=tiny run" in fails(capsys, trial_run, tmp_path / "f", "dtype=bf16")  # no frozen base to halve
    assert "steps=5000: DDIM steps are at most 1000" in fails(capsys, trial_run, tmp_path / "g", "steps=5000")
    bare = tmp_path / "bare"  # no evaluator/ and no dataset to fit one on: the key the advice names is the real one
    shutil.copytree(trial_run, bare, ignore=shutil.ignore_patterns("evaluator", "samples", "transforms", "checkpoints"))
    data = json.loads((bare / "data.json").read_text())
    (bare / "data.json").write_text(json.dumps({k: v for k, v in data.items() if k != "manifest"}))
    assert "give evaluator_dir=PATH" in fails(capsys, bare, tmp_path / "h")
    empty = tmp_path / "empty"  # the run's kg= is compared before its model loads (an SD run loads for minutes)
    empty.mkdir()
    (empty / "config.yaml").write_text((trial_run / "config.yaml").read_text())
    assert f"kg=primekg but run={empty} was trained with kg=hpo" in fails(
        capsys, empty, tmp_path / "i", "kg=primekg", f"kg.path={tmp_path / 'kg.csv'}")


def test_a_text_run_trial_says_its_images_move_in_stage_steps(baselines_run, tmp_path):
    """A text run's prompt names the stage, not the severity: the trial runs (a baseline worth measuring) and says
    that its image outcome moves in steps, in trial.json and the report."""
    trial(baselines_run / "text", tmp_path / "t", "trial.analysis.study_trials=0")
    warned = json.loads((tmp_path / "t" / "trial.json").read_text())["design_warnings"]
    assert any("is conditioning=text" in w and "moves in steps" in w for w in warned)
    assert "the image outcome moves in steps" in (tmp_path / "t" / "report.md").read_text()


def test_a_trial_without_run_is_a_one_line_error(tmp_path, capsys):
    from kgface.trial import main

    with pytest.raises(SystemExit) as info:
        main([f"hydra.run.dir={tmp_path / 'out'}", *SMALL])  # run: ??? in conf/trial.yaml
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err == ["kgface.trial: error: run= is required: a kgface.train output directory "
                                            "(python -m kgface.trial run=RUN_DIR)"]
