"""kgface.evaluation.sets: evaluate_sets on the tiny panel (memorisation, requests, edits, bad sets, the real
readings' split by the generated manifest), and parts with known answers on constructed tables; the instrument's
validity itself is tests/evaluation/test_eval_validity.py."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kgface.data.manifest import read_manifest, write_manifest
from kgface.errors import UserError
from kgface.evaluation import EvaluatorInputError, evaluate_sets, instrument_validity
from kgface.evaluation.sets import real_profile_match
from kgface.kg.profiles import FacialProfile, Phenotype
from tests.evaluation.conftest import edits_of, generated_manifest


def _profile():
    # template: stage 2 shows A (0.9) and B (0.3); stage 3 adds the rare C (0.1)
    return FacialProfile("D:1", "a disease", "test", phenotypes=[
        Phenotype("A", "a", "face", "", frequency=0.9), Phenotype("B", "b", "face", "", frequency=0.3),
        Phenotype("C", "c", "face", "", frequency=0.1)])


def test_real_profile_match_reads_labelled_graded_stage_2_3_faces_against_own_and_template_sets():
    rows = [  # disease, stage, source, stage_known, phenotypes, detected
        ("D:1", 3, "phantom", "True", {"A": 1.0, "B": 0.6, "Z": 1.0}, {"A"}),  # own {A,B} (Z: no head): 2/3
        ("D:1", 2, "phantom", "True", {"C": 1.0}, {"C"}),  # own 1; template {A,B}: 0
        ("D:1", 1, "phantom", "True", {"A": 1.0}, set()),  # stage 1: not a headline row
        ("healthy", 0, "phantom", "True", {}, {"B"}),  # healthy expects nothing: not read
        ("D:1", 3, "photo", "True", {}, {"A"}),  # a diseased photo's {} is "not labelled"
        ("D:1", 2, "photo", "False", {"A": 1.0}, set()),  # ungraded: its stage is a placeholder
        ("D:2", 3, "phantom", "True", {"A": 1.0}, {"A"}),  # no profile: own set only
        ("D:1", 3, "phantom", "True", {"Z": 1.0}, {"A"}),  # shows nothing with a head: own set unscored; template 0.5
    ]
    test = pd.DataFrame(rows, columns=["disease", "stage", "source", "stage_known", "phenotypes", "detected"])
    table = test[["disease", "stage", "phenotypes", "detected"]].copy()
    out = real_profile_match(table, test, {"D:1": _profile()}, ["A", "B", "C"])
    assert out["real_profile_match_n"] == 3 and out["real_profile_match_unscored_n"] == 1
    assert out["real_profile_match_f1"] == pytest.approx((2 / 3 + 1.0 + 1.0) / 3)
    # the rows with a profile: row 1 and the last row against {A,B,C}: 2 x 1 / (1 + 3) each; row 2 against {A,B}: 0
    assert out["real_profile_match_f1_template"] == pytest.approx(1 / 3) and out["real_profile_match_template_n"] == 3
    assert out["real_profile_match_template_unscored_n"] == 0
    # a template without a phenotype the evaluator can detect is counted, not scored
    only_c = real_profile_match(table, test, {"D:1": _profile()}, ["C", "Z"])
    assert only_c["real_profile_match_template_unscored_n"] == 1 and only_c["real_profile_match_template_n"] == 2
    # without profiles only the own-set reference; without a readable row nothing
    assert "real_profile_match_f1_template" not in real_profile_match(table, test, {}, ["A", "B", "C"])
    assert real_profile_match(table.iloc[2:4], test.iloc[2:4], {"D:1": _profile()}, ["A", "B", "C"]) == {}


def test_a_heldout_column_in_the_generated_manifest_alone_splits_the_real_readings(tiny_evaluator, tiny_data,
                                                                                    tmp_path):
    """A photo manifest has no heldout column; the generated manifest's marks the held-out diseases for both."""
    real = read_manifest(tiny_data / "manifest.csv")[0].drop(columns=["heldout"], errors="ignore")
    gen = pd.read_csv(generated_manifest(tiny_data, tmp_path), dtype=str, keep_default_na=False)
    out = sorted(set(gen["disease"]) - {"healthy"})[0]
    gen["heldout"] = np.where(gen["requested_disease"] == out, "True", "False")
    path = write_manifest(gen.to_dict("records"), tmp_path / "gen" / "marked.csv")
    m = evaluate_sets(tiny_evaluator, real, path)
    test = real[real["split"] == "test"]
    head = test[test["stage"].isin([2, 3]) | (test["disease"] == "healthy")]
    assert m["evaluator"]["n_heldout"] == (head["disease"] == out).sum() > 0
    assert "real_top1_heldout" in m["evaluator"] and "heldout_top1" in m["generation"]


def test_memorisation_audit_counts_copies_of_extra_training_images(tiny_evaluator, tiny_data, tmp_path):
    # generated = copies of val faces (no train image); as extra training images (the phenotype atlas under
    # trainer.atlas_share) the same faces make every generated image a copy
    import shutil

    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    # faces of diseases the generator trained on (a held-out disease's train faces are not searched)
    val = df[(df["split"] == "val") & (df["heldout"].str.lower() != "true")].head(12).copy()
    n = len(val)
    assert n >= 8
    for k, p in enumerate(list(val["path"])):
        shutil.copy(tiny_data / p, tmp_path / f"v{k:02d}.png")
    val["path"] = [f"v{k:02d}.png" for k in range(len(val))]
    gen_rows = [{**r, "source": "generated", "mode": "sample", "requested_disease": r["disease"],
                 "requested_stage": r["stage"], "seed": i, "source_image": ""}
                for i, r in enumerate(val.to_dict("records"))]
    gen = write_manifest(gen_rows, tmp_path / "gen.csv")
    extra = write_manifest(val.to_dict("records"), tmp_path / "extra.csv")
    plain = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None)
    audited = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None, audit_extra=extra)
    assert audited["memorisation_train_n"] == plain["memorisation_train_n"] + n
    assert audited["memorisation_rate"] == 1.0 and plain["memorisation_rate"] < 0.5
    # (the tiny set holds a held-out disease, whose train faces the generator never saw: not searched)
    # ... nor are its test faces what sets the threshold (they sit farther from the searched faces)
    assert plain["memorisation_reference"] == ("the real set's train split without the held-out diseases; threshold "
                                               "from the real set's test split without the held-out diseases")
    real = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    held = set(real.loc[real["heldout"].str.lower() == "true", "disease"])
    searched = (real["split"] == "train") & ~real["disease"].isin(held)
    assert held and plain["memorisation_train_n"] == int(searched.sum())
    fresh = (real["split"] == "test") & ~real["disease"].isin(held)
    assert plain["memorisation_holdout_n"] + plain["memorisation_holdout_duplicates"] == int(fresh.sum())
    assert audited["memorisation_reference"].startswith(f"the real set's train split without the held-out diseases + "
                                                        f"{extra};")
    # audit_train: the generator's own manifest (kgface.evaluate run=RUN real=ANOTHER) replaces real's train split:
    # here one whose train rows are these very faces, so every generated image is a copy of a training image
    trained = write_manifest([{**r, "split": "train"} for r in val.to_dict("records")], tmp_path / "trained.csv")
    own = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None, audit_train=trained)
    assert own["memorisation_train_n"] == n and own["memorisation_rate"] == 1.0
    # ... that manifest has no test or val rows: the real set's fresh faces set the threshold, and it says so
    assert own["memorisation_reference"] == (f"the train split of {trained} without the held-out diseases; "
                                             "threshold from the real set's test split without the held-out "
                                             f"diseases ({trained} has no test or val split; faces of other data may "
                                             "sit farther from its training images and inflate the rate)")
    assert own["memorisation_quantile"] == 0.99 and own["memorisation_holdout_n"] == plain["memorisation_holdout_n"]
    # with test rows, those set it (here the val faces of half the identities; the other half its train rows)
    people = sorted(set(val["identity"]))
    learned = set(people[: len(people) // 2])
    split = write_manifest([{**r, "split": "train" if r["identity"] in learned else "test"}
                            for r in val.to_dict("records")], tmp_path / "trained_split.csv")
    mixed = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None, audit_train=split)
    assert mixed["memorisation_reference"].endswith(f"threshold from the test split of {split}")
    n_train = int(val["identity"].isin(learned).sum())
    assert 0 < n_train < n and mixed["memorisation_train_n"] == n_train
    assert mixed["memorisation_holdout_n"] + mixed["memorisation_holdout_duplicates"] == n - n_train
    # that manifest's test rows all copies of its train rows: the error names it, not the real set it was not
    for k in range(n):
        shutil.copy(tmp_path / f"v{k:02d}.png", tmp_path / f"c{k:02d}.png")
    copies = write_manifest([{**r, "split": "train"} for r in val.to_dict("records")]
                            + [{**r, "split": "test", "path": f"c{k:02d}.png", "identity": f"copy-{k}"}
                               for k, r in enumerate(val.to_dict("records"))], tmp_path / "copies.csv")
    with pytest.raises(UserError, match=rf"the threshold's faces: the test split of {re.escape(str(copies))}"):
        evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None, audit_train=copies)
    # its val rows, where it has no test rows
    as_val = write_manifest([{**r, "split": "train" if r["identity"] in learned else "val"}
                             for r in val.to_dict("records")], tmp_path / "trained_val.csv")
    by_val = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None, audit_train=as_val)
    assert by_val["memorisation_reference"].endswith(f"threshold from the val split of {as_val}")
    assert by_val["memorisation_threshold"] == mixed["memorisation_threshold"]


def test_expected_sets_follow_the_drawn_phenotypes_then_the_labels_then_the_template(tiny_profiles):
    from kgface.evaluation.sets import _expected_sets
    from kgface.prompts import stage_phenotypes

    prof = next(p for p in tiny_profiles if not p.healthy)
    ids = [p.hpo_id for p in prof.phenotypes]
    vocab = ids[:-1]  # the evaluator cannot detect the last one
    table = pd.DataFrame({"phenotypes": [{}, {ids[0]: 0.4, ids[1]: 0.0}, {}, {}],
                          "requested_phenotypes": [json.dumps([ids[0], ids[-1]]), "", "[]", float("nan")]})
    got = _expected_sets(table, [prof.disease_id] * 4, [3, 3, 3, 2], {prof.disease_id: prof}, vocab)
    assert got[0] == {ids[0]}  # the drawn set, restricted to what the evaluator detects
    assert got[1] == {ids[0]}  # the image's own labels (intensity > 0)
    assert got[2] == set()  # a drawn empty set expects nothing
    assert got[3] == {p.hpo_id for p in stage_phenotypes(prof, 2)} & set(vocab)  # no draw, no labels: the template
    for bad in ("HP:1", '"HP:1"', '{"HP:1": 1}', '[["HP:1"]]'):  # not JSON; JSON but not a list of ids
        with pytest.raises(EvaluatorInputError, match="g7.png: requested_phenotypes"):
            _expected_sets(pd.DataFrame({"phenotypes": [{}], "requested_phenotypes": [bad], "path": ["g7.png"]}),
                           [prof.disease_id], [3], {prof.disease_id: prof}, vocab)


def test_profile_match_scores_only_requests_that_expect_a_detectable_phenotype(tiny_evaluator, tiny_data,
                                                                               tiny_profiles, tmp_path):
    """A blank face reads F1 = 1 on a request that expects nothing: an empty frequency draw ("[]"), or, without
    profiles, a request with neither a draw nor labels (its template is unknown) is counted, not scored."""
    gen = generated_manifest(tiny_data, tmp_path, n=16)
    df = pd.read_csv(gen, dtype=str, keep_default_na=False)
    pm = ((df["mode"] == "sample") & (df["requested_disease"] != "healthy")
          & (df["requested_stage"].astype(int) >= 2)).to_numpy()
    assert pm.sum() >= 2
    df["requested_phenotypes"] = ""
    df.loc[np.flatnonzero(pm)[0], "requested_phenotypes"] = "[]"
    df.to_csv(gen, index=False)
    g = evaluate_sets(tiny_evaluator, None, gen, tiny_profiles)["generation"]
    # the other requests expect their own labelled phenotypes (each diseased stage 2-3 phantom shows some)
    assert g["profile_match_unscored_n"] == 1 and g["profile_match_n"] == pm.sum() - 1
    df["requested_phenotypes"], df["phenotypes"] = "", "{}"
    df.to_csv(gen, index=False)
    g = evaluate_sets(tiny_evaluator, None, gen, None)["generation"]
    assert g["profile_match_unscored_n"] == pm.sum() and g["profile_match_n"] == 0
    assert g["profile_match_f1"] is None  # no row to read: null, not a number and not left out
    g = evaluate_sets(tiny_evaluator, None, gen, tiny_profiles)["generation"]  # the template, from the profiles
    assert g["profile_match_n"] + g["profile_match_unscored_n"] == pm.sum() and g["profile_match_n"] > 0


def test_kg_frequencies_keep_what_the_evaluator_can_read_with_a_known_frequency():
    """Known answer: a phenotype without a head, or without a KG frequency, is not compared (it would count as
    observed 0 against an expectation and inflate the MAE); healthy and unrequested diseases are left out."""
    from kgface.evaluation.sets import kg_frequencies
    from kgface.kg import healthy_profile

    def ph(hpo, freq):
        return Phenotype(hpo_id=hpo, name=hpo, region="eyes", visual=hpo, frequency=freq)

    d1 = FacialProfile("D:1", "one", "hpo", [ph("HP:1", 0.8), ph("HP:2", None), ph("HP:3", 0.3)])
    d2 = FacialProfile("D:2", "two", "hpo", [ph("HP:3", 0.5)])
    d3 = FacialProfile("D:3", "three", "hpo", [ph("HP:2", 0.9)])  # its only phenotype: no head
    profiles = {"D:1": d1, "D:2": d2, "D:3": d3, "healthy": healthy_profile()}
    got = kg_frequencies(profiles, ["HP:1", "HP:3", "HP:9"], {"D:1", "D:3", "healthy", "D:404"})
    assert got == {"D:1": {"HP:1": 0.8, "HP:3": 0.3}}


def test_frequency_mae_falls_back_to_stages_2_3_without_a_stage_3_request(tiny_evaluator, tiny_data, tiny_profiles,
                                                                          tmp_path):
    gen = generated_manifest(tiny_data, tmp_path, n=40)
    df = pd.read_csv(gen, dtype=str, keep_default_na=False)
    from kgface.evaluation import metrics as M
    from kgface.evaluation.sets import kg_frequencies

    def read(stages):  # the key recomputed from the scored rows of the requested stages alone
        m, scored = evaluate_sets(tiny_evaluator, None, gen, tiny_profiles, return_scored=True)
        t = scored["generated"].table
        rows = t["requested_stage"].astype(str).isin(stages).to_numpy() & (t["mode"] != "transform").to_numpy()
        exp = kg_frequencies({p.disease_id: p for p in tiny_profiles}, tiny_evaluator.phenotypes,
                             set(t["requested_disease"][rows]))
        obs = M.phenotype_frequencies(list(t["detected"][rows]), list(t["requested_disease"][rows]))
        assert m["generation"]["frequency_mae"] == pytest.approx(M.frequency_mae(obs, exp)[0], abs=1e-4)
        return m["generation"]

    g3 = read({"3"})
    assert g3["frequency_mae_stages"] == [3] and "frequency_mae_read_at_stages_2_3" not in g3
    # one disease asked at stage 2 only, beside others at 3: read at its stages 2-3, not dropped from the mean
    first = sorted(g3["frequency_mae_per_disease"])[0]
    mixed = df[~((df["requested_disease"] == first) & (df["requested_stage"] == "3"))]
    mixed.to_csv(gen, index=False)
    gm = evaluate_sets(tiny_evaluator, None, gen, tiny_profiles)["generation"]
    assert first in gm["frequency_mae_per_disease"] and gm["frequency_mae_read_at_stages_2_3"] == [first]
    assert set(gm["frequency_mae_per_disease"]) == set(g3["frequency_mae_per_disease"])
    # no KG frequency the evaluator can read (here: no heads named): the key is left out, not null
    by_id = {p.disease_id: p for p in tiny_profiles}
    assert kg_frequencies(by_id, [], set(by_id)) == {}
    assert set(kg_frequencies(by_id, tiny_evaluator.phenotypes, set(by_id))) == {
        d for d, p in by_id.items() if not p.healthy and any(ph.hpo_id in tiny_evaluator.phenotypes
                                                             and ph.frequency is not None for ph in p.phenotypes)}
    df[df["requested_stage"] != "3"].to_csv(gen, index=False)
    g2 = read({"2"})  # no stage-3 request left: stages 2-3 are stage 2's rows
    assert g2["frequency_mae_stages"] == [2, 3]
    # only requested diseases with a KG frequency the evaluator can read are compared (healthy never)
    assert set(g2["frequency_mae_per_disease"]) <= set(df["requested_disease"]) - {"healthy"}


def test_real_frequency_mae_reads_graded_stage_3_faces_only(tiny_evaluator, tiny_data, tiny_profiles, tmp_path):
    """An ungraded photo's stage is a placeholder: marked ungraded, the stage-3 test faces leave real_frequency_mae
    without rows (left out), where they gave it a number."""
    import shutil

    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    for folder in {str(Path(p).parent) for p in df["path"]}:
        shutil.copytree(tiny_data / folder, tmp_path / folder, dirs_exist_ok=True)
    graded = write_manifest(df.to_dict("records"), tmp_path / "graded.csv")
    assert "real_frequency_mae" in evaluate_sets(tiny_evaluator, graded, None, tiny_profiles)["evaluator"]
    df["stage_known"] = np.where((df["split"] == "test") & (df["stage"] == "3"), "False", "True")
    ungraded = write_manifest(df.to_dict("records"), tmp_path / "ungraded.csv")
    assert "real_frequency_mae" not in evaluate_sets(tiny_evaluator, ungraded, None, tiny_profiles)["evaluator"]


def test_identity_is_read_on_the_edits_that_name_their_source(tiny_evaluator, tiny_data, tmp_path):
    test = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    test = test[test["split"] == "test"].head(5)
    gen = edits_of(tiny_data, test, tmp_path / "gen", ["transform"] * 3 + ["sample"] * 2)
    df = pd.read_csv(gen, dtype=str, keep_default_na=False)
    df.loc[1, "source_image"] = ""  # one transformation without its source: the other two are still read
    df.to_csv(gen, index=False)
    t = evaluate_sets(tiny_evaluator, None, gen, None)["transform"]
    assert t["n"] == 3 and t["identity_n"] == 2 and t["identity_similarity"] == pytest.approx(1.0, abs=1e-4)


def test_requests_are_read_row_by_row_and_continuous_stages_round():
    from kgface.evaluation.sets import _requested

    table = pd.DataFrame({"path": ["a.png", "b.png", "c.png", "d.png"], "disease": ["A", "B", "C", "D"],
                          "stage": [3, 2, 1, 0], "requested_disease": ["X", "", "Z", float("nan")],
                          "requested_stage": ["2.6", "", "0.4", "1.5"]})
    diseases, severity, stages = _requested(table)
    assert list(diseases) == ["X", "B", "Z", "D"]  # an empty cell falls back for its own row only
    assert list(severity) == [2.6, 2.0, 0.4, 1.5]  # Spearman reads the requested severity
    assert list(stages) == [3, 2, 0, 2]  # the stage whose bin holds the severity, as the generator's rows write it
    halves = _requested(table.assign(requested_stage=["0.5", "2.5", "1.49", "2.51"]))[2]
    assert list(halves) == [1, 3, 1, 3]  # the phantom's bins [s - 0.5, s + 0.5): not round-half-even's 0 and 2
    for bad in ("two", "3.5", "-1"):
        with pytest.raises(EvaluatorInputError, match=f"b.png: requested stage '{bad}' is not a number in"):
            _requested(table.assign(requested_stage=["1", bad, "1", "1"]))


def test_a_real_set_without_test_rows_is_an_error_and_a_one_image_set_is_scored_without_fid(tiny_evaluator, tiny_data,
                                                                                             tmp_path):
    df = read_manifest(tiny_data / "manifest.csv")[0]
    with pytest.raises(EvaluatorInputError, match="no rows with split=test .*train"):
        instrument_validity(tiny_evaluator, df[df["split"] != "test"])
    one = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    one = one[one["split"] == "test"].head(1)
    import shutil

    shutil.copy(tiny_data / one["path"].iloc[0], tmp_path / "g0.png")
    one["path"] = ["g0.png"]
    gen = write_manifest([{**r, "source": "generated", "mode": "sample", "requested_disease": r["disease"],
                           "requested_stage": r["stage"], "seed": 0, "source_image": ""}
                          for r in one.to_dict("records")], tmp_path / "one.csv")
    # one image: its disease and stage are read; FID/KID are not computed, and the metrics say why
    m = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None)
    assert "fid_clip" not in m and "kid_clip" not in m and m["fid_kid_n"]["generated"] == 1
    assert "fewer than 2" in m["fid_kid_n"]["no_fid_kid"]
    scored = tiny_evaluator.score(gen)  # the one face's disease reading, against its request
    assert m["generation"]["top1_all"] == pytest.approx(
        float(scored["pred_disease"].iloc[0] == scored["requested_disease"].iloc[0]))
    # one drawn image beside a transformation: the same (edits of real faces are left out)
    m = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", generated_manifest(tiny_data, tmp_path, n=1), None)
    assert "fid_clip" not in m and m["fid_kid_n"]["generated"] == 1 and "left out" in m["fid_kid_n"]["edits_of_real_faces"]
    # one real test face against several generated ones: scored, no FID/KID (it ended the whole evaluation)
    real = read_manifest(tiny_data / "manifest.csv")[0]
    real = real[(real["split"] != "test") | (real.index == real.index[real["split"] == "test"][0])]
    (tmp_path / "many").mkdir()
    m = evaluate_sets(tiny_evaluator, real, generated_manifest(tiny_data, tmp_path / "many", n=4), None)
    assert "fid_clip" not in m and m["fid_kid_n"]["real"] == 1
    assert m["fid_kid_n"]["no_fid_kid"] == "fewer than 2 real test images"


def test_relative_transform_sources_are_read_from_the_manifest_folder(tiny_evaluator, tiny_data, tmp_path):
    """An absolute `path` inside the folder (read_manifest accepts it) with a relative source_image: the source is
    found beside the manifest (it was an IndexError); a DataFrame with no folder is a one-line error."""
    test = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    test = test[test["split"] == "test"].head(6)
    gen = edits_of(tiny_data, test, tmp_path / "gen", ["transform"] * 2 + ["sample"] * 4, absolute=True)
    m = evaluate_sets(tiny_evaluator, None, gen, None)
    assert m["transform"]["n"] == 2 and m["transform"]["identity_similarity"] == pytest.approx(1.0, abs=1e-4)
    frame = read_manifest(gen)[0]
    frame.attrs.clear()
    with pytest.raises(EvaluatorInputError, match="source_image 'src/s0.png' is relative"):
        evaluate_sets(tiny_evaluator, None, frame, None)


def test_unknown_requests_are_refused_before_any_image_is_read(tiny_evaluator, tiny_data, tmp_path):
    """The requests are checked first, naming the first bad row: the images behind them are not even read (a
    missing one would be the other error), so a mislabelled set fails in seconds, not after it was encoded."""
    frame = read_manifest(generated_manifest(tiny_data, tmp_path, n=4))[0]
    clean = frame.copy()
    frame.loc[2, "requested_disease"] = "ORPHA:870"
    frame["abspath"] = [str(tmp_path / f"gone{i}.png") for i in range(len(frame))]
    real = read_manifest(tiny_data / "manifest.csv")[0]
    real["abspath"] = [str(tmp_path / f"gone_real{i}.png") for i in range(len(real))]  # nor the real images
    with pytest.raises(EvaluatorInputError, match=r"unknown to the evaluator: ORPHA:870 \(first: g002\.png, column "
                                                  r"requested_disease\)"):
        evaluate_sets(tiny_evaluator, real, frame, None)
    frame.loc[2, "requested_disease"] = ""  # a blank request falls back to the row's disease: that column is named
    frame.loc[2, "disease"] = "ORPHA:870"
    with pytest.raises(EvaluatorInputError, match=r"first: g002\.png, column disease\)"):
        evaluate_sets(tiny_evaluator, None, frame, None)
    del frame["requested_disease"]
    with pytest.raises(EvaluatorInputError, match=r"first: g002\.png, column disease\)"):
        evaluate_sets(tiny_evaluator, None, frame, None)
    # an edit whose source face is gone: named before the set is scored (it was found only afterwards)
    clean.loc[len(clean) - 1, "source_image"] = str(tmp_path / "gone_source.png")
    clean["abspath"] = frame["abspath"]
    with pytest.raises(EvaluatorInputError, match=r"generated set \(.*manifest\.csv\), t000\.png: source_image "
                                                  r"'.*gone_source\.png' does "
                                                  r"not exist"):
        evaluate_sets(tiny_evaluator, real, clean, None)


def test_a_requested_disease_without_a_profile_is_a_clear_error(tiny_evaluator, tiny_data, tiny_profiles, tmp_path):
    gen = generated_manifest(tiny_data, tmp_path, n=8)
    some = [p for p in tiny_profiles if p.disease_id != "ORPHA:96253"]
    assert "ORPHA:96253" in set(read_manifest(gen)[0]["requested_disease"])
    with pytest.raises(EvaluatorInputError, match="no KG profile for ORPHA:96253"):
        evaluate_sets(tiny_evaluator, None, gen, some)


def test_progressions_of_an_input_photo_are_scored_without_fid_and_keep_their_identity(tiny_evaluator, tiny_data,
                                                                                        tmp_path):
    """A set of progressions of input photos (kgface.generate mode=progression input=..., rows with a source_image)
    is judged at its stages, left out of FID/KID (it stopped the evaluation: "0 generated") and of tstr's training
    rows (their sources may be the real test faces), and its edits' identity is read against their sources (here
    copies: cosine 1)."""
    test = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    test = test[(test["split"] == "test") & (test["disease"] != "healthy") & (test["stage"].astype(int) >= 2)]
    test = test.groupby("disease").head(2).head(6)
    assert test["disease"].nunique() >= 2  # enough classes that tstr would train on them if edits were let in
    gen = edits_of(tiny_data, test, tmp_path / "prog", ["progression"] * len(test))
    m = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None)
    assert m["fid_kid_n"]["generated"] == 0 and "left out" in m["fid_kid_n"]["edits_of_real_faces"]
    assert "kid_clip" not in m and "transform" not in m
    assert m["progression_edits"]["n"] == 6
    assert m["progression_edits"]["identity_similarity"] == pytest.approx(1.0, abs=1e-4)
    scored = tiny_evaluator.score(gen)  # judged against what each edit asked for
    assert m["generation"]["top1_all"] == pytest.approx(
        (scored["pred_disease"].astype(str) == scored["requested_disease"].astype(str)).mean(), abs=1e-4)
    assert "tstr_n_generated" not in m  # edits of real faces do not train the synthetic probe
