"""Scoring whole sets: real vs generated metrics, the nested dict of metrics.json.

- `evaluate_sets(evaluator, real_df, generated_df, profiles)`: the instrument's validity on the real set
  (validity.py), then the generated set judged against its requests (disease, stage, phenotypes, KG frequencies,
  zero-shot presence), transformations' identity, train-on-synthetic-test-on-real, CLIP-feature KID/FID and the
  memorisation audit.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.manifest import N_STAGES, marked_heldout, stage_known
from ..errors import UserError
from ..kg import FacialProfile
from ..prompts import stage_phenotypes
from ..prompts.wording import stage_of
from . import intervals as CI
from . import metrics as M
from .evaluator import Evaluator, ScoredSet, pair_presence, refuse_unknown_labels
from .inputs import (HEALTHY, EvaluatorInputError, as_frame, check_real, labelled_phenotypes, load_images, min_stage_of,
                     set_image_size, set_name)
from .face_identity import pair_distances
from .validity import (HEADLINE_STAGES, check_test_labels, generated_headline_rows, headline_rows, identities,
                       instrument_validity, real_test_rows, transform_rows)

log = logging.getLogger(__name__)


def _filled(table: pd.DataFrame, column: str, fallback: str) -> pd.Series:
    """`column` where a row fills it, else that row's `fallback`, row by row (one empty cell must not re-label the
    rest)."""
    base = table[fallback].astype(str)
    if column not in table:
        return base
    return table[column].fillna("").astype(str).str.strip().where(_fills(table, column), base)


def _fills(table: pd.DataFrame, column: str) -> np.ndarray:
    """Rows whose `column` holds a value (not blank): where _filled reads it instead of the fallback."""
    if column not in table:
        return np.zeros(len(table), dtype=bool)
    return table[column].fillna("").astype(str).str.strip().ne("").to_numpy()


def _requested(table: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Each generated row's request: disease, severity (float: `kgface.generate` asks for e.g. 2.6) and stage (the
    stage whose bin [s - 0.5, s + 0.5) holds it, as the generator's own `stage` column writes it) from requested_*
    where filled, else the row's disease / stage."""
    diseases = _filled(table, "requested_disease", "disease")
    asked = _filled(table, "requested_stage", "stage")
    severity = pd.to_numeric(asked, errors="coerce")
    bad = (severity.isna() | (severity < 0) | (severity > N_STAGES - 1)).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = table["path"].iloc[i] if "path" in table else f"row {i}"
        raise EvaluatorInputError(f"generated set, {where}: requested stage {asked.iloc[i]!r} is not a number in "
                                  f"[0, {N_STAGES - 1}]; fix its requested_stage (or stage) column")
    # the stage whose bin holds the severity, as the generator's rows write it (2.5 is stage 3: not round-half-even)
    return diseases, severity.astype(float), severity.astype(float).map(stage_of).astype(int)


def _expected_sets(table: pd.DataFrame, diseases, stages, profiles: dict[str, FacialProfile], vocab) -> list[set]:
    """What each generated image should show: the phenotype set the generator drew for it (`requested_phenotypes`,
    a JSON list) or its manifest phenotypes when given, else the template's phenotypes of the requested stage;
    restricted to the phenotypes the evaluator can detect."""
    voc = set(vocab)
    out = []
    asked = table["requested_phenotypes"] if "requested_phenotypes" in table else [""] * len(table)
    paths = table["path"] if "path" in table else [""] * len(table)
    for ph, req, path, d, s in zip(table["phenotypes"], asked, paths, diseases, stages):
        if isinstance(req, str) and req.strip():
            try:
                ids = json.loads(req)
            except json.JSONDecodeError:
                ids = None
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise EvaluatorInputError(f"generated set, {path}: requested_phenotypes {req[:60]!r} is not a JSON "
                                          "list of HPO ids; fix the column or leave it empty") from None
            out.append(set(ids) & voc)
        elif ph:
            out.append(_shown(ph, voc))
        elif d == HEALTHY or d not in profiles:
            out.append(set())
        else:
            out.append(_template_set(profiles[d], s, voc))
    return out


def _shown(phenotypes: dict | None, voc: set) -> set:
    """A face's phenotypes present (value > 0), among those the evaluator can detect."""
    return {h for h, v in (phenotypes or {}).items() if float(v) > 0} & voc


def _template_set(profile: FacialProfile, stage, voc: set) -> set:
    """The template's phenotypes of a disease at a stage, among those the evaluator can detect."""
    return {p.hpo_id for p in stage_phenotypes(profile, int(stage))} & voc


def _expecting_rows(detected: list, expected: list[set]) -> tuple[list, list[set], int]:
    """The detected and expected sets of the rows that expect a phenotype the evaluator can detect, and how many rows
    expect none: those are counted, not scored (their F1 would be 1 for a blank read and 0 for any detection,
    whatever the face shows)."""
    keep = [bool(e) for e in expected]
    return [d for d, k in zip(detected, keep) if k], [e for e in expected if e], keep.count(False)


def real_profile_match(table: pd.DataFrame, test: pd.DataFrame, profiles, vocab) -> dict:
    """The reference for generation.profile_match_f1, read on the same rows of real test faces (diseased, graded
    stages 2-3, phenotypes labelled): `real_profile_match_f1` against each face's own phenotypes (what a generator
    that renders its requested set as faithfully as a real face would read) and, with
    profiles, `real_profile_match_f1_template` against the template's phenotypes of the face's disease and stage
    (what real faces read by the rule a generator without `requested_phenotypes` is judged by: real faces show a
    frequency draw, not the template's set), on the rows whose disease has a profile (`real_profile_match_template_n`);
    `real_phenotype_match`, the own-set match phenotype by phenotype (metrics.per_phenotype_match). Faces that show
    no phenotype the evaluator can detect are counted in `real_profile_match_unscored_n`, rows whose template has
    none in `real_profile_match_template_unscored_n`, not scored (a blank read would score F1 = 1, any detection 0).
    Not upper bounds: a generator that draws phenotypes more strongly than real faces can read above them."""
    rows = ((table["disease"] != HEALTHY).to_numpy() & stage_known(test)
            & table["stage"].isin(HEADLINE_STAGES).to_numpy() & labelled_phenotypes(test))
    if not rows.any():
        return {}
    voc = set(vocab)
    t = table[rows]
    detected, own, unscored = _expecting_rows(list(t["detected"]), [_shown(ph, voc) for ph in t["phenotypes"]])
    out = {"real_profile_match_f1": M.profile_match_f1(detected, own),  # NaN (null) when no row is scored
           "real_profile_match_n": len(own), "real_profile_match_unscored_n": unscored,
           "real_phenotype_match": M.per_phenotype_match(detected, own)}
    # the template reference reads every row whose disease has a profile, whatever the face shows (a generated
    # request is judged by its template the same way)
    has = rows & table["disease"].isin(set(profiles or {})).to_numpy()
    if has.any():
        t = table[has]
        detected, template, unscored = _expecting_rows(
            list(t["detected"]), [_template_set(profiles[d], s, voc) for d, s in zip(t["disease"], t["stage"])])
        out["real_profile_match_f1_template"] = M.profile_match_f1(detected, template)
        out["real_profile_match_template_n"] = len(template)
        out["real_profile_match_template_unscored_n"] = unscored
    return out


def kg_frequencies(profiles: dict[str, FacialProfile], vocab, diseases) -> dict[str, dict[str, float]]:
    """Per disease: the KG frequency of each phenotype the evaluator can detect (unknown frequencies left out); a
    disease with none is left out, so a set with nothing to compare has no frequency_mae (not a null one)."""
    voc = set(vocab)
    out = {d: {p.hpo_id: float(p.frequency) for p in profiles[d].phenotypes
               if p.hpo_id in voc and p.frequency is not None}
           for d in diseases if d in profiles and d != HEALTHY}
    return {d: freqs for d, freqs in out.items() if freqs}


def evaluate_sets(evaluator: Evaluator, real_df=None, generated_df=None, profiles=None, roundtrip=None,
                  return_scored: bool = False, heldout: set[str] | None = None, audit_extra=None,
                  face_identity=None, identity_pairs: bool = True, audit_train=None, heldout_columns: bool = True):
    """metrics.json's content for a real set and/or a generated set (only what the inputs allow).

    real_df / generated_df: manifest paths or DataFrames. Generated rows are judged against their request
    (`requested_disease` / `requested_stage` columns when present, else `disease` / `stage`). Rows with mode
    `transform` and a `source_image` also give identity preservation (`transform`), as do other rows with a
    `source_image`, progressions of an input photo (`progression_edits`); edits of real faces are left out of FID/KID
    and of the tstr probe's training rows. Returns the metrics dict, or
    (metrics, {"real": ScoredSet, "generated": ScoredSet, "real_train": ScoredSet}) with return_scored.
    audit_extra: a manifest (path or DataFrame) of further images the generator trained on (the phenotype atlas
    under trainer.atlas_share), added to the memorisation audit's training set. audit_train: the manifest the
    generator trained on (path or DataFrame; its train rows are the audit's training set and its test rows, if any,
    set the near-duplicate threshold), when it is not real_df (kgface.evaluate run=RUN real=ANOTHER); default
    real_df's train and test splits.
    face_identity: a second identity instrument (`load_face_identity`, dlib) for real pairs and transformations;
    identity_pairs=False: for transformations only (the train job's later conditionings drop the real set's numbers).
    heldout_columns=False: `heldout` alone names the held-out diseases (kgface.evaluate run=RUN: what RUN's generator
    never trained on, its data.json; another set's column is about another generator); a column that disagrees is
    named in a warning.
    """
    if real_df is None and generated_df is None:
        raise EvaluatorInputError("nothing to evaluate: give real= and/or generated=")
    profiles = {p.disease_id: p for p in (profiles.values() if isinstance(profiles, dict) else profiles or [])}
    metrics: dict = {"evaluator": {"name": evaluator.cfg["name"], "classes": len(evaluator.classes),
                                   "phenotype_heads": len(evaluator.phenotypes)}}
    scored: dict[str, ScoredSet] = {}
    heldout = set(heldout or ())
    # both manifests' heldout columns are read first: the instrument's seen / held-out split uses them too
    gen = as_frame(generated_df) if generated_df is not None else None
    real = as_frame(real_df) if real_df is not None else None
    for frame, what in ((real, "real set"), (gen, "generated set")):
        if frame is not None and not len(frame):  # a manifest file without rows is read_manifest's error already
            raise EvaluatorInputError(f"the {set_name(frame, what)} is empty: give it rows (images) to score")
        if frame is not None and "heldout" in frame:
            marked = marked_heldout(frame)  # as read_manifest reads the cell (" TRUE" was seen here, held out there)
            if heldout_columns:
                heldout |= marked
            elif marked - heldout:
                log.warning("the %s's heldout column marks %s, which the run's generator trained on (its data.json "
                            "holds out %s): read as seen", set_name(frame, what), sorted(marked - heldout),
                            sorted(heldout) or "none")
    if gen is not None:  # before any image, real or generated, is read and encoded
        check_generated(evaluator.classes, gen, profiles)
    test = None
    if real is not None:
        check_real(real, set_name(real, "real set"))
        test = real_test_rows(real)
        check_test_labels(evaluator, real, test)
        if gen is not None:  # FID/KID, the audit and tstr compare the two: one size, found before anything is scored
            sizes = set_image_size(test["abspath"]), set_image_size(gen["abspath"])
            if None not in sizes and sizes[0] != sizes[1]:
                raise EvaluatorInputError(f"the {set_name(real, 'real set')}'s images are {sizes[0][0]}x{sizes[0][1]} "
                                          f"px and the {set_name(gen, 'generated set')}'s {sizes[1][0]}x"
                                          f"{sizes[1][1]}: resize one set to the other's size")
        s_real = evaluator.score_set(test, keep_images=True)
        scored["real"] = s_real
        v = instrument_validity(evaluator, real, roundtrip=roundtrip, scored=s_real,
                                face_identity=face_identity if identity_pairs else None, heldout=heldout)
        metrics["evaluator"].update(v)
        if "vae_ceiling_top1" in v:
            metrics["vae_ceiling_top1"] = v["vae_ceiling_top1"]
            metrics["vae_ceiling_top1_ci95"] = v["vae_ceiling_top1_ci95"]
        metrics["evaluator"].update(real_profile_match(s_real.table, test, profiles, evaluator.phenotypes))
        exp = kg_frequencies(profiles, evaluator.phenotypes, set(test["disease"]))
        # real faces of graded stage 3 (the stage whose template carries every phenotype) against the KG
        full = s_real.table[(s_real.table["stage"] == 3).to_numpy() & stage_known(test)]
        if len(full) and exp:
            obs = M.phenotype_frequencies(list(full["detected"]), list(full["disease"]))
            mae, per = M.frequency_mae(obs, exp)
            if per:  # no disease with both stage-3 faces and KG frequencies: left out (docs), not a null
                metrics["evaluator"]["real_frequency_mae"] = mae
    if gen is not None:
        gen_root = gen.attrs.get("root")  # the manifest's folder: relative source_image paths are read from it
        s_gen = evaluator.score_set(gen, keep_images=True)
        t = s_gen.table
        scored["generated"] = s_gen
        req_d, req_sev, req_s = _requested(t)
        # requested_stage becomes the stage bin the top-1 keys group by; requested_severity keeps the severity asked
        # (2.6 from kgface.generate stages=2.6), which stage_spearman reads
        t["requested_disease"], t["requested_stage"] = req_d.values, req_s.values
        t["requested_severity"] = np.asarray(req_sev, float)
        transform = transform_rows(t)
        shown = generated_headline_rows(t)  # requests for healthy faces and stages 2-3, no transformations
        g = {}
        asked_healthy = (req_d == HEALTHY).to_numpy()
        hd = req_d.isin(heldout).to_numpy()
        # seen_top1 counts requests for healthy faces among the seen rows (as evaluator.*_seen do); the target's
        # wording, disease accuracy at stages 2-3, is seen_disease_top1, and healthy_top1 is the other half
        groups = (("seen", shown & ~hd), ("heldout", shown & hd), ("seen_disease", shown & ~hd & ~asked_healthy),
                  ("healthy", asked_healthy & ~hd & ~transform))
        # each row's top-1 key (scores_generated.csv: the rows a baselines comparison pairs); seen = the last two
        t["group"] = np.select([m for name, m in groups[1:]], [name for name, m in groups[1:]],
                               np.where(transform, "transform", ""))
        # a seed is one start noise: one face at each requested stage, and in kgface.generate the same face under
        # every target disease (a run's grid gives each disease's copies their own seeds); the intervals count
        # seeds, not images (a blank seed is a draw of its own)
        draw = t["seed"].astype(str).to_numpy() if "seed" in t else None
        for name, mask in groups:
            if mask.any():
                g[f"{name}_top1"] = M.accuracy(req_d[mask], t["pred_disease"][mask])
                g[f"{name}_top1_ci95"] = CI.accuracy_interval(req_d[mask], t["pred_disease"][mask],
                                                              groups=None if draw is None else draw[mask])
                g[f"{name}_n"] = int(mask.sum())
        sel = ~transform
        if sel.any():
            ci = {c: i for i, c in enumerate(evaluator.classes)}
            probs = t.loc[sel, [f"p_{c}" for c in evaluator.classes]].to_numpy()
            lab = np.array([ci[d] for d in req_d[sel]])
            g["top1_all"] = M.topk_accuracy(probs, lab, 1)
            g["top3_all"] = M.topk_accuracy(probs, lab, 3)
            head = shown[sel]  # the headline rows (healthy and stages 2-3), as evaluator.real_top3 reads real faces
            g["top3"] = M.topk_accuracy(probs[head], lab[head], 3)  # NaN without such rows
            g["macro_f1"] = M.macro_f1(list(req_d[shown]), list(t["pred_disease"][shown]))
            g["macro_f1_all"] = M.macro_f1(list(req_d[sel]), list(t["pred_disease"][sel]))
            if (shown & hd).any():  # seen diseases alone, as the other *_seen keys (macro F1 averages per class:
                keep = shown & ~hd  # a held-out class at the floor pulls the pooled key down by its 1/n share)
                g["macro_f1_seen"] = M.macro_f1(list(req_d[keep]), list(t["pred_disease"][keep]))
                g["top3_seen"] = M.topk_accuracy(probs[keep[sel]], lab[keep[sel]], 3)
            g["per_stage_top1"] = M.per_stage_accuracy(  # healthy requests apart, as the real side reads them
                list(req_d[sel]), list(t["pred_disease"][sel]),
                ["healthy" if d == HEALTHY else s for d, s in zip(req_d[sel], req_s[sel])])
            dis = sel & (req_d != HEALTHY).to_numpy()
            g["stage_spearman"] = M.spearman(req_sev[dis], t["severity_pred"][dis])
            # bootstrap by draw: copy k of a disease shares its noise across the stages (one face, every stage)
            g["stage_spearman_ci95"] = CI.spearman_interval(req_sev[dis], t["severity_pred"][dis],
                                                            groups=None if draw is None else draw[dis])
            g["stage_mae"] = M.stage_mae(req_s[dis], t["stage_pred"][dis])
            if (dis & hd).any():  # seen diseases alone (the pooled key mixes in held-out requests)
                g["stage_spearman_seen"] = M.spearman(req_sev[dis & ~hd], t["severity_pred"][dis & ~hd])
            # on diseased requests of stages 2-3 that expect a phenotype the evaluator can detect: a request that
            # expects nothing (healthy, stage 0, an empty frequency draw, phenotypes without a head) would read
            # F1 = 1 on a blank face; such rows are counted, not scored
            pm = dis & shown
            if pm.any():
                every = _expected_sets(t[pm], list(req_d[pm]), list(req_s[pm]), profiles, evaluator.phenotypes)
                detected, expected, unscored = _expecting_rows(list(t["detected"][pm]), every)
                g["profile_match_f1"] = M.profile_match_f1(detected, expected)  # NaN (null) when no row is scored
                g["profile_match_n"] = len(expected)
                g["profile_match_unscored_n"] = unscored
                g["phenotype_match"] = M.per_phenotype_match(detected, expected)
                if hd[pm].any():  # seen diseases alone: conditionings that draw no held-out request compare there
                    seen = ~hd[pm]
                    kept, wanted, _ = _expecting_rows([d for d, s in zip(t["detected"][pm], seen) if s],
                                                      [e for e, s in zip(every, seen) if s])
                    g["profile_match_f1_seen"] = M.profile_match_f1(kept, wanted)
            # per disease: its stage-3 requests, or its stages 2-3 when it has none (chosen for the whole set,
            # a disease asked only at stage 2 beside others at 3 dropped out of the mean)
            at3 = sel & (req_s == 3).to_numpy()
            with3 = set(req_d[at3])
            full = at3 | (shown & ~req_d.isin(with3).to_numpy())
            exp = kg_frequencies(profiles, evaluator.phenotypes, set(req_d[full]))
            if exp and full.any():
                obs = M.phenotype_frequencies(list(t["detected"][full]), list(req_d[full]))
                g["frequency_mae"], g["frequency_mae_per_disease"] = M.frequency_mae(obs, exp)
                read_at_2_3 = sorted(set(g["frequency_mae_per_disease"]) - with3)
                g["frequency_mae_stages"] = [3] if not read_at_2_3 else list(HEADLINE_STAGES)
                if read_at_2_3 and with3 & set(g["frequency_mae_per_disease"]):
                    g["frequency_mae_read_at_stages_2_3"] = read_at_2_3  # the others at stage 3
                # images behind each disease's frequencies: with 2, each can only be 0, 0.5 or 1
                g["frequency_mae_n"] = {d: int((req_d[full] == d).sum()) for d in g["frequency_mae_per_disease"]}
                per_seen = [v for d, v in g["frequency_mae_per_disease"].items() if d not in heldout]
                if per_seen and (len(per_seen) < len(g["frequency_mae_per_disease"]) or (sel & hd).any()):
                    # (held-out requests whose diseases have no frequency here: the pooled key reads the seen ones
                    # alone, and the twin says so rather than leaving the run report's _seen row blank)
                    g["frequency_mae_seen"] = float(np.mean(per_seen))
            # on diseased requests of stages 2-3: stage 0 is healthy-looking by construction and stage 1 may show
            # nothing, so a mean over every stage read a generator's stage mix, not whether its disease shows
            ill = dis & shown
            g["zero_shot_presence"] = float(np.mean(t["zs_presence"][ill])) if ill.any() else float("nan")
            # the same against the requested disease alone: its prompts vs the healthy ones (not "any disease")
            pair = pair_presence(s_gen.features[ill], evaluator.zs_text, evaluator.classes)
            own = [ci[d] for d in req_d[ill]]
            g["zero_shot_pair_presence"] = float(np.mean(pair[np.arange(len(own)), own])) if own else float("nan")
        metrics["generation"] = g
        if transform.any():
            metrics["transform"] = _transform_metrics(evaluator, t, s_gen, transform, req_d, gen_root, face_identity)
        # progressions of an input photo (kgface.generate mode=progression input=...): edits of a real face too,
        # judged above as drawn at their stage; here how much of the input face they keep
        edited = ~transform & _names_source(t)
        if edited.any():
            metrics["progression_edits"] = {"n": int(edited.sum()),
                                            **_identity_metrics(evaluator, t, s_gen, edited, gen_root, face_identity)}
        if real is not None:
            s_real = scored["real"]
            rt = s_real.table
            # the synthetic probe learns from the requests the evaluator's own probe would learn from (healthy and
            # stages >= probe.min_stage: an earlier stage's label contradicts its look) and is read where real_top1 is
            # edits of real faces are left out: their sources may be the test faces the probe is read on
            learn = sel & ~edited & ((req_d == HEALTHY)
                                     | (req_s >= min_stage_of(evaluator.cfg.get("probe")))).to_numpy()
            classes = set(req_d[learn])
            # every generated set is read on the same real rows (all headline rows): a disease the generator never
            # drew (class tokens draw no held-out one) counts as an error, so conditionings compare; the _seen
            # number reads the diseases not held out (before 2026-12-02 the rows were those of the drawn diseases)
            keep = headline_rows(rt)
            seen_rows = keep & ~rt["disease"].isin(heldout).to_numpy()
            if learn.sum() >= 2 and keep.any() and len(classes) >= 2:
                # one probe read on every headline row; its intervals count faces, as the evaluator's own do
                pred = M.tstr_predictions(s_gen.features[learn], list(req_d[learn]), s_real.features)
                truth, faces = rt["disease"].astype(str).to_numpy(), identities(rt)
                # a _seen pair only where some headline row is held out (else the same numbers, as the other _seen)
                some_heldout = bool((keep & rt["disease"].isin(heldout).to_numpy()).any())
                for key, rows in (("tstr_top1", keep), ("tstr_top1_seen", seen_rows if some_heldout else None)):
                    if rows is not None and rows.any():
                        metrics[key] = M.accuracy(list(truth[rows]), list(pred[rows]))
                        metrics[key.replace("top1", "n_real")] = int(rows.sum())
                        metrics[f"{key}_ci95"] = CI.accuracy_interval(truth[rows], pred[rows],
                                                                      groups=None if faces is None else faces[rows])
                metrics["tstr_n_generated"] = int(learn.sum())
            # edits of real faces (transformations, progressions of an input photo: rows with a source_image) would
            # pull FID/KID down when their sources are the test faces the set is compared with: left out
            drawn = ~transform & ~edited
            if drawn.sum() < 2 or len(s_real.images) < 2:  # one face is scored, not compared as a set
                metrics["fid_kid_n"] = {"real": len(s_real.images), "generated": int(drawn.sum()),
                                        "edits_of_real_faces": f"{int((~drawn).sum())} left out",
                                        "no_fid_kid": "fewer than 2 generated images besides edits of real faces"
                                        if drawn.sum() < 2 else "fewer than 2 real test images"}
            else:
                fk = M.clip_fid_kid(s_real.images, s_gen.images[torch.from_numpy(drawn)], evaluator.encoder)
                # KID first: FID on CLIP features is biased at small n (it needs thousands of images)
                metrics["kid_clip"], metrics["kid_clip_std"] = fk["kid"], fk["kid_std"]
                metrics["fid_clip"] = fk["fid"]
                metrics["fid_kid_n"] = {"real": fk["n_real"], "generated": fk["n_generated"],
                                        "kid_subset_size": fk["kid_subset_size"],
                                        "edits_of_real_faces": f"{int((~drawn).sum())} left out",
                                        **({"fid_below_dimension": f"fewer images than the features' "
                                            f"{evaluator.encoder.num_features} dimensions: the covariances are "
                                            "singular and FID is biased upward; read KID"}
                                           if min(fk["n_real"], fk["n_generated"]) <= evaluator.encoder.num_features
                                           else {}),
                                        "features": f"evaluator CLIP image features "
                                                    f"({evaluator.encoder.num_features}-d); not InceptionV3 (its "
                                                    "weights cannot be downloaded here)"}
            source = real if audit_train is None else as_frame(audit_train)
            if "split" not in source:
                raise EvaluatorInputError(f"{_manifest_name(audit_train)}: no 'split' column; the memorisation "
                                          "audit searches the generator's train split: give a manifest with one")
            # the generator never trained on a held-out disease: a good zero-shot face near that disease's real
            # train faces is no copy of anything it saw
            train = source[(source["split"] == "train") & ~source["disease"].isin(set(heldout or ()))]
            # fresh faces of the data the generator learned from set the near-duplicate cosine: with real= another
            # kind of data, its test faces would sit far from that training set and call everything a copy
            # ... and of the diseases searched: a held-out disease's test face, whose own disease's train faces are
            # left out of the search, sits farther from it and lowered the threshold (about 1.15% read as 1%)
            searched = ~rt["disease"].isin(set(heldout or ())).to_numpy()
            searched = searched if searched.any() else np.ones(len(rt), bool)
            minus = " without the held-out diseases" if heldout and not searched.all() else ""
            holdout, holdout_from = s_real.features[searched], "the real set's test split" + minus
            if audit_train is not None:
                fresh_rows = source[~source["disease"].isin(set(heldout or ()))]
                fresh_rows = fresh_rows if len(fresh_rows) else source
                fresh = next((s for s in ("test", "val") if (fresh_rows["split"] == s).any()), None)
                if fresh is not None:
                    holdout = evaluator.score_set(fresh_rows[fresh_rows["split"] == fresh]).features
                    holdout_from = f"the {fresh} split of {_manifest_name(audit_train)}" + (
                        " without the held-out diseases" if len(fresh_rows) < len(source) else "")
                else:  # said, not hidden: faces of other data set a lower threshold and may inflate the rate
                    holdout_from += (f" ({_manifest_name(audit_train)} has no test or val split; faces of other "
                                     "data may sit farther from its training images and inflate the rate)")
            searched = ("the real set's train split" if audit_train is None else
                        f"the train split of {_manifest_name(audit_train)}") + \
                (" without the held-out diseases" if heldout else "") + \
                ("" if audit_extra is None else f" + {_manifest_name(audit_extra)}")
            metrics["memorisation_reference"] = f"{searched}; threshold from {holdout_from}"
            if audit_extra is not None:  # a copy of any image the generator saw counts as memorised
                train = pd.concat([train, as_frame(audit_extra)], ignore_index=True)
            train = train.reset_index(drop=True)
            metrics["memorisation_train_n"] = int(len(train))
            if not len(train):
                metrics["memorisation_skipped"] = "no train rows to search: no audit"
            else:
                s_train = evaluator.score_set(train)
                scored["real_train"] = s_train
                try:
                    audit = M.memorisation_audit(s_gen.features, s_train.features, holdout)
                except UserError as exc:  # name the manifest the threshold's faces came from (not always real=)
                    raise UserError(f"{exc} (the threshold's faces: {holdout_from}; the training images: "
                                    f"{searched})") from None
                metrics["memorisation_rate"] = audit["memorisation_rate"]
                metrics["memorisation_threshold"] = audit["threshold"]
                metrics["memorisation_quantile"] = audit["quantile"]
                metrics["memorisation_holdout_duplicates"] = audit["holdout_duplicates"]
                metrics["memorisation_holdout_n"] = audit["holdout_n"]
                t["nearest_train_cosine"] = audit["nearest_cosine"]
                # the rate's own test, at the unrounded threshold (metrics.json rounds it to 4 places)
                t["nearest_train_copy"] = np.asarray(audit["nearest_cosine"]) > audit["threshold"]
                t["nearest_train_path"] = list(train["abspath"].iloc[audit["nearest_index"]])
    metrics = M.rounded(metrics)
    return (metrics, scored) if return_scored else metrics


def _manifest_name(source) -> str:
    """A manifest as the report names it: its path, or the folder a DataFrame was read from."""
    if isinstance(source, pd.DataFrame):
        return str(source.attrs.get("root") or "the given manifest")
    return str(source)


def _transform_metrics(evaluator, t, s_gen: ScoredSet, transform, req_d, root: str | None, face_identity) -> dict:
    # one source face edited towards several diseases (or with several seeds) is not so many independent faces
    # a row without its source is a face of its own (group_index reads a blank so), not all rows independent
    groups = t["source_image"][transform].astype(str).str.strip() if "source_image" in t else None
    out = {"n": int(transform.sum()),
           "target_top1": M.accuracy(req_d[transform], t["pred_disease"][transform]),
           "target_top1_ci95": CI.accuracy_interval(req_d[transform], t["pred_disease"][transform], groups)}
    out.update(_identity_metrics(evaluator, t, s_gen, transform, root, face_identity))
    return out


def check_generated(classes, gen: pd.DataFrame, profiles) -> None:
    """What a generated set asks for, checked before any image is read: requests an evaluator of these `classes`
    knows (naming the first bad row and the column its label came from), a KG profile for each requested disease
    (`profiles`: by id, or a list), and the real faces that edits name as their `source_image` (read only after the
    whole set was scored otherwise). kgface.evaluate calls it before it fits an evaluator, whose classes it knows."""
    if not isinstance(profiles, dict):
        profiles = {p.disease_id: p for p in profiles or []}
    req_d = _requested(gen)[0]
    paths = list(gen["path"]) if "path" in gen else None
    bad = np.flatnonzero(~req_d.isin(list(classes)).to_numpy())
    if len(bad):  # the column the bad label came from: a blank request falls back to the row's disease
        refuse_unknown_labels(classes, req_d, set_name(gen, "generated set"), paths=paths,
                              column="requested_disease" if _fills(gen, "requested_disease")[bad[0]] else "disease")
    no_profile = sorted({d for d in req_d if d != HEALTHY} - set(profiles)) if profiles else []
    if no_profile:  # its expected phenotypes and KG frequencies would silently be empty
        raise EvaluatorInputError(f"{set_name(gen, 'generated set')}: no KG profile for {', '.join(no_profile[:5])}; "
                                  "load the "
                                  "profiles of every requested disease (the panel of the run that drew them)")
    root = gen.attrs.get("root")
    for i in np.flatnonzero(_names_source(gen)):
        src = _source_path(gen["source_image"].iloc[i], root)
        if src is not None and not src.is_file():  # None: relative without a folder, _identity_metrics says so
            where = paths[i] if paths is not None else f"row {i}"
            raise EvaluatorInputError(f"{set_name(gen, 'generated set')}, {where}: source_image {str(src)!r} does not "
                                      "exist (the real "
                                      "face this edit was made from); restore it or clear the row's source_image")


def _source_path(value, root: str | None) -> Path | None:
    """An edit's `source_image`: absolute, or relative to the manifest's folder `root`; None when relative and the
    set came without a folder (a DataFrame)."""
    p = Path(str(value).strip())
    if p.is_absolute():
        return p
    return None if root is None else Path(root) / p


def _names_source(t: pd.DataFrame) -> np.ndarray:
    """Rows that name the real face they edit (a non-blank `source_image`)."""
    return _fills(t, "source_image")


def _identity_metrics(evaluator, t, s_gen: ScoredSet, mask, root: str | None, face_identity) -> dict:
    """How much of its source face each edit in `mask` keeps: the cosine of evaluator image features (and dlib
    distances with face_identity), over the rows that name a source_image (`identity_n`); {} when none does."""
    mask = np.asarray(mask) & _names_source(t)
    if not mask.any():
        return {}
    src = [str(p).strip() for p in t.loc[mask, "source_image"]]
    paths = [_source_path(p, root) for p in src]
    if None in paths:
        raise EvaluatorInputError(f"generated set: source_image {src[paths.index(None)]!r} is relative and the set "
                                  "was given as a DataFrame: give absolute paths or the manifest's path")
    # at the edits' size: a hand-made set's sources may be photos of any size (kgface.generate's are the model's)
    src_images = load_images([str(p) for p in paths], size=tuple(s_gen.images.shape[-2:]), fit=True)
    out = {"identity_similarity": M.identity_similarity(evaluator.features(src_images), s_gen.features[mask]),
           "identity_n": int(mask.sum())}
    if face_identity is not None:
        out.update(pair_distances(face_identity, src_images, s_gen.images[torch.from_numpy(np.flatnonzero(mask))]))
    return out
