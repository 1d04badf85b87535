"""The instrument's validity on real images: how far the evaluator's readings can be trusted before it judges
generated ones.

- `instrument_validity(evaluator, real_df, roundtrip=None)`: disease top-1 (per stage; headline on stages 2-3),
  stage MAE, per-phenotype AUROC at full intensity (stage 3 test images), zero-shot presence, identity AUROC, the
  oracle ceiling, and with `roundtrip(images) -> images` (a VAE round trip, built by the caller) the same scores on
  round-tripped images: the *VAE ceiling*, what of the real faces survives the VAE every generated face is decoded
  by. It bounds a generator that reproduces real faces; one that draws faces more typical than real ones can read
  above it (measured: docs/training.md).
- `oracle_top1`, `phenotype_auroc`, `isolated_auroc`, `disease_scores`: its parts, also used by the benches.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..data.manifest import stage_known
from . import intervals as CI
from . import metrics as M
from .evaluator import Evaluator, ScoredSet, pair_presence
from .inputs import (HEALTHY, EvaluatorInputError, as_frame, blur_images, labelled_phenotypes, load_images,
                     min_stage_of, presence_matrix, probe_rows, set_name, split_counts, to_uint8)
from .face_identity import identity_validity
from .probes import LinearProbe, Standardizer

HEADLINE_STAGES = (2, 3)  # stage 0 is healthy-looking by construction; targets apply to stages 2-3
BLUR_CHECK_SIGMA = 1.0  # px: real_top1_blurred reads the test faces this soft (a soft photo; a VAE decoder's output)


def headline_rows(table: pd.DataFrame, label: str = "disease", stage: str = "stage",
                  stages=HEADLINE_STAGES) -> np.ndarray:
    """Rows the top-1 targets apply to: healthy faces, graded faces of stages 2-3, and diseased photos without a
    grade (stage_known=False: their placeholder stage says nothing, and such a set has no other diseased rows to
    read; per_stage_top1 shows them apart as "unknown")."""
    known = stage_known(table)
    return ((table[label] == HEALTHY).to_numpy() | ~known
            | (known & table[stage].isin(stages).to_numpy()))


def transform_rows(table: pd.DataFrame) -> np.ndarray:
    """Generated rows that transform a real face (mode `transform`): judged apart from the drawn ones."""
    if "mode" not in table:
        return np.zeros(len(table), bool)
    return (table["mode"].astype(str) == "transform").to_numpy()


def generated_headline_rows(table: pd.DataFrame) -> np.ndarray:
    """Generated rows of generation.seen_top1 / heldout_top1: requests (`requested_disease` / `requested_stage`)
    for healthy faces or for stages 2-3, transformations left out."""
    return ~transform_rows(table) & ((table["requested_disease"] == HEALTHY).to_numpy()
                                     | table["requested_stage"].isin(HEADLINE_STAGES).to_numpy())


def stage_cells(table: pd.DataFrame, stage: str = "stage", labels=None) -> list:
    """Each row's per_stage_top1 cell: its stage, "unknown" for a photo without a grade (never its placeholder), and
    with `labels` "healthy" for a healthy face: healthy faces at stage 0 made the stage-0 cell mostly a healthy share,
    where stage-0 diseased faces look healthy by construction and are read so."""
    labels = [None] * len(table) if labels is None else list(labels)
    return ["healthy" if d == HEALTHY else int(s) if k else "unknown"
            for d, s, k in zip(labels, table[stage], stage_known(table))]


def real_test_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The real set's test split. A manifest without test rows is an error, not a fallback to every row: its train
    rows may be what the evaluator learned from, which would inflate every real-set score and hide copies from the
    memorisation audit."""
    if "split" not in df.columns:  # a frame built in code; manifests on disk always have the column
        raise EvaluatorInputError(f"{set_name(df, 'real set')}: no split column; mark the images the evaluator "
                                  "never trained on as split=test (and its training images as split=train)")
    test = df[df["split"] == "test"]
    if not len(test):
        raise EvaluatorInputError(f"{set_name(df, 'real set')}: no rows with split=test ({split_counts(df)}); the "
                                  "evaluator is read on test images only, so mark the images it never trained on as "
                                  "split=test")
    return test.reset_index(drop=True)


def check_test_labels(evaluator: Evaluator, df: pd.DataFrame, test: pd.DataFrame) -> None:
    """The real set's test labels are the evaluator's classes; else one line naming the manifest and its first row."""
    evaluator.check_labels(test["disease"], set_name(df, "real set"),
                           paths=test["path"] if "path" in test else None)


def oracle_top1(train_df: pd.DataFrame, test_df: pd.DataFrame, stages=HEADLINE_STAGES, l2: float = 1e-2,
                min_stage: int = 0) -> float:
    """The disease probe trained on the renderer's true phenotype vectors (intensities) instead of image features:
    how separable the panel is at all. Like the probe, it learns from healthy rows and stages >= min_stage, and is
    read where real_top1 is (headline_rows at `stages`; every test row when stages is empty). nan when the manifest
    carries no phenotypes."""
    vocab = sorted({h for ph in train_df["phenotypes"] for h in ph})
    if not vocab:
        return float("nan")
    index = {h: i for i, h in enumerate(vocab)}

    def vectors(df):
        x = np.zeros((len(df), len(vocab)), dtype=np.float32)
        for r, ph in enumerate(df["phenotypes"]):
            for h, v in ph.items():
                if h in index:
                    x[r, index[h]] = float(v)
        return x

    # a diseased photo's {} means "not labelled", not "shows none": as a zero vector it would pass for a healthy
    # face; the oracle learns and is read on labelled rows only (all of a phantom's)
    train_df, test_df = train_df[labelled_phenotypes(train_df)], test_df[labelled_phenotypes(test_df)]
    classes = sorted(set(train_df["disease"]))
    ci = {c: i for i, c in enumerate(classes)}
    train_df = train_df[probe_rows(train_df, {"min_stage": min_stage})]
    if train_df["disease"].nunique() < 2:  # no labelled diseased rows: no ceiling to read
        return float("nan")
    x_train = vectors(train_df)
    scale = Standardizer.fit(x_train)
    probe = LinearProbe.fit(scale(x_train), [ci[d] for d in train_df["disease"]], len(classes), l2=l2)
    test = test_df[headline_rows(test_df, stages=stages)] if stages else test_df
    if len(test) == 0:
        return float("nan")
    pred = np.asarray(classes)[probe.proba(scale(vectors(test))).argmax(1)]
    return M.accuracy(list(test["disease"]), pred)


def phenotype_auroc(evaluator: Evaluator, scored: pd.DataFrame, min_positives: int = 2) -> dict[str, float]:
    """Per phenotype of the evaluator: AUROC of its head at full intensity (stage-3 rows plus healthy rows),
    positives = rows where the phenotype is drawn. Phenotypes with fewer than `min_positives` positives: skipped."""
    # a graded stage 3 only: an ungraded photo's stage is a placeholder, not full intensity
    full = ((scored["stage"] == 3).to_numpy() & stage_known(scored)) | (scored["disease"] == HEALTHY).to_numpy()
    rows = scored[full].reset_index(drop=True)
    rows = rows[labelled_phenotypes(rows)].reset_index(drop=True)  # a photo's {} is "not labelled", not negative
    y = presence_matrix(list(rows["phenotypes"]), evaluator.phenotypes)
    out = {}
    for k, h in enumerate(evaluator.phenotypes):
        if y[:, k].sum() >= min_positives and (1 - y[:, k]).sum() >= 1:
            out[h] = M.auroc(y[:, k].astype(int), rows[f"ph_{h}"].to_numpy())
    return out


def isolated_auroc(evaluator: Evaluator, images: torch.Tensor, labels,
                   features: np.ndarray | None = None) -> dict[str, float]:
    """Per phenotype head: AUROC between faces showing that phenotype alone at full intensity and the bare faces
    (label None) of the same identities (images and labels from kgface.data.build.isolated_effect_images).
    features: evaluator.features(images) when the caller already has them (the images are not encoded again)."""
    table = evaluator.score(images) if features is None else evaluator.predict(features)
    labels = np.array(["" if x is None else x for x in labels])
    bare = labels == ""
    out = {}
    for h in evaluator.phenotypes:
        pos = labels == h
        if pos.any() and bare.any():
            col = table[f"ph_{h}"].to_numpy()
            out[h] = M.auroc(np.r_[np.ones(pos.sum(), int), np.zeros(bare.sum(), int)], np.r_[col[pos], col[bare]])
    return out


def auroc_summary(aurocs: dict[str, float], target: float = 0.9) -> dict:
    v = np.array([a for a in aurocs.values() if np.isfinite(a)])
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "median": float(np.median(v)), "mean": float(v.mean()), "min": float(v.min()),
            f"share_ge_{target}": float(np.mean(v >= target))}


def identities(table: pd.DataFrame) -> np.ndarray | None:
    """Each row's face (its `identity`; blank = a face of its own), the group a share's interval resamples: one
    phantom face is read at several stages, and its images are not independent draws."""
    return table["identity"].to_numpy() if "identity" in table.columns else None


def disease_scores(table: pd.DataFrame, classes: list[str], label: str = "disease", stage: str = "stage") -> dict:
    """top-1, top-3 and macro-F1 on the headline rows (healthy, stages 2-3, ungraded photos) and on all rows
    (`_all`), and per-stage accuracy of a scored table."""
    y = list(table[label])
    probs = table[[f"p_{c}" for c in classes]].to_numpy()
    ci = {c: i for i, c in enumerate(classes)}
    lab = np.array([ci[d] for d in y])
    head = headline_rows(table, label, stage)
    faces = identities(table)
    return {
        "top1": M.accuracy(np.asarray(y)[head], table["pred_disease"].to_numpy()[head]),
        "top1_ci95": CI.accuracy_interval(np.asarray(y)[head], table["pred_disease"].to_numpy()[head],
                                          groups=None if faces is None else faces[head]),
        "top1_all": M.topk_accuracy(probs, lab, 1), "top3_all": M.topk_accuracy(probs, lab, 3),
        "top3": M.topk_accuracy(probs[head], lab[head], 3),
        "macro_f1": M.macro_f1(list(np.asarray(y)[head]), list(table["pred_disease"].to_numpy()[head])),
        "macro_f1_all": M.macro_f1(y, list(table["pred_disease"])),
        "per_stage_top1": M.per_stage_accuracy(y, list(table["pred_disease"]), stage_cells(table, stage, y)),
        "n": len(y), "n_headline": int(head.sum()),
    }


def instrument_validity(evaluator: Evaluator, real_df, roundtrip: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        scored: ScoredSet | None = None, train_df: pd.DataFrame | None = None,
                        face_identity=None, heldout: set[str] | None = None) -> dict:
    """Validity of the instrument on real test images (see module doc). Keys: real_top1 (stages 2-3 + healthy),
    real_top1_all, real_top3, real_macro_f1 (+ _all), per_stage_top1, real_stage_mae, real_severity_mae,
    real_stage_spearman, real_stage_spearman_disease and real_stage_mae_disease (diseased faces only, the rows of the
    generated sets' stage metrics), zero_shot_presence_auroc and presence_auroc (diseased vs healthy headline rows,
    scored by the zero-shot prompts' 1 - P(healthy) and the probe's; with a healthy class), phenotype_auroc (per
    HPO id) + phenotype_auroc_summary, identity_auroc and identity_same_cosine / identity_different_cosine (the
    two ends transform.identity_similarity lies between), real_ece (expected calibration error of the disease
    probe on the headline rows) and calibration_temperature (None: no val rows calibrated it), oracle_top1,
    real_top1_blurred (the headline rows blurred by real_blur_sigma px: a reading that falls is reading softness),
    and with `roundtrip`: vae_ceiling_top1, vae_ceiling_stage_spearman (diseased faces, as generation.stage_spearman),
    vae_ceiling_phenotype_auroc_summary; with `face_identity` (kgface.evaluation.face_identity): identity_dlib.
    With `heldout` (diseases the generator never saw): real_top1_seen / _heldout / _seen_disease and
    vae_ceiling_top1_seen / _heldout / _seen_disease (+ n_seen / n_heldout / n_seen_disease), on the rows of
    generation.seen_top1 / heldout_top1 / seen_disease_top1, so each generated number has its own instrument and
    ceiling beside it."""
    df = as_frame(real_df)
    test = real_test_rows(df)
    check_test_labels(evaluator, df, test)
    s = scored or evaluator.score_set(test, keep_images=True)
    t = s.table
    head = headline_rows(t)
    known = stage_known(test)  # photos of unknown stage carry a placeholder stage: no stage metric reads it
    sick = (t["disease"] != HEALTHY).to_numpy() & known
    ts = t[known]
    d = disease_scores(t, evaluator.classes)
    auc = phenotype_auroc(evaluator, t)
    out = {"real_top1": d["top1"], "real_top1_ci95": d["top1_ci95"],
           "real_top1_all": d["top1_all"], "real_top3": d["top3"],
           "real_macro_f1": d["macro_f1"], "real_macro_f1_all": d["macro_f1_all"],
           "per_stage_top1": d["per_stage_top1"], "n_test": d["n"],
           "real_stage_mae": M.stage_mae(ts["stage"], ts["stage_pred"]),
           "real_severity_mae": M.stage_mae(ts["severity"], ts["severity_pred"]),
           "real_stage_spearman": M.spearman(ts["stage"], ts["severity_pred"]),
           "n_stage_known": int(known.sum()),
           # the generated sets' stage_spearman is over diseased requests only: the same rows of real faces
           "real_stage_spearman_disease": M.spearman(t["stage"][sick], t["severity_pred"][sick]),
           "real_stage_mae_disease": M.stage_mae(t["stage"][sick], t["stage_pred"][sick]),
           "zero_shot_top1": M.accuracy(t["disease"][head], t["zs_disease"][head]),
           # is the calibrated probe's confidence its accuracy? (temperature fitted on val; None: not calibrated)
           "real_ece": M.expected_calibration_error(
               t.loc[head, [f"p_{c}" for c in evaluator.classes]].to_numpy(),
               [evaluator.classes.index(d) for d in t["disease"][head]]) if head.any() else float("nan"),
           "calibration_temperature": evaluator.info.get("temperature"),
           "phenotype_auroc": auc, "phenotype_auroc_summary": auroc_summary(auc)}
    if HEALTHY in evaluator.classes:  # presence (is any disease there?) on the headline rows: sick vs healthy faces
        ill = (t["disease"][head] != HEALTHY).astype(int)
        out["zero_shot_presence_auroc"] = M.auroc(ill, t["zs_presence"][head])
        out["presence_auroc"] = M.auroc(ill, 1.0 - t[f"p_{HEALTHY}"][head])
        out.update(zero_shot_pair_auroc(evaluator, t["disease"].to_numpy()[head], s.features[head]))
    # robustness: the same faces a little softer (a VAE round trip blurs as much) should read the same
    images = s.images if s.images is not None else load_images(list(test["abspath"]))
    soft = evaluator.predict(evaluator.features(blur_images(images, BLUR_CHECK_SIGMA)), test)
    out["real_top1_blurred"], out["real_blur_sigma"] = disease_scores(soft, evaluator.classes)["top1"], BLUR_CHECK_SIGMA
    groups = _heldout_groups(t, heldout)
    faces = identities(t)
    for name, mask in groups.items():
        out[f"real_top1_{name}"] = M.accuracy(t["disease"][mask], t["pred_disease"][mask])
        out[f"real_top1_{name}_ci95"] = CI.accuracy_interval(t["disease"][mask], t["pred_disease"][mask],
                                                             groups=None if faces is None else faces[mask])
        out[f"n_{name}"] = int(mask.sum())
    named = t["identity"].astype(str).str.len().gt(0).to_numpy() if "identity" in t else np.zeros(len(t), bool)
    if named.sum() >= 2:  # the rows that name a person (a photo set may leave some unnamed): counted, not all-or-none
        ids, feats = list(t["identity"][named]), s.features[named]
        out["identity_auroc"] = M.identity_auroc(feats, ids)
        out["identity_n"] = int(named.sum())
        # the scale transform.identity_similarity is read on: a phantom identity's test faces differ in stage
        ends = M.identity_cosines(feats, ids)
        out["identity_same_cosine"], out["identity_different_cosine"] = ends["same"], ends["different"]
        if face_identity is not None:
            out["identity_dlib"] = identity_validity(face_identity, images[torch.tensor(named)], ids,
                                                     clip_features=feats)
    train = train_df if train_df is not None else df[df["split"] == "train"]  # real_test_rows checked the column
    if len(train):
        out["oracle_top1"] = oracle_top1(train.reset_index(drop=True), test,
                                         min_stage=min_stage_of(evaluator.cfg.get("probe")))
    if roundtrip is not None:
        with torch.no_grad():
            rt = roundtrip(images)
        rt = to_uint8(rt)
        feats = evaluator.features(rt)
        rt_table = evaluator.predict(feats, test)
        rt_scores = disease_scores(rt_table, evaluator.classes)
        out["vae_ceiling_top1"], out["vae_ceiling_top1_ci95"] = rt_scores["top1"], rt_scores["top1_ci95"]
        rt_faces = identities(rt_table)
        for name, mask in groups.items():
            out[f"vae_ceiling_top1_{name}"] = M.accuracy(rt_table["disease"][mask], rt_table["pred_disease"][mask])
            out[f"vae_ceiling_top1_{name}_ci95"] = CI.accuracy_interval(
                rt_table["disease"][mask], rt_table["pred_disease"][mask],
                groups=None if rt_faces is None else rt_faces[mask])
        rt_sick = (rt_table["disease"] != HEALTHY).to_numpy() & known
        out["vae_ceiling_stage_spearman"] = M.spearman(rt_table["stage"][rt_sick], rt_table["severity_pred"][rt_sick])
        out["vae_ceiling_stage_spearman_ci95"] = CI.spearman_interval(  # one face at every stage: by face
            rt_table["stage"][rt_sick], rt_table["severity_pred"][rt_sick],
            groups=rt_table["identity"][rt_sick] if "identity" in rt_table else None)
        rt_auc = phenotype_auroc(evaluator, rt_table)
        out["vae_ceiling_phenotype_auroc"] = rt_auc
        out["vae_ceiling_phenotype_auroc_summary"] = auroc_summary(rt_auc)
    return out


def zero_shot_pair_auroc(evaluator: Evaluator, diseases: np.ndarray, feats: np.ndarray) -> dict:
    """Zero-shot presence disease by disease: each disease's faces against the healthy faces, scored by the two-way
    softmax of that disease's prompts against the healthy prompts (evaluator.pair_presence); the mean over the
    diseases with both kinds of face (`zero_shot_pair_auroc`) and each (`zero_shot_pair_auroc_per_disease`)."""
    pair = pair_presence(feats, evaluator.zs_text, evaluator.classes)
    healthy = diseases == HEALTHY
    per = {}
    for d in sorted(set(diseases.tolist()) - {HEALTHY}):
        rows = (diseases == d) | healthy
        per[d] = M.auroc((diseases[rows] == d).astype(int), pair[rows, evaluator.classes.index(d)])
    scored = [a for a in per.values() if np.isfinite(a)]
    return {"zero_shot_pair_auroc": float(np.mean(scored)) if scored else float("nan"),
            "zero_shot_pair_auroc_per_disease": per}


def _heldout_groups(table: pd.DataFrame, heldout: set[str] | None) -> dict[str, np.ndarray]:
    """Headline rows (healthy, stages 2-3, ungraded) of seen diseases (healthy among them), of held-out ones, and of
    seen diseases without the healthy faces: the split of generation.seen_top1 / heldout_top1 / seen_disease_top1.
    Empty without held-out diseases among the rows."""
    head = headline_rows(table)
    hd = table["disease"].isin(set(heldout or ())).to_numpy()
    if not (head & hd).any():
        return {}
    sick = (table["disease"] != HEALTHY).to_numpy()
    return {"seen": head & ~hd, "heldout": head & hd, "seen_disease": head & ~hd & sick}
