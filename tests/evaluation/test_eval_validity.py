"""kgface.evaluation.validity: the instrument read on real test faces with known answers (an identity round trip
changes nothing, recomputed top-1 / top-3 / macro-F1 / presence), the seen / held-out split, the oracle, and the
per-phenotype AUROCs on constructed tables."""
import numpy as np
import pandas as pd
import pytest
import torch

from kgface.data.manifest import read_manifest
from kgface.evaluation import EvaluatorInputError, instrument_validity, load_images, oracle_top1


def test_validity_oracle_and_vae_ceiling_identity_roundtrip(tiny_evaluator, tiny_data):
    from kgface.evaluation import metrics as M

    df = read_manifest(tiny_data / "manifest.csv")[0]
    v = instrument_validity(tiny_evaluator, df, roundtrip=lambda x: x)
    assert v["vae_ceiling_top1"] == pytest.approx(v["real_top1"])  # a perfect round trip changes nothing
    assert v["vae_ceiling_top1_ci95"] == pytest.approx(v["real_top1_ci95"])  # and so its interval
    # the interval resamples faces: over fewer than 5 it is not given (one face drew [rho, rho])
    faces = df[(df["split"] == "test") & (df["disease"] != "healthy")]["identity"].nunique()
    low, high = v["vae_ceiling_stage_spearman_ci95"]
    if faces < 5:
        assert np.isnan(low) and np.isnan(high), faces
    else:
        assert low <= v["vae_ceiling_stage_spearman"] <= high
    assert v["vae_ceiling_stage_spearman"] == pytest.approx(v["real_stage_spearman_disease"])
    assert v["vae_ceiling_phenotype_auroc"] == pytest.approx(v["phenotype_auroc"], nan_ok=True)
    sick = df[(df["split"] == "test") & (df["disease"] != "healthy")]
    # healthy faces have their own cell: in the stage-0 cell they outweighed the healthy-looking stage-0 diseases
    assert sick["stage"].nunique() > 1 and set(v["per_stage_top1"]) == {0, 1, 2, 3, "healthy"}
    scored = tiny_evaluator.score(df[df["split"] == "test"])
    right = (scored["pred_disease"] == scored["disease"]).to_numpy()
    at0 = ((scored["stage"] == 0) & (scored["disease"] != "healthy")).to_numpy()
    assert v["per_stage_top1"][0] == pytest.approx(right[at0].mean())
    # the headline rows (stages 2-3 and healthy), scored here: real_top1 is their accuracy
    test = df[df["split"] == "test"]
    head = test[test["stage"].isin([2, 3]) | (test["disease"] == "healthy")]
    scored = tiny_evaluator.score(load_images(list(head["abspath"])))
    assert v["real_top1"] == pytest.approx((scored["pred_disease"].to_numpy() == head["disease"].to_numpy()).mean())
    # macro-F1 on the same rows; the stage MAE of diseased faces on the rows of generation.stage_mae
    assert v["real_macro_f1"] == pytest.approx(M.macro_f1(list(head["disease"]), list(scored["pred_disease"])))
    # presence on the same rows: diseased vs healthy faces, by the zero-shot prompts and by the probe
    from sklearn.metrics import roc_auc_score

    ill = (head["disease"] != "healthy").to_numpy()
    assert 0 < ill.sum() < len(ill)
    assert v["zero_shot_presence_auroc"] == pytest.approx(roc_auc_score(ill, scored["zs_presence"]))
    assert v["presence_auroc"] == pytest.approx(roc_auc_score(ill, 1 - scored["p_healthy"]))
    # zero-shot presence disease by disease: its faces against the healthy ones, by its prompts against health alone
    from kgface.evaluation.evaluator import pair_presence

    pair = pair_presence(tiny_evaluator.features(load_images(list(head["abspath"]))), tiny_evaluator.zs_text,
                         tiny_evaluator.classes)
    lab = head["disease"].to_numpy()
    per = {d: roc_auc_score(lab[(lab == d) | ~ill] == d, pair[(lab == d) | ~ill, tiny_evaluator.classes.index(d)])
           for d in set(lab[ill])}
    assert len(per) > 1 and v["zero_shot_pair_auroc_per_disease"] == pytest.approx(per)
    assert v["zero_shot_pair_auroc"] == pytest.approx(np.mean(list(per.values())))
    # top-3 and the zero-shot prompts' top-1 on the same rows
    assert v["real_top3"] == pytest.approx(np.mean([d in t3 for d, t3 in zip(lab, scored["top3"])]))
    assert v["real_top3"] >= v["real_top1"]
    assert v["zero_shot_top1"] == pytest.approx((scored["zs_disease"].to_numpy() == lab).mean())
    # a test split without healthy faces cannot define presence: null, not a number from one class
    no_healthy = df[(df["split"] != "test") | (df["disease"] != "healthy")]
    w = instrument_validity(tiny_evaluator, no_healthy)
    assert np.isnan(w["zero_shot_presence_auroc"]) and np.isnan(w["presence_auroc"])
    sick_scored = tiny_evaluator.score(load_images(list(sick["abspath"])))
    assert v["real_stage_mae_disease"] == pytest.approx(M.stage_mae(sick["stage"], sick_scored["stage_pred"]))
    every = tiny_evaluator.score(load_images(list(test["abspath"])))
    assert v["real_macro_f1_all"] == pytest.approx(M.macro_f1(list(test["disease"]), list(every["pred_disease"])))
    # one person at four stages: same-identity pairs exist, so the identity AUROC is a number, the features' own
    test_feats = tiny_evaluator.features(load_images(list(test["abspath"])))
    assert v["identity_auroc"] == pytest.approx(M.identity_auroc(test_feats, list(test["identity"])))
    ends = M.identity_cosines(test_feats, list(test["identity"]))  # the scale transform.identity_similarity lies on
    assert (v["identity_same_cosine"], v["identity_different_cosine"]) == pytest.approx((ends["same"],
                                                                                          ends["different"]))
    assert v["identity_n"] == len(test)
    # one test face without an identity (a photo set): the others are still read, and counted (was: no number)
    unnamed = df.copy()
    first = unnamed.index[unnamed["split"] == "test"][0]
    unnamed.loc[first, "identity"] = ""
    u = instrument_validity(tiny_evaluator, unnamed)
    keep = (test["identity"].astype(str) != "").to_numpy().copy()
    keep[0] = False
    assert u["identity_n"] == len(test) - 1
    assert u["identity_auroc"] == pytest.approx(M.identity_auroc(test_feats[keep], list(test["identity"][keep])))
    # calibration: the ECE of the probe's probabilities on the headline rows, and the temperature val fitted
    probs = scored[[f"p_{c}" for c in tiny_evaluator.classes]].to_numpy()
    assert v["real_ece"] == pytest.approx(M.expected_calibration_error(
        probs, [tiny_evaluator.classes.index(d) for d in lab]))
    assert v["calibration_temperature"] == tiny_evaluator.info["temperature"] > 0
    assert v["oracle_top1"] > 0.8  # the phenotype vectors separate the panel at stages 2-3
    assert v["phenotype_auroc"] and set(v["phenotype_auroc"]) <= set(tiny_evaluator.phenotypes)
    assert all(0 <= a <= 1 for a in v["phenotype_auroc"].values())
    blurred = instrument_validity(tiny_evaluator, df, roundtrip=lambda x: torch.zeros_like(x))
    # every black image gets one prediction: top-1 can be at most the largest class's share of the headline rows
    assert blurred["vae_ceiling_top1"] <= head["disease"].value_counts(normalize=True).max() + 1e-9
    # a black image carries no stage: its severity is one constant, the rank correlation is undefined (nan)
    assert np.isnan(blurred["vae_ceiling_stage_spearman"])
    # no held-out diseases named: no split
    assert not any(k.endswith(("_seen", "_heldout", "_seen_disease")) for k in v)
    # robustness: the headline faces blurred by real_blur_sigma px, read by the same heads
    from kgface.evaluation.inputs import blur_images

    soft = tiny_evaluator.score(blur_images(load_images(list(head["abspath"])), v["real_blur_sigma"]))
    assert v["real_blur_sigma"] == 1.0
    truth = head["disease"].to_numpy()
    assert v["real_top1_blurred"] == pytest.approx((soft["pred_disease"].to_numpy() == truth).mean())


def test_validity_splits_seen_and_heldout_rows_as_the_generated_numbers_do(tiny_evaluator, tiny_data):
    df = read_manifest(tiny_data / "manifest.csv")[0]
    test = df[df["split"] == "test"]
    head = test[test["stage"].isin([2, 3]) | (test["disease"] == "healthy")]
    out = sorted(set(test["disease"]) - {"healthy"})[0]
    held = (head["disease"] == out).to_numpy()
    pred = tiny_evaluator.score(load_images(list(head["abspath"])))["pred_disease"].to_numpy()
    truth = head["disease"].to_numpy()
    # the round trip keeps the held-out faces and blacks out the rest: the ceilings part where the images do
    keep = torch.tensor([d == out for d in test["disease"]])

    def roundtrip(x):
        assert len(x) == len(keep)  # the whole test split, in its order
        return x * keep.view(-1, 1, 1, 1).to(x.dtype)

    v = instrument_validity(tiny_evaluator, df, heldout={out, "D:not-in-this-set"}, roundtrip=roundtrip)
    assert v["n_heldout"] == held.sum() > 0 and v["n_seen"] == (~held).sum() > 0
    assert v["real_top1_heldout"] == pytest.approx((pred[held] == truth[held]).mean())
    assert v["real_top1_seen"] == pytest.approx((pred[~held] == truth[~held]).mean())
    assert v["vae_ceiling_top1_heldout"] == pytest.approx(v["real_top1_heldout"])  # those faces went through whole
    black = tiny_evaluator.score(torch.zeros_like(load_images(list(head["abspath"][:1]))))["pred_disease"]
    assert v["vae_ceiling_top1_seen"] == pytest.approx((truth[~held] == black[0]).mean())  # one guess for them all
    # the seen rows without the healthy faces: generation.seen_disease_top1's rows
    sick = ~held & (truth != "healthy")
    assert v["n_seen_disease"] == sick.sum() > 0 and sick.sum() < (~held).sum()
    assert v["real_top1_seen_disease"] == pytest.approx((pred[sick] == truth[sick]).mean())
    assert v["vae_ceiling_top1_seen_disease"] == pytest.approx((truth[sick] == black[0]).mean())
    # a held-out name with no rows in the set: no split
    assert "real_top1_heldout" not in instrument_validity(tiny_evaluator, df, heldout={"D:not-in-this-set"})


def test_isolated_auroc_is_half_when_the_effect_draws_nothing(tiny_evaluator, tiny_data):
    from kgface.evaluation.validity import isolated_auroc

    df = read_manifest(tiny_data / "manifest.csv")[0]
    faces = load_images(list(df[df.disease == "healthy"]["abspath"][:4]))
    h = tiny_evaluator.phenotypes[0]
    # the "phenotype" images are the bare faces themselves: every score ties, AUROC 0.5
    same = isolated_auroc(tiny_evaluator, torch.cat([faces, faces]), [None] * 4 + [h] * 4)
    assert same == {h: pytest.approx(0.5)}
    # against faces that do show it: the head's scores, positives = the labelled faces, negatives = the bare ones
    from kgface.evaluation import metrics as M

    shown = load_images(list(df[[h in p for p in df["phenotypes"]]]["abspath"][:4]))
    images = torch.cat([faces, shown])
    scores = tiny_evaluator.score(images)[f"ph_{h}"].to_numpy()
    auc = isolated_auroc(tiny_evaluator, images, [None] * 4 + [h] * len(shown))
    # the caller's features of the same faces give the same readings without a second forward pass, and they are
    # what is read: the bare faces' and the shown faces' features swapped, the AUROC turns over
    feats = tiny_evaluator.features(images)
    assert isolated_auroc(tiny_evaluator, images, [None] * 4 + [h] * len(shown), features=feats) == auc
    assert len(shown) == 4
    swapped = isolated_auroc(tiny_evaluator, images, [None] * 4 + [h] * 4, features=np.r_[feats[4:], feats[:4]])
    assert swapped[h] == pytest.approx(1 - auc[h])
    y = np.r_[np.zeros(4, int), np.ones(len(shown), int)]
    assert auc[h] == pytest.approx(M.auroc(y, scores)) and auc[h] != pytest.approx(M.auroc(1 - y, scores))


def test_oracle_is_nan_without_phenotypes(tiny_data):
    df = read_manifest(tiny_data / "manifest.csv")[0]
    df["phenotypes"] = [{} for _ in range(len(df))]
    assert np.isnan(oracle_top1(df[df.split == "train"], df[df.split == "test"]))


def test_oracle_learns_from_the_probes_rows_and_reads_healthy_test_rows():
    """Stage-0 faces that look healthy (no phenotype drawn) but carry their disease's label pull a bare face to that
    disease only when the oracle learns from them (min_stage 0); healthy test rows are read."""
    def rows(disease, stage, phenotypes, n):
        return [{"disease": disease, "stage": stage, "phenotypes": dict(phenotypes), "source": "phantom"}
                for _ in range(n)]

    train = pd.DataFrame(rows("A", 3, {"HP:1": 1.0}, 5) + rows("B", 3, {"HP:2": 1.0}, 5)
                         + rows("A", 0, {}, 50)  # healthy-looking, labelled A
                         + rows("healthy", 0, {}, 5) + rows("healthy", 0, {"HP:3": 1.0}, 5))
    test = pd.DataFrame(rows("A", 3, {"HP:1": 1.0}, 1) + rows("B", 2, {"HP:2": 1.0}, 1)
                        + rows("healthy", 0, {}, 2) + rows("A", 1, {"HP:1": 1.0}, 1))
    assert oracle_top1(train, test, min_stage=2) == 1.0  # 4 rows read (stage 1 is not), all right
    assert oracle_top1(train, test, min_stage=0) == 0.5  # the bare healthy faces are read as A


def test_oracle_leaves_unlabelled_photos_out():
    """A diseased photo's {} means "not labelled": as a zero vector it would pass for a healthy face, in training
    (A's unlabelled photos pull bare faces to A) and in the test (read as healthy)."""
    def rows(disease, phenotypes, n, source="photo"):
        return [{"disease": disease, "stage": 3 if disease != "healthy" else 0, "phenotypes": dict(phenotypes),
                 "source": source} for _ in range(n)]

    train = pd.DataFrame(rows("A", {"HP:1": 1.0}, 5) + rows("A", {}, 40) + rows("B", {"HP:2": 1.0}, 5)
                         + rows("healthy", {}, 5))
    test = pd.DataFrame(rows("A", {"HP:1": 1.0}, 2) + rows("B", {"HP:2": 1.0}, 2) + rows("healthy", {}, 2)
                        + rows("A", {}, 6))
    assert oracle_top1(train, test) == 1.0  # the 6 labelled rows read, all right
    assert np.isnan(oracle_top1(pd.DataFrame(rows("A", {}, 5) + rows("healthy", {}, 5)), test))


def test_phenotype_auroc_leaves_unlabelled_photos_out():
    """A stage-3 photo whose phenotypes are {} is not a negative of every phenotype: the head that reads it
    (high score) is not marked down for it."""
    from types import SimpleNamespace

    from kgface.evaluation.validity import phenotype_auroc

    rows = pd.DataFrame({
        "stage": [3, 3, 0, 0, 3, 3], "disease": ["D", "D", "healthy", "healthy", "D", "D"],
        "source": ["phantom", "phantom", "phantom", "phantom", "acne04", "acne04"],
        "phenotypes": [{"HP:1": 1.0}, {"HP:1": 1.0}, {}, {}, {}, {}],
        "ph_HP:1": [0.9, 0.8, 0.1, 0.2, 0.95, 0.85]})
    assert phenotype_auroc(SimpleNamespace(phenotypes=["HP:1"]), rows) == {"HP:1": 1.0}


def test_a_real_frame_without_split_is_a_clear_error(tiny_evaluator, tiny_data):
    df = read_manifest(tiny_data / "manifest.csv")[0].drop(columns=["split"])
    with pytest.raises(EvaluatorInputError, match="no split column"):
        instrument_validity(tiny_evaluator, df)
