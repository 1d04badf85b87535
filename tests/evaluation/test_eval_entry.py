"""`python -m kgface.evaluate` (kgface/evaluate.py) on the tiny panel: evaluate_sets and the report end to end, bad
input (the library's errors, then the entry's one-line exits), run= folders (their evaluator, profiles, held-out list
and atlas), and that the evaluator never imports the generator it measures."""
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kgface.data.manifest import read_manifest, write_manifest
from kgface.evaluation import (Evaluator, EvaluatorInputError, build_clip, evaluate_sets, fit_evaluator, load_evaluator,
                               load_images)
from kgface.errors import UserError
from tests.evaluation.conftest import TINY_EVALUATOR, generated_manifest


def test_transformations_of_one_face_count_as_one_face(tiny_evaluator, tiny_data, tiny_profiles, tmp_path):
    # a train run edits each test face towards several diseases: four edits of one face are not four faces
    from kgface.evaluation.intervals import accuracy_interval, wilson_interval

    gen = generated_manifest(tiny_data, tmp_path, n=6)
    df = pd.read_csv(gen, dtype=str, keep_default_na=False)
    edit = df[df["mode"] == "transform"].iloc[0].to_dict()
    targets = [d for d in sorted(set(df["disease"])) if d != "healthy"][:3]
    for k, target in enumerate(targets):
        shutil.copy(gen.parent / edit["path"], gen.parent / f"t{k + 1:03d}.png")
        df.loc[len(df)] = {**edit, "path": f"t{k + 1:03d}.png", "requested_disease": target}
    write_manifest(df.to_dict("records"), gen)
    m = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles)
    n = m["transform"]["n"]
    assert n == 1 + len(targets) >= 3
    hits = round(m["transform"]["target_top1"] * n)
    assert m["transform"]["target_top1_ci95"] == pytest.approx(
        accuracy_interval([1] * hits + [0] * (n - hits), [1] * n, groups=[edit["source_image"]] * n), abs=1e-4)
    low, high = m["transform"]["target_top1_ci95"]
    wide = wilson_interval(hits, n)
    assert high - low > wide[1] - wide[0]  # one face: wider than four independent ones
    # an edit whose source is not named is a face of its own: the others still count as one face (one blank row
    # made every row an independent image)
    shutil.copy(gen.parent / edit["path"], gen.parent / "t009.png")
    df.loc[len(df)] = {**edit, "path": "t009.png", "source_image": "", "requested_disease": targets[0]}
    write_manifest(df.to_dict("records"), gen)
    m, scored = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles, return_scored=True)
    t = scored["generated"].table
    edits = (t["mode"] == "transform").to_numpy()
    right = (t["pred_disease"] == t["requested_disease"]).to_numpy()[edits].astype(int)
    faces = t["source_image"].astype(str).to_numpy()[edits]
    assert sorted(set(faces)) == ["", edit["source_image"]] and len(faces) == n + 1
    assert m["transform"]["target_top1_ci95"] == pytest.approx(
        accuracy_interval(right, [1] * len(right), groups=faces), abs=1e-4)
    assert m["transform"]["target_top1_ci95"] != pytest.approx(wilson_interval(right.sum(), len(right)), abs=1e-3)


def test_evaluate_sets_and_entry_report(tiny_evaluator, tiny_data, tiny_profiles, tmp_path, tiny_cfg):
    gen = generated_manifest(tiny_data, tmp_path)
    m, scored = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles, return_scored=True)
    for key in ["seen_top1", "heldout_top1", "stage_spearman", "profile_match_f1", "frequency_mae"]:
        assert key in m["generation"], key
    for key in ["tstr_top1", "fid_clip", "kid_clip", "memorisation_rate"]:
        assert key in m, key
    assert m["fid_clip"] < 1e-3  # the generated set is the real test set
    assert m["transform"]["identity_similarity"] == pytest.approx(1.0, abs=1e-4)
    # the same pixels, requested as what they are: every generation number is the real set's (to metrics.json's
    # 4 decimals)
    rt = scored["real"].table
    right = (rt["pred_disease"] == rt["disease"]).to_numpy()
    head = (rt["stage"].astype(int).isin([2, 3]) | (rt["disease"] == "healthy")).to_numpy()
    held = (rt["disease"] == "ORPHA:963").to_numpy()
    assert held.any() and (head & ~held).any()
    assert m["generation"]["seen_top1"] == pytest.approx(right[head & ~held].mean(), abs=1e-4)
    assert m["generation"]["heldout_top1"] == pytest.approx(right[head & held].mean(), abs=1e-4)
    # the seen rows split into diseased requests (the target's wording) and healthy ones, with their counts
    healthy_rows = (rt["disease"] == "healthy").to_numpy()
    assert 0 < healthy_rows.sum() < (head & ~held).sum()
    g = m["generation"]
    assert g["seen_disease_top1"] == pytest.approx(right[head & ~held & ~healthy_rows].mean(), abs=1e-4)
    assert g["seen_disease_n"] == int((head & ~held & ~healthy_rows).sum())
    assert g["healthy_top1"] == pytest.approx(right[healthy_rows].mean(), abs=1e-4)
    assert g["healthy_n"] == int(healthy_rows.sum()) and g["healthy_n"] + g["seen_disease_n"] == g["seen_n"]
    # each share with its Wilson interval over its own rows; the real faces' headline rows give the instrument's
    from kgface.evaluation.intervals import accuracy_interval, spearman_interval, wilson_interval

    assert g["seen_top1_ci95"] == pytest.approx(wilson_interval(right[head & ~held].sum(), (head & ~held).sum()),
                                                abs=1e-4)
    assert g["heldout_top1_ci95"] == pytest.approx(wilson_interval(right[head & held].sum(), (head & held).sum()),
                                                   abs=1e-4)
    # (each generated row is its own draw, seed i: Wilson; the real faces are grouped by identity, read at
    # several stages each)
    faces = rt["identity"].to_numpy()
    assert len(set(faces[head])) < head.sum()
    assert m["evaluator"]["real_top1_ci95"] == pytest.approx(
        accuracy_interval(rt["disease"][head], rt["pred_disease"][head], groups=faces[head]), abs=1e-4)
    assert g["healthy_top1_ci95"] == pytest.approx(wilson_interval(right[healthy_rows].sum(), healthy_rows.sum()),
                                                   abs=1e-4)
    sick_rows = (rt["disease"] != "healthy").to_numpy()
    assert g["stage_spearman_ci95"] == pytest.approx(
        spearman_interval(rt["stage"][sick_rows].astype(float), rt["severity_pred"][sick_rows]), abs=1e-4)
    # tstr's interval counts the real faces it is read on (several stages each): no narrower than over images
    over_images = wilson_interval(round(m["tstr_top1"] * m["tstr_n_real"]), m["tstr_n_real"])
    low, high = m["tstr_top1_ci95"]
    assert low <= over_images[0] + 1e-4 and high >= over_images[1] - 1e-4 and low <= m["tstr_top1"] <= high
    assert m["transform"]["target_top1_ci95"] == pytest.approx(  # one transformation of one face: Wilson of 1
        wilson_interval(round(m["transform"]["target_top1"] * m["transform"]["n"]), m["transform"]["n"]), abs=1e-4)
    assert m["generation"]["top1_all"] == pytest.approx(m["evaluator"]["real_top1_all"], abs=1e-4)
    # the pooled keys mix held-out requests in; their _seen twins read the seen diseases alone
    from kgface.evaluation.metrics import spearman

    seen_sick = ((rt["disease"] != "healthy") & (rt["disease"] != "ORPHA:963")).to_numpy()
    assert g["stage_spearman_seen"] == pytest.approx(
        spearman(rt["stage"][seen_sick].astype(float), rt["severity_pred"][seen_sick]), abs=1e-4)
    assert g["stage_spearman_seen"] != pytest.approx(g["stage_spearman"], abs=1e-6)
    per = g["frequency_mae_per_disease"]
    assert "ORPHA:963" in per and g["frequency_mae_seen"] == pytest.approx(
        np.mean([v for d, v in per.items() if d != "ORPHA:963"]), abs=1e-4)
    # ... profile match too: the pooled key of a generated set without the held-out requests
    gen_df = pd.read_csv(gen, dtype=str, keep_default_na=False)
    seen_only = gen.parent / "seen_only.csv"
    gen_df[gen_df["requested_disease"] != "ORPHA:963"].to_csv(seen_only, index=False)
    # (the real set's heldout cells written " TRUE": read_manifest reads them true, and so must the split)
    padded = read_manifest(tiny_data / "manifest.csv")[0]
    assert (padded["heldout"].astype(str).str.lower() == "true").any()
    padded["heldout"] = padded["heldout"].astype(str).str.replace("true", " TRUE", case=False)
    both = evaluate_sets(tiny_evaluator, padded, seen_only, tiny_profiles)
    alone = both["generation"]
    assert both["evaluator"]["real_top1_heldout"] == pytest.approx(m["evaluator"]["real_top1_heldout"], abs=1e-6)
    assert "profile_match_f1_seen" not in alone  # no held-out request there: the pooled key is the seen one
    assert g["profile_match_f1_seen"] == pytest.approx(alone["profile_match_f1"], abs=1e-4)
    assert g["profile_match_f1_seen"] != pytest.approx(g["profile_match_f1"], abs=1e-6)
    from kgface.evaluation.metrics import macro_f1, topk_accuracy

    kept = head & ~held
    assert g["macro_f1_seen"] == pytest.approx(
        macro_f1(list(rt["disease"][kept]), list(rt["pred_disease"][kept])), abs=1e-4)
    assert g["macro_f1_seen"] != pytest.approx(g["macro_f1"], abs=1e-6)  # (a copy of the pooled key would fail)
    classes = list(tiny_evaluator.classes)
    probs = rt.loc[kept, [f"p_{c}" for c in classes]].to_numpy()
    assert g["top3_seen"] == pytest.approx(
        topk_accuracy(probs, np.array([classes.index(d) for d in rt["disease"][kept]]), 3), abs=1e-4)
    assert m["generation"]["stage_spearman"] == pytest.approx(m["evaluator"]["real_stage_spearman_disease"],
                                                              abs=1e-4)
    ev = m["evaluator"]
    assert g["macro_f1"] == pytest.approx(ev["real_macro_f1"], abs=1e-4)
    assert g["macro_f1_all"] == pytest.approx(ev["real_macro_f1_all"], abs=1e-4)
    assert g["stage_mae"] == pytest.approx(ev["real_stage_mae_disease"], abs=1e-4)
    assert g["per_stage_top1"] == pytest.approx(ev["per_stage_top1"], abs=1e-4)
    in_top3 = [d in t3 for d, t3 in zip(rt["disease"], rt["top3"])]
    assert g["top3_all"] == pytest.approx(np.mean(in_top3), abs=1e-4) and g["top3_all"] >= g["top1_all"]
    assert g["top3"] == pytest.approx(np.mean(np.array(in_top3)[head]), abs=1e-4) == ev["real_top3"]
    # zero-shot presence of the requested disease against health alone, over the diseased requests of stages 2-3
    from kgface.evaluation.evaluator import pair_presence

    sick = (rt["disease"] != "healthy").to_numpy() & rt["stage"].astype(int).isin([2, 3]).to_numpy()
    assert sick.any() and not sick.all()
    assert g["zero_shot_presence"] == pytest.approx(rt["zs_presence"][sick].mean(), abs=1e-4)
    pair = pair_presence(scored["real"].features[sick], tiny_evaluator.zs_text, tiny_evaluator.classes)
    own = [tiny_evaluator.classes.index(d) for d in rt["disease"][sick]]
    assert g["zero_shot_pair_presence"] == pytest.approx(pair[np.arange(len(own)), own].mean(), abs=1e-4)
    json.dumps(m)
    # FID/KID leave the transformation (an edit of a real test face) out; tstr learns from the rows the evaluator's
    # probe learns from (healthy, stages >= probe.min_stage); profile match reads diseased requests of stages 2-3
    t = scored["generated"].table
    sample = (t["mode"] != "transform").to_numpy()
    stage = t["requested_stage"].astype(int).to_numpy()
    healthy = (t["requested_disease"] == "healthy").to_numpy()
    assert m["fid_kid_n"]["generated"] == int(sample.sum()) == len(t) - 1
    assert m["tstr_n_generated"] == int((sample & (healthy | (stage >= 2))).sum()) < int(sample.sum())
    pm = sample & ~healthy & (stage >= 2)
    assert m["generation"]["profile_match_n"] == int(pm.sum()) > 0
    # phenotype by phenotype: the generated rows are the real test faces with their own phenotypes as the expected
    # sets, so each phenotype's detected share is the real faces' (the dots of the report's plot)
    gm, rm = m["generation"]["phenotype_match"], m["evaluator"]["real_phenotype_match"]
    assert gm and set(gm) == set(rm)
    for h in gm:
        for k in ("expected_n", "detected_n", "recall", "precision"):
            assert gm[h][k] == pytest.approx(rm[h][k], nan_ok=True), (h, k)
    # tstr reads every generated set on the same real rows (all headline rows) and the _seen number on those of the
    # diseases not held out; a set that never drew the held-out disease (class tokens) gets its rows wrong, it is
    # not read on fewer rows
    assert m["tstr_n_real"] == int(head.sum()) and m["tstr_n_real_seen"] == int((head & ~held).sum())
    rows = pd.read_csv(gen, dtype=str, keep_default_na=False)
    no_held = rows[rows["requested_disease"] != "ORPHA:963"]
    write_manifest(no_held.to_dict("records"), tmp_path / "gen" / "no_heldout.csv")
    m2 = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", tmp_path / "gen" / "no_heldout.csv", tiny_profiles,
                       heldout={"ORPHA:963"})
    assert m2["tstr_n_real"] == m["tstr_n_real"] and m2["tstr_n_real_seen"] == m["tstr_n_real_seen"]
    assert m2["tstr_top1"] * m2["tstr_n_real"] == pytest.approx(m2["tstr_top1_seen"] * m2["tstr_n_real_seen"],
                                                                abs=1e-3)
    # nothing held out: no _seen pair (it repeated the pooled numbers, and the run report printed the row)
    m3 = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", tmp_path / "gen" / "no_heldout.csv", tiny_profiles,
                       heldout=set(), heldout_columns=False)
    assert "tstr_top1" in m3 and "tstr_top1_seen" not in m3 and "tstr_n_real_seen" not in m3

    from kgface.evaluate import main

    out = tmp_path / "out"
    over = list(TINY_EVALUATOR)
    main([*over, f"real={tiny_data / 'manifest.csv'}", f"generated={gen}", f"hydra.run.dir={out}", "progress=false"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"real_top1", "real_stage_mae", "oracle_top1"} <= set(metrics["evaluator"])
    # the entry trains the same evaluator (same config and data: the cache) and reads the same numbers
    for key in ("seen_top1", "heldout_top1", "stage_spearman"):
        assert metrics["generation"][key] == pytest.approx(m["generation"][key]), key
    assert metrics["fid_clip"] < 1e-3
    assert metrics["evaluator"]["phenotype_auroc"]  # so its bars are drawn
    lo, hi = metrics["generation"]["seen_top1_ci95"]  # the report's table prints intervals, not "-" for lists
    assert f"| `generation.seen_top1_ci95` | [{lo:.3f}, {hi:.3f}] |" in (out / "report.md").read_text()
    for name in ["report.md", "report.html", "confusion_real.png", "stage_real.png", "phenotypes_real.png",
                 "real_best.png", "real_worst.png", "confusion_generated.png", "stage_generated.png",
                 "generated_best.png", "generated_worst.png", "memorisation_nearest.png", "learned_profiles.json",
                 "phenotype_match_generated.png",
                 "learned_profiles.png"]:
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert all(f'src="{n}"' in page for n in ("confusion_real.png", "phenotypes_real.png", "memorisation_nearest.png",
                                              "learned_profiles.png"))
    assert page.index('src="memorisation_nearest.png"') < page.index('src="learned_profiles.png"')  # last figure
    md = (out / "report.md").read_text()
    assert md.index("`kid_clip`") < md.index("`fid_clip`")  # lead with KID
    assert "- learned vs KG frequencies: " in md  # where the faces and the KG disagree, as a finding
    # heads fitted on diseased faces too (phenotype_heads=all) can echo the KG: the report and the file say so
    assert "evaluator.phenotype_heads=all" in md
    assert json.loads((out / "learned_profiles.json").read_text())["phenotype_heads"] == "all"
    # the figures read the headline numbers' rows: stages 2-3 and healthy faces, no transformations
    assert "Real test images, stages 2-3, healthy and ungraded photos (the rows of real_top1): disease confusion" in md
    # hit rates come from the val split's labelled stage-3 faces (not the learned test faces, whose labels they
    # would echo); heads whose phenotype no such face shows have their hit rate taken as 1, and the report counts them
    from kgface.evaluation.learned_profiles import detector_rates, val_rates_table

    saved = json.loads((out / "learned_profiles.json").read_text())
    learned = saved["diseases"]
    val = val_rates_table(tiny_evaluator, tiny_data / "manifest.csv")
    assert saved["tpr_from"] == f"the val split's {len(val)} labelled stage-3 faces"
    used = {e["hpo_id"] for entry in learned.values() for e in entry["phenotypes"]}
    tpr = detector_rates(tiny_evaluator, val)[0]
    untested = used - set(tpr)
    assert used and all(e["tpr"] == 1 for v in learned.values() for e in v["phenotypes"] if e["hpo_id"] in untested)
    assert all(e["tpr"] == round(tpr[e["hpo_id"]], 4) for v in learned.values() for e in v["phenotypes"]
               if e["hpo_id"] not in untested)
    assert 0 < len(untested) < len(used)
    assert f"{len(untested)} of {len(used)} learned phenotypes have no labelled stage-3 face" in md
    # heads whose hit rate is within 0.05 of their healthy rate are left uncorrected, and counted too
    entries = [e for v in learned.values() for e in v["phenotypes"]]
    flat = {e["hpo_id"] for e in entries if not e["corrected"]}
    for e in entries:  # rates are rounded to 4 places in the file, hence the 1e-4 margins
        gap = e["tpr"] - e["healthy_rate"]
        if e["hpo_id"] in flat:
            assert gap <= 0.0501 and e["learned_frequency"] == e["detection_rate"]
        else:
            assert gap > 0.0499
    assert 0 < len(flat) < len(used)  # the tiny evaluator's weak heads
    assert f"{len(flat)} of {len(used)} learned phenotypes' heads hit faces showing the phenotype at most 0.05" in md
    # again into the same folder without learning: the earlier learned profiles stay (a run's profile.learned may
    # name them), and the new report says they are not its own
    main([*over, f"real={tiny_data / 'manifest.csv'}", f"hydra.run.dir={out}", "progress=false",
          "learned_profiles=false"])
    assert (out / "learned_profiles.json").is_file()
    assert "learned_profiles.json and learned_profiles.png in this folder come from an earlier report" in \
        (out / "report.md").read_text()
    # report.grid_cases sizes the case grids: 12 cases take two rows of 8, 4 take one
    from PIL import Image

    from kgface.evaluation import write_report

    heights = {}
    for k in (4, 12):
        write_report(tmp_path / f"grid{k}", m, scored, tiny_evaluator, tiny_profiles, grid_cases=k)
        heights[k] = Image.open(tmp_path / f"grid{k}" / "real_best.png").size[1]
    assert heights[12] > 1.5 * heights[4]


def test_transformations_count_in_neither_seen_split(tiny_evaluator, tiny_data, tiny_profiles, tmp_path):
    """seen_disease_top1 / healthy_top1 read samples only: transformations requesting a stage-3 disease and a healthy
    face (headline requests both) leave their counts as the samples alone give them."""
    gen = generated_manifest(tiny_data, tmp_path)
    df = pd.read_csv(gen, dtype=str, keep_default_na=False)
    sample = df[df["mode"] == "sample"]
    stage3 = sample[(sample["requested_stage"] == "3") & (sample["requested_disease"] != "healthy")]
    assert len(stage3) and (sample["requested_disease"] == "healthy").any()
    edit = df[df["mode"] == "transform"].iloc[0].to_dict()
    extra = [{**edit, "requested_disease": stage3.iloc[0]["requested_disease"], "requested_stage": "3"},
             {**edit, "path": "t001.png", "requested_disease": "healthy", "requested_stage": "0"}]
    (tmp_path / "gen" / "t001.png").write_bytes((tmp_path / "gen" / edit["path"]).read_bytes())
    rows = sample.to_dict("records") + extra
    m = evaluate_sets(tiny_evaluator, None, write_manifest(rows, tmp_path / "gen" / "manifest.csv"), tiny_profiles)
    g = m["generation"]
    stage = sample["requested_stage"].astype(int)
    healthy = sample["requested_disease"] == "healthy"
    held = sample["requested_disease"] == "ORPHA:963"  # the tiny panel's held-out disease (its heldout column)
    assert g["healthy_n"] == int(healthy.sum())
    assert g["seen_disease_n"] == int((~healthy & ~held & stage.isin([2, 3])).sum()) > 0
    assert m["transform"]["n"] == 2


def test_bad_inputs_are_clear_errors(tiny_evaluator, tiny_data, tiny_cfg, tiny_profiles, tmp_path, capsys,
                                     monkeypatch):
    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    paths = list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:3])
    with pytest.raises(EvaluatorInputError, match="empty"):
        load_images([])
    with pytest.raises(EvaluatorInputError, match="does not exist"):
        load_images([str(tmp_path / "nope.png")])
    from PIL import Image
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    with pytest.raises(EvaluatorInputError, match=r"big\.png: image is 40x40, expected 32x32 .*resize this one"):
        load_images([*paths, str(tmp_path / "big.png")])
    for empty, what in ((df.iloc[:0], "real set"), (None, "generated set")):  # frames given to the library
        with pytest.raises(EvaluatorInputError, match=f"the {what} is empty"):
            evaluate_sets(tiny_evaluator, empty, df.iloc[:0] if empty is None else None, None)
    with pytest.raises(EvaluatorInputError, match="unknown to the evaluator"):
        tiny_evaluator.check_labels(["ORPHA:870"])
    with pytest.raises(UserError, match="evaluator.pretrained"):
        build_clip({"name": "openclip", "model": "ViT-B-16", "pretrained": str(tmp_path / "missing.bin")})
    # generated images never pass as real ones: not as the real set, not as the evaluator's training data
    made = read_manifest(tiny_data / "manifest.csv")[0]
    made.loc[3, "source"] = "generated"
    with pytest.raises(EvaluatorInputError,
                       match=r"real set \(.*manifest\.csv\): 1 rows have source 'generated' .*generated="):
        evaluate_sets(tiny_evaluator, made, None, None)
    made = df.copy()
    made.loc[3, "source"] = "generated"
    made_path = tiny_data / "made_manifest.csv"
    made.to_csv(made_path, index=False)
    with pytest.raises(EvaluatorInputError, match="made_manifest.csv: 1 rows have source 'generated'"):
        fit_evaluator(tiny_cfg.evaluator, made_path, tiny_profiles, None, progress=False)
    # real and generated sets of other sizes: FID/KID and the audit cannot compare them
    small = tmp_path / "small"
    small.mkdir()
    gen_rows = []
    for i, r in enumerate(df[df["split"] == "test"].head(4).to_dict("records")):
        Image.new("RGB", (16, 16), (i * 40, 90, 90)).save(small / f"g{i}.png")
        gen_rows.append({**r, "path": f"g{i}.png", "source": "generated", "mode": "sample",
                         "requested_disease": r["disease"], "requested_stage": r["stage"], "seed": i,
                         "source_image": ""})
    small_manifest = write_manifest(gen_rows, small / "manifest.csv")

    def never(*args, **kwargs):
        raise AssertionError("a set was scored before the sizes were compared")

    with monkeypatch.context() as m:  # found from the images' headers, before either set is read
        m.setattr(tiny_evaluator, "score_set", never)
        with pytest.raises(EvaluatorInputError, match=r"the real set \(.*manifest\.csv\)'s images are 32x32 px and "
                                                      r"the generated set \(.*small/manifest\.csv\)'s 16x16: resize"):
            evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", small_manifest, None)
    Image.new("RGB", (32, 32)).save(small / "g0.png")  # one image of the real size among them: that set is mixed
    with pytest.raises(EvaluatorInputError, match=r"g1\.png: image is 16x16, expected 32x32"):
        evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", small_manifest, None)
    for hub_model in ("ViT-B-16-SigLIP", "roberta-ViT-B-32"):  # a hub tokenizer / text model would download
        with pytest.raises(UserError, match=f"evaluator.model={hub_model}: .*Hugging Face"):
            build_clip({"name": "openclip", "model": hub_model, "pretrained": str(tmp_path / "w.bin")},
                       load_pretrained=False)
    # the entry: a manifest row with a missing image -> one line, exit 2
    bad = df.copy()
    bad.loc[0, "path"] = "images/missing.png"
    bad_path = tiny_data / "bad_manifest.csv"
    bad.to_csv(bad_path, index=False)
    from kgface.evaluate import main

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "metrics.json").write_text("{}")  # an earlier report's, in the folder this one fails in
    with pytest.raises(SystemExit) as exc:
        main([f"real={bad_path}", f"hydra.run.dir={tmp_path / 'o'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad_manifest.csv:2: image 'images/missing.png' does not exist" in err[0]
    assert "give real= another manifest" in err[0]  # the override this entry takes, not the data config's key
    assert (tmp_path / "o" / "metrics.json").is_file()  # a refused call leaves the earlier report as it was
    with pytest.raises(SystemExit) as exc:  # the whole job's threads, as the other entries take them
        main([f"real={tiny_data / 'manifest.csv'}", "num_threads=-1", f"hydra.run.dir={tmp_path / 'o'}"])
    assert exc.value.code == 2 and "num_threads=-1: a whole number >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a typo'd evaluator key: refused, not a refit reading the defaults
        main([f"real={tiny_data / 'manifest.csv'}", "+evaluator.probe.l3=0.1", f"hydra.run.dir={tmp_path / 'o'}"])
    assert exc.value.code == 2 and "evaluator.probe.l3 is not a setting of evaluator=tiny_clip; known: probe.l2, " \
        "probe.min_stage, probe.blur" in capsys.readouterr().err
    for held in ("data.json", "model"):  # into a train run's folder, or a baselines generator's: its numbers stay
        run = tmp_path / f"run_{held.split('.')[0]}"
        (run / "kg").mkdir(parents=True)
        (run / "metrics.json").write_text("{}")
        if held == "data.json":
            (run / "data.json").write_text("{}")
        else:
            (run / "model").mkdir()
        for args in ([f"run={run}"], [f"run={run / 'kg'}"], []):
            with pytest.raises(SystemExit) as exc:
                main([f"real={tiny_data / 'manifest.csv'}", *args, f"hydra.run.dir={run}"])
            assert exc.value.code == 2 and f"holds a kgface.train run ({held})" in capsys.readouterr().err
            assert (run / "metrics.json").read_text() == "{}"
    (run / "data.json").write_text("{}")  # a whole run (data.json + profiles.json): its evaluation/ folder too
    (run / "profiles.json").write_text("{}")
    (run / "evaluation").mkdir()
    (run / "evaluation" / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main([f"real={tiny_data / 'manifest.csv'}", f"run={run}", f"hydra.run.dir={run / 'evaluation'}"])
    assert exc.value.code == 2 and f"lies in the kgface.train run {run}" in capsys.readouterr().err
    assert (run / "evaluation" / "metrics.json").read_text() == "{}"
    trial_out = tmp_path / "trial"  # a trial's folder: its report.md would be replaced
    trial_out.mkdir()
    (trial_out / "trial.csv").write_text("patient_id\n")
    with pytest.raises(SystemExit) as exc:
        main([f"real={tiny_data / 'manifest.csv'}", f"run={run}", f"hydra.run.dir={trial_out}"])
    assert exc.value.code == 2 and "holds another kgface output (trial.csv)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([f"hydra.run.dir={tmp_path / 'o2'}"])
    assert exc.value.code == 2 and "nothing to evaluate: give real=MANIFEST" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # generated= alone: no run's evaluator and nothing to train one on
        main([f"generated={tiny_data / 'manifest.csv'}", f"hydra.run.dir={tmp_path / 'o4'}"])
    assert exc.value.code == 2 and "without run=RUN_DIR the evaluator is trained on" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([f"real={tiny_data / 'manifest.csv'}", "evaluator=openclip", f"hydra.run.dir={tmp_path / 'o3'}"])
    assert exc.value.code == 2 and "evaluator.pretrained" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([f"real={tiny_data / 'manifest.csv'}", "report.grid_cases=0", f"hydra.run.dir={tmp_path / 'o4'}"])
    assert exc.value.code == 2 and "report.grid_cases=0" in capsys.readouterr().err
    (tmp_path / "o6").mkdir()
    (tmp_path / "o6" / "metrics.json").write_text("{}")  # an earlier report: untouched by a refused call
    for override in ("evaluator.phenotype_threshold=0.3", "evaluator=openclip"):  # with run=: never read
        with pytest.raises(SystemExit) as exc:
            main([f"real={tiny_data / 'manifest.csv'}", f"run={tmp_path / 'any-run'}", override,
                  f"hydra.run.dir={tmp_path / 'o6'}"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"loads that run's own evaluator, so {override} is not read" in err, err
    assert (tmp_path / "o6" / "metrics.json").is_file()
    # run= a folder whose profiles.json is truncated: one line naming the file (it was a JSON traceback)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "profiles.json").write_text('{"profiles": [')
    with pytest.raises(SystemExit) as exc:
        main([f"real={tiny_data / 'manifest.csv'}", f"run={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'o5'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "profiles.json: not a kgface profiles file" in err[0]
    # a generated set that is only a header, and one requesting a disease the evaluator was not trained on: one
    # line each, exit 2, no new metrics.json (o6's earlier one stays as it was)
    header_only = tmp_path / "header_only.csv"
    header_only.write_text(",".join(df.columns) + "\n")
    gen = pd.read_csv(generated_manifest(tiny_data, tmp_path), dtype=str, keep_default_na=False)
    gen.loc[0, "requested_disease"] = "ORPHA:870"  # in the KG, not among the evaluator's classes
    unknown = tmp_path / "gen" / "unknown.csv"
    gen.to_csv(unknown, index=False)
    for name, manifest, says in (("o6", header_only, "header_only.csv"),
                                 ("o7", unknown, "unknown to the evaluator: ORPHA:870 (first: g000.png, column "
                                                 "requested_disease)")):
        with pytest.raises(SystemExit) as exc:
            main([*TINY_EVALUATOR, f"real={tiny_data / 'manifest.csv'}", f"generated={manifest}", "progress=false",
                  f"hydra.run.dir={tmp_path / name}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and says in err[0], err
        assert (tmp_path / name / "metrics.json").exists() == (name == "o6")


def test_evaluator_never_imports_the_generator():
    code = ("import sys, kgface.evaluation, kgface.evaluate; "
            "bad = [m for m in sys.modules if m.startswith(('kgface.diffusion', 'kgface.encoders'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    # nor at run time: imports inside functions (kgface.evaluate run=RUN read the held-out list through
    # kgface.diffusion.run_loading, which loads the whole generator package), followed through every kgface module
    # the evaluator's files reach, at any depth
    import ast
    from pathlib import Path

    import kgface

    root = Path(kgface.__file__).parent

    def files_of(module: str) -> list[Path]:
        """The module's file and its packages' __init__.py files (importing a.b.c runs a/__init__, a/b/__init__)."""
        parts, out = module.split("."), []
        for i in range(2, len(parts) + 1):
            rel = Path(*parts[1:i])
            out += [f for f in (root / rel.with_suffix(".py"), root / rel / "__init__.py") if f.is_file()][:1]
        return out

    todo = [root / "evaluate.py", *sorted((root / "evaluation").glob("*.py"))]
    reached, bad = set(), []
    while todo:
        f = todo.pop()
        if f in reached:
            continue
        reached.add(f)
        parts = list(f.relative_to(root).parts)
        package = ["kgface"] + parts[:-1]  # an __init__.py's package is its folder, as for any module in it
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):  # `from .x import y` and `from .. import diffusion` alike
                base = package[:len(package) - node.level + 1] if node.level else []
                module = base + ([node.module] if node.module else [])
                names = [".".join(module)] + [".".join(module + [a.name]) for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            names = [n for n in names if n.startswith("kgface")]
            bad += [f"{f.relative_to(root)}: {n}" for n in names
                    if n.startswith(("kgface.diffusion", "kgface.encoders"))]
            todo += [g for n in names for g in files_of(n)]
    # the walk goes past evaluation/, into packages whose __init__ runs on a submodule's import
    assert {root / "run_files.py", root / "runtime.py", root / "data" / "phantom" / "__init__.py"} <= reached
    assert not bad, bad


def test_evaluate_with_run_refuses_a_real_set_holding_the_evaluators_training_images(tiny_evaluator, tiny_data,
                                                                                   tmp_path, session_cache_dir):
    import os

    from kgface.evaluation.inputs import image_digest

    df = read_manifest(tiny_data / "manifest.csv")[0]
    learned = df[df["split"].isin(["train", "val"])]
    assert tiny_evaluator.trained_on == sorted({image_digest(p) for p in learned["abspath"]})
    run = tmp_path / "run"
    tiny_evaluator.save(run / "evaluator")
    assert Evaluator.load(run / "evaluator").trained_on == tiny_evaluator.trained_on
    import shutil

    copy = tmp_path / "data"  # the same images under another folder: digests are of the bytes
    shutil.copytree(tiny_data, copy)
    # the data's own duplicate (a test image byte-identical to one of its train images) is not a re-split
    own = pd.read_csv(copy / "manifest.csv", dtype=str, keep_default_na=False)
    first = {s: own.index[own["split"] == s][0] for s in ("train", "test")}
    shutil.copy(copy / own.loc[first["train"], "path"], copy / own.loc[first["test"], "path"])
    tiny_evaluator.check_unseen(read_manifest(copy / "manifest.csv")[0])
    resplit = own.copy()
    resplit.loc[resplit["split"] == "train", "split"] = "test"  # another split of the same images
    resplit.to_csv(copy / "manifest.csv", index=False)
    # as a user runs it (in this process, loggers of earlier tests' Hydra runs write to closed streams)
    done = subprocess.run([sys.executable, "-m", "kgface.evaluate", f"run={run}", f"real={copy / 'manifest.csv'}",
                           f"hydra.run.dir={tmp_path / 'o'}", "progress=false"], capture_output=True, text=True,
                          env={**os.environ, "KGFACE_CACHE_DIR": str(session_cache_dir), "OMP_NUM_THREADS": "1"})
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "trained this evaluator" in err[0], done.stderr[-2000:]
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_evaluate_with_run_audits_the_atlas_its_generator_learned_from(tmp_path):
    """`kgface.evaluate run=RUN`: a generator that trained on the phenotype atlas (metrics.json train.atlas_images
    > 0) has its atlas searched for copies, as the train job's own audit does; without it, or without the file,
    nothing is added."""
    from kgface.data.manifest import ATLAS_FILE
    from kgface.evaluate import trained_atlas

    data = tmp_path / "data"
    data.mkdir()
    (data / ATLAS_FILE).write_text("path\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text(json.dumps({"manifest": str(data / "manifest.csv")}))
    (run / "metrics.json").write_text(json.dumps({"train": {"atlas_images": 8000, "atlas_share": 0.3}}))
    assert trained_atlas(run) == data / ATLAS_FILE
    (run / "metrics.json").write_text(json.dumps({"train": {"atlas_images": 0, "atlas_share": 0.0}}))
    assert trained_atlas(run) is None
    (run / "metrics.json").write_text(json.dumps({"train": {"atlas_images": 8000}}))
    (data / ATLAS_FILE).unlink()
    assert trained_atlas(run) is None and trained_atlas(tmp_path / "no-run") is None


def test_evaluate_with_run_reads_the_runs_heldout_diseases(tiny_evaluator, tiny_data, tiny_profiles, tmp_path):
    """Photo manifests carry no `heldout` column: `kgface.evaluate run=RUN` takes the held-out diseases from the
    run's data.json, so tstr_top1_seen reads the seen diseases only (without it, it silently equalled tstr_top1)."""
    from kgface.config import compose
    from kgface.evaluate import run as evaluate_run
    from kgface.evaluate import trained_atlas

    run_dir = tmp_path / "run"
    tiny_evaluator.save(run_dir / "evaluator")
    (run_dir / "data.json").write_text(json.dumps({"manifest": str(tiny_data / "manifest.csv"),
                                                   "heldout": ["ORPHA:963"]}))
    real = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False).drop(columns=["heldout"])
    real_path = tiny_data / "manifest_without_heldout.csv"  # beside the images (paths stay inside their root)
    write_manifest(real.to_dict("records"), real_path)
    gen_path = generated_manifest(tiny_data, tmp_path)
    gen = pd.read_csv(gen_path, dtype=str, keep_default_na=False).drop(columns=["heldout"])
    write_manifest(gen.to_dict("records"), gen_path)
    cfg = compose("evaluate", [f"run={run_dir}", f"real={real_path}", f"generated={gen_path}",
                               "progress=false", "face_identity=none"])
    m = evaluate_run(cfg, tmp_path / "out")
    held = int(((real["split"] == "test") & (real["disease"] == "ORPHA:963")
                & real["stage"].astype(int).isin([2, 3])).sum())
    assert held > 0 and m["tstr_n_real_seen"] == m["tstr_n_real"] - held
    assert m["generation"]["heldout_top1"] is not None
    # real= is another manifest than the run's: the memorisation audit searches what the generator learned from
    assert m["memorisation_reference"] == (f"the train split of {tiny_data / 'manifest.csv'} without the held-out "
                                           f"diseases; threshold from the test split of {tiny_data / 'manifest.csv'} "
                                           "without the held-out diseases")
    # ... without the held-out disease's train faces, which the generator never saw
    assert m["memorisation_train_n"] == int(((real["split"] == "train") & (real["disease"] != "ORPHA:963")).sum())
    assert ((real["split"] == "train") & (real["disease"] == "ORPHA:963")).any()
    # ... and, that manifest gone, says the real set's train split stands in
    (run_dir / "data.json").write_text(json.dumps({"manifest": str(tmp_path / "gone" / "manifest.csv"),
                                                   "heldout": ["ORPHA:963"]}))
    m = evaluate_run(cfg, tmp_path / "out2")
    assert m["memorisation_reference"] == ("the real set's train split without the held-out diseases; threshold from "
                                           "the real set's test split without the held-out diseases")
    assert "training manifest " + str(tmp_path / "gone" / "manifest.csv") + " is gone" in \
        (tmp_path / "out2" / "report.md").read_text()
    # ... or unreadable (an image of it moved): said in the report too, not a failure after every score was taken
    (tmp_path / "moved").mkdir()
    shutil.copy(tiny_data / "manifest.csv", tmp_path / "moved" / "manifest.csv")
    (run_dir / "data.json").write_text(json.dumps({"manifest": str(tmp_path / "moved" / "manifest.csv"),
                                                   "heldout": ["ORPHA:963"]}))
    m = evaluate_run(cfg, tmp_path / "out3")
    assert m["memorisation_reference"] == ("the real set's train split without the held-out diseases; threshold from "
                                           "the real set's test split without the held-out diseases")
    assert "training manifest cannot be read (" in (tmp_path / "out3" / "report.md").read_text()
    # a baselines run keeps each conditioning's train section under baselines.<mode>
    from kgface.data.manifest import ATLAS_FILE

    (run_dir / "metrics.json").write_text(json.dumps({"baselines": {"kg": {"train": {"atlas_images": 0}},
                                                                   "text": {"train": {"atlas_images": 8}}}}))
    atlas_dir = tmp_path / "atlas-data"
    atlas_dir.mkdir()
    (atlas_dir / ATLAS_FILE).write_text("path\n")
    (run_dir / "data.json").write_text(json.dumps({"manifest": str(atlas_dir / "manifest.csv")}))
    assert trained_atlas(run_dir) == atlas_dir / ATLAS_FILE
    # one generator of it (run=OUT/<mode>): only what that conditioning trained on
    (run_dir / "config.yaml").write_text("baselines: [kg, text]\n")
    (run_dir / "kg").mkdir()
    (run_dir / "text").mkdir()
    assert trained_atlas(run_dir / "kg") is None and trained_atlas(run_dir / "text") == atlas_dir / ATLAS_FILE


def test_evaluate_with_run_judges_against_the_runs_profiles_and_takes_a_baselines_subfolder(
        tiny_evaluator, tiny_data, tiny_profiles, tmp_path, monkeypatch):
    """`kgface.evaluate run=RUN` judges the generated set against the run's own profiles.json (what its train job
    judged its samples against, whatever kg= it used), not the evaluate config's kg=; `run=OUT/kg`, a baselines
    generator folder, finds the evaluator, profiles and held-out list of OUT (it was "no evaluator.json there"); a
    real set without phenotype labels on its stage-3 faces still gets learned profiles, with the report saying tpr is
    taken as 1."""
    import copy

    from kgface.config import compose
    from kgface.evaluate import run as evaluate_run

    run_dir = tmp_path / "run"
    tiny_evaluator.save(run_dir / "evaluator")
    (run_dir / "data.json").write_text(json.dumps({"manifest": str(tiny_data / "manifest.csv"),
                                                   "heldout": ["ORPHA:963"]}))
    (run_dir / "config.yaml").write_text("baselines: [kg, text]\n")
    changed = copy.deepcopy(list(tiny_profiles))
    for p in changed:  # every frequency 1: the KG frequencies generation.frequency_mae compares with all move
        for ph in p.phenotypes:
            ph.frequency = 1.0
    (run_dir / "profiles.json").write_text(json.dumps({"schema": "kgface.profiles/1", "kg": "hpo",
                                                       "profiles": [p.to_dict() for p in changed]}))
    (run_dir / "kg").mkdir()
    gen_path = generated_manifest(tiny_data, tmp_path)
    gen = pd.read_csv(gen_path, dtype=str, keep_default_na=False).drop(columns=["heldout"])
    write_manifest(gen.to_dict("records"), gen_path)
    real = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    # no phenotype labels on the stage-3 faces, where learn_profiles reads each head's hit rate (labels on the other
    # stages give it none)
    real.loc[real["stage"] == "3", "phenotypes"] = "{}"
    assert (real["phenotypes"] != "{}").any()
    real_path = tiny_data / "manifest_unlabelled.csv"
    write_manifest(real.to_dict("records"), real_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # run=~/run/kg: the home folder is expanded (it was "folder not found")
    cfg = compose("evaluate", ["run='~/run/kg'", f"generated={gen_path}", f"real={real_path}",
                               "progress=false", "face_identity=none"])
    m = evaluate_run(cfg, tmp_path / "out")
    want = evaluate_sets(tiny_evaluator, None, gen_path, changed, heldout={"ORPHA:963"})["generation"]
    before = evaluate_sets(tiny_evaluator, None, gen_path, tiny_profiles)["generation"]["frequency_mae"]
    assert m["generation"]["frequency_mae"] == pytest.approx(want["frequency_mae"])
    assert abs(want["frequency_mae"] - before) > 1e-3
    assert m["generation"]["heldout_n"] == want["heldout_n"] > 0  # OUT's held-out list
    assert (tmp_path / "out" / "learned_profiles.json").is_file()
    learned = json.loads((tmp_path / "out" / "learned_profiles.json").read_text())["diseases"]
    used = {e["hpo_id"] for v in learned.values() for e in v["phenotypes"]}
    assert f"all {len(used)} learned phenotypes have no labelled stage-3 face showing them: their heads' hit " \
           "rate (tpr) is taken as 1" in (tmp_path / "out" / "report.md").read_text()
    assert all(e["tpr"] == 1 for v in learned.values() for e in v["phenotypes"])
    # a folder that is not one of OUT's baselines does not borrow OUT's evaluator
    (run_dir / "samples").mkdir()
    with pytest.raises(EvaluatorInputError, match="no evaluator.json there"):
        load_evaluator(run_dir / "samples")


def test_diseases_a_run_lacks_are_built_only_from_the_runs_kind_of_graph(tiny_profiles, tmp_path):
    # a primekg run's set with a disease the run never knew: the default kg=hpo would build it from another graph
    from kgface.config import compose
    from kgface.evaluate import judged_profiles

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("kg: {source: primekg, path: /data/kg.csv}\n")
    (run_dir / "profiles.json").write_text(json.dumps({"schema": "kgface.profiles/1", "kg": "primekg",
                                                       "profiles": [p.to_dict() for p in tiny_profiles[:1]]}))
    cfg = compose("evaluate", [f"run={run_dir}", "generated=x.csv"])
    assert [p.disease_id for p in judged_profiles(cfg, run_dir, [tiny_profiles[0].disease_id], None)] == \
        [tiny_profiles[0].disease_id]  # all the run's own: no graph is read
    with pytest.raises(UserError, match=r"kg=hpo but run=.* was trained with kg=primekg; set kg=primekg"):
        judged_profiles(cfg, run_dir, [p.disease_id for p in tiny_profiles[:2]], None)


def test_set_errors_name_the_manifest_and_its_first_bad_row(tiny_evaluator, tiny_data, tiny_cfg, tiny_profiles,
                                                            tmp_path, caplog):
    """A test label the evaluator never learned, a manifest with nothing to fit on: the file is named, and the row."""
    real = read_manifest(tiny_data / "manifest.csv")[0]
    row = real.index[real["split"] == "test"][2]
    real.loc[row, "disease"] = "ORPHA:870"
    with pytest.raises(EvaluatorInputError, match=r"the real set \(.*manifest\.csv\) has labels unknown to the "
                                                  rf"evaluator: ORPHA:870 \(first: {real.loc[row, 'path']}, column "
                                                  r"disease\); .*leave these rows out"):
        evaluate_sets(tiny_evaluator, real, None, None)
    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    no_train = tiny_data / "no_train_manifest.csv"
    df.assign(split=df["split"].replace("train", "val")).to_csv(no_train, index=False)
    with pytest.raises(EvaluatorInputError, match=r"no_train_manifest\.csv: no rows with split=train to fit the "
                                                  r"evaluator on \(val \d+, test \d+\)"):
        fit_evaluator(tiny_cfg.evaluator, no_train, tiny_profiles, None, progress=False)
    # the phenotype atlas beside a manifest trains the CLIP and the heads: generated or non-train rows are refused
    from kgface.data.manifest import ATLAS_FILE

    data = tmp_path / "with_atlas"
    shutil.copytree(tiny_data, data)
    atlas = df[df["split"] == "train"].head(4)
    tested = df.loc[df["split"] == "test", "identity"].iloc[0]
    for rows, words in ((atlas.assign(source="generated"), "rows have source 'generated'"),
                        (atlas.assign(split="val"), "every row must have split 'train'"),
                        (atlas.assign(identity=tested), f"4 rows show identity '{tested}', a val/test person of ")):
        rows.to_csv(data / ATLAS_FILE, index=False)
        with pytest.raises(EvaluatorInputError, match=f"{ATLAS_FILE}: .*{words}"):
            fit_evaluator(tiny_cfg.evaluator, data / "manifest.csv", tiny_profiles, None, progress=False)
    one_class = tiny_data / "one_class_manifest.csv"
    df[(df["split"] != "train") | (df["disease"] == "healthy")].to_csv(one_class, index=False)
    with pytest.raises(EvaluatorInputError, match=r"one_class_manifest\.csv: its train split holds one class "
                                                  r"\(healthy\); the evaluator needs at least 2"):
        fit_evaluator(tiny_cfg.evaluator, one_class, tiny_profiles, None, progress=False)
    stray = tiny_data / "stray_val_manifest.csv"  # a val row of a disease without train rows: said, then left out
    df.assign(disease=df["disease"].where(df.index != df.index[df["split"] == "val"][0], "ORPHA:870")).to_csv(
        stray, index=False)
    with caplog.at_level(logging.WARNING, logger="kgface.evaluation.fitting"):
        fitted = fit_evaluator(tiny_cfg.evaluator, stray, tiny_profiles, None, progress=False)
    assert "ORPHA:870" not in fitted.classes
    assert [r.getMessage() for r in caplog.records if "calibration" in r.getMessage()] == [
        f"{stray}: val rows of ORPHA:870, a disease without train rows, are left out of calibration"]


def test_without_run_a_generated_request_the_evaluator_will_not_know_is_refused_before_fitting(
        tiny_data, tmp_path, capsys, monkeypatch):
    """Without run=, the evaluator will know the diseases of real='s train split: a generated request for another is
    refused before the minutes of fitting (it was refused after them); so is a real set whose test split the
    evaluator could not read (none, or a disease without train rows)."""
    import kgface.evaluate as entry

    def never(*args, **kwargs):
        raise AssertionError("the evaluator was fitted before the generated set was checked")

    monkeypatch.setattr(entry, "fit_evaluator", never)
    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    (tmp_path / "gen").mkdir()
    rows = []
    for i, r in enumerate(df[df["split"] == "test"].head(2).to_dict("records")):
        shutil.copy(tiny_data / r["path"], tmp_path / "gen" / f"g{i}.png")
        rows.append({**r, "path": f"g{i}.png", "source": "generated", "mode": "sample", "seed": i,
                     "requested_disease": "ORPHA:2322" if i else r["disease"], "requested_stage": 3})
    gen = write_manifest(rows, tmp_path / "gen" / "manifest.csv")
    with pytest.raises(SystemExit) as exc:
        entry.main([f"real={tiny_data / 'manifest.csv'}", f"generated={gen}", f"hydra.run.dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "the generated set (" in err and "labels unknown to the evaluator: ORPHA:2322" in err
    assert "(first: g1.png, column requested_disease)" in err
    test_only = df.assign(disease=df["disease"].where(df.index != df.index[df["split"] == "test"][0], "ORPHA:870"))
    no_test = df.assign(split=df["split"].replace("test", "val"))
    for name, frame, words in (("test_only", test_only, "has labels unknown to the evaluator: ORPHA:870 (first: "),
                               ("no_test", no_test, "no rows with split=test")):
        path = tiny_data / f"{name}_manifest.csv"  # beside the images
        frame.to_csv(path, index=False)
        with pytest.raises(SystemExit) as exc:
            entry.main([f"real={path}", f"hydra.run.dir={tmp_path / name}"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and words in err and f"{name}_manifest.csv" in err, err


def test_evaluate_with_run_holds_out_what_the_runs_generator_never_saw(tiny_evaluator, tiny_data, tiny_profiles,
                                                                       tmp_path, caplog):
    """real= another set whose heldout column marks a disease this run's generator trained on: read as seen (the
    union counted it held out and left it out of the _seen keys and the memorisation search), and said."""
    from kgface.config import compose
    from kgface.evaluate import run as evaluate_run

    run_dir = tmp_path / "run"
    tiny_evaluator.save(run_dir / "evaluator")
    (run_dir / "data.json").write_text(json.dumps({"manifest": str(tiny_data / "manifest.csv"), "heldout": []}))
    real = read_manifest(tiny_data / "manifest.csv")[0]
    assert set(real.loc[real["heldout"].astype(str).str.lower() == "true", "disease"]) == {"ORPHA:963"}
    cfg = compose("evaluate", [f"run={run_dir}", f"real={tiny_data / 'manifest.csv'}",
                               f"generated={generated_manifest(tiny_data, tmp_path)}", "progress=false",
                               "face_identity=none"])
    with caplog.at_level(logging.WARNING, logger="kgface.evaluation.sets"):
        m = evaluate_run(cfg, tmp_path / "out")
    assert "tstr_n_real_seen" not in m and m["generation"].get("heldout_top1") is None  # nothing held out: one
    assert "heldout column marks ['ORPHA:963'], which the run's generator trained on" in caplog.text
    # a folder whose data.json says nothing of held-out diseases (hand-built): the columns, as without run=
    (run_dir / "data.json").write_text(json.dumps({"manifest": str(tiny_data / "manifest.csv")}))
    m = evaluate_run(cfg, tmp_path / "out2")
    assert m["tstr_n_real_seen"] < m["tstr_n_real"] and m["generation"].get("heldout_top1") is not None
