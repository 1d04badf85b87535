"""The evaluator on a tiny real phantom panel: training, caching, save/load, scoring, validity, bad inputs."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from kgface.data.manifest import read_manifest, write_manifest
from kgface.evaluation import (Evaluator, EvaluatorInputError, build_clip, evaluate_sets, fit_evaluator, load_evaluator,
                               instrument_validity, load_images, oracle_top1)
from kgface.evaluation.evaluator import image_caption
from kgface.errors import UserError


def test_scores_have_every_head(tiny_evaluator, tiny_data):
    ev = tiny_evaluator
    assert ev.classes[-1] == "healthy" and len(ev.classes) == 4
    assert ev.phenotypes and all(h.startswith("HP:") for h in ev.phenotypes)
    s = ev.score(tiny_data / "manifest.csv")
    for col in ["pred_disease", "pred_prob", "top3", "zs_disease", "zs_presence", "severity_pred", "stage_pred",
                "detected", *[f"p_{c}" for c in ev.classes], *[f"ph_{h}" for h in ev.phenotypes]]:
        assert col in s.columns, col
    probs = s[[f"p_{c}" for c in ev.classes]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert s["severity_pred"].between(0, 3).all() and s["stage_pred"].isin(range(4)).all()
    assert (s["stage"] == read_manifest(tiny_data / "manifest.csv")[0]["stage"]).all()  # labels kept
    assert ev.info["temperature"] > 0 and ev.info["clip"]["steps"] == 12
    assert 0 < ev.info["clip"]["captions_cut"] < 0.5  # recorded: the longest captions (stage 3) exceed 77 tokens


def test_cached_by_data_and_config_and_round_trip(tiny_evaluator, tiny_cfg, tiny_data, tiny_profiles,
                                                  session_cache_dir, tmp_path):
    from kgface.cache import Cache

    cache = Cache(session_cache_dir)
    again = fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert "clip" in again.info and "cache_entry" not in again.info  # loaded, not retrained
    entry = cache.used[-1]["path"]
    assert sorted(p.name for p in __import__("pathlib").Path(entry).iterdir()) == [
        "clip.safetensors", "entry.json", "evaluator.json", "probes.safetensors", "trained_on.txt"]
    images = load_images(list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:10]))
    assert np.allclose(again.features(images), tiny_evaluator.features(images), atol=1e-5)
    folder = tiny_evaluator.save(tmp_path / "ev")
    loaded = Evaluator.load(folder)
    a, b = tiny_evaluator.score(images), loaded.score(images)
    assert np.allclose(a["pred_prob"], b["pred_prob"], atol=1e-5) and list(a["detected"]) == list(b["detected"])
    # a changed manifest (the same rows reversed; beside the images, whose paths are relative) is a different entry
    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    other = tiny_data / "manifest_reversed.csv"
    df.iloc[::-1].to_csv(other, index=False)
    try:
        changed = fit_evaluator(tiny_cfg.evaluator, other, tiny_profiles, cache, progress=False)
    finally:
        other.unlink()
    assert "cache_entry" in changed.info and changed.info["cache_entry"] != str(entry)


def test_new_pixels_under_an_unchanged_manifest_are_a_new_entry(tiny_cfg, tiny_data, tiny_profiles, session_cache_dir,
                                                                tmp_path):
    """A re-render or re-crop keeps manifest.csv byte-identical: the evaluator must not come from the cache."""
    import shutil

    from PIL import Image

    from kgface.cache import Cache

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    cache = Cache(session_cache_dir)
    first = fit_evaluator(tiny_cfg.evaluator, copy / "manifest.csv", tiny_profiles, cache, progress=False)
    key = cache.used[-1]["path"]
    rel = read_manifest(copy / "manifest.csv")[0]["path"].iloc[0]
    img = Image.open(copy / rel).convert("RGB")
    Image.new("RGB", img.size, (255, 0, 0)).save(copy / rel)  # the same name, other pixels
    again = fit_evaluator(tiny_cfg.evaluator, copy / "manifest.csv", tiny_profiles, cache, progress=False)
    assert first is not None and "cache_entry" in again.info and again.info["cache_entry"] != str(key)


def test_captions_name_disease_stage_and_phenotypes(tiny_profiles):
    acne = next(p for p in tiny_profiles if p.disease_id == "MONDO:0011438")
    ph = acne.phenotypes[0]
    text = image_caption(acne, 2, {ph.hpo_id: 0.3})
    assert acne.name in text and "stage" in text and (ph.visual or ph.name).strip().rstrip(".")[:20] in text
    # the stage is named, not a fixed word: another stage, or none known, is another caption
    others = {image_caption(acne, s, {ph.hpo_id: 0.3}) for s in (1, 3, None)}
    assert len(others) == 3 and text not in others
    assert "stage" not in image_caption(acne, None, {ph.hpo_id: 0.3})


def test_captions_cut_counts_captions_longer_than_the_text_tower():
    from kgface.evaluation.clip_model import captions_cut

    _, tokenizer, _ = build_clip({"name": "tiny_clip", "image_size": 32, "embed_dim": 16,
                                  "vision": {"width": 8, "layers": [1, 1, 1, 1]},
                                  "text": {"width": 16, "heads": 2, "layers": 1, "context_length": 77}})
    short, long = "a photo of a face", "a photo of a face showing " + ", ".join(["ptosis"] * 80)
    assert captions_cut(tokenizer, [short, short, short, long]) == 0.25
    assert captions_cut(tokenizer, [short]) == 0.0 and captions_cut(lambda texts: None, [long]) == 0.0


def test_validity_oracle_and_vae_ceiling_identity_roundtrip(tiny_evaluator, tiny_data):
    from kgface.evaluation import metrics as M

    df = read_manifest(tiny_data / "manifest.csv")[0]
    v = instrument_validity(tiny_evaluator, df, roundtrip=lambda x: x)
    assert v["vae_ceiling_top1"] == pytest.approx(v["real_top1"])  # a perfect round trip changes nothing
    assert v["vae_ceiling_stage_spearman"] == pytest.approx(v["real_stage_spearman_disease"])
    sick = df[(df["split"] == "test") & (df["disease"] != "healthy")]
    assert sick["stage"].nunique() > 1 and set(v["per_stage_top1"]) == {0, 1, 2, 3}
    # the headline rows (stages 2-3 and healthy), scored here: real_top1 is their accuracy
    test = df[df["split"] == "test"]
    head = test[test["stage"].isin([2, 3]) | (test["disease"] == "healthy")]
    scored = tiny_evaluator.score(load_images(list(head["abspath"])))
    assert v["real_top1"] == pytest.approx((scored["pred_disease"].to_numpy() == head["disease"].to_numpy()).mean())
    # one person at four stages: same-identity pairs exist, so the identity AUROC is a number, the features' own
    assert v["identity_auroc"] == pytest.approx(M.identity_auroc(tiny_evaluator.features(
        load_images(list(test["abspath"]))), list(test["identity"])))
    assert v["oracle_top1"] > 0.8  # the phenotype vectors separate the panel at stages 2-3
    assert v["phenotype_auroc"] and set(v["phenotype_auroc"]) <= set(tiny_evaluator.phenotypes)
    assert all(0 <= a <= 1 for a in v["phenotype_auroc"].values())
    blurred = instrument_validity(tiny_evaluator, df, roundtrip=lambda x: torch.zeros_like(x))
    # every black image gets one prediction: top-1 can be at most the largest class's share of the headline rows
    assert blurred["vae_ceiling_top1"] <= head["disease"].value_counts(normalize=True).max() + 1e-9
    # a black image carries no stage: its severity is one constant, the rank correlation is undefined (nan)
    assert np.isnan(blurred["vae_ceiling_stage_spearman"])


def test_isolated_auroc_is_half_when_the_effect_draws_nothing(tiny_evaluator, tiny_data):
    from kgface.evaluation.sets import isolated_auroc

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
        return [{"disease": disease, "stage": stage, "phenotypes": dict(phenotypes)} for _ in range(n)]

    train = pd.DataFrame(rows("A", 3, {"HP:1": 1.0}, 5) + rows("B", 3, {"HP:2": 1.0}, 5)
                         + rows("A", 0, {}, 50)  # healthy-looking, labelled A
                         + rows("healthy", 0, {}, 5) + rows("healthy", 0, {"HP:3": 1.0}, 5))
    test = pd.DataFrame(rows("A", 3, {"HP:1": 1.0}, 1) + rows("B", 2, {"HP:2": 1.0}, 1)
                        + rows("healthy", 0, {}, 2) + rows("A", 1, {"HP:1": 1.0}, 1))
    assert oracle_top1(train, test, min_stage=2) == 1.0  # 4 rows read (stage 1 is not), all right
    assert oracle_top1(train, test, min_stage=0) == 0.5  # the bare healthy faces are read as A


def test_photos_without_phenotype_labels_teach_the_heads_nothing(tiny_cfg, tiny_data, tiny_profiles, tiny_evaluator):
    """A diseased photo's `{}` means "not labelled" (docs/data.md): with the same CLIP, the phenotype heads fitted on
    a manifest where half the diseased train faces are such photos equal heads fitted on the labelled rows alone
    (they were trained as negatives of every phenotype before); phantom renders, healthy faces and labelled photos
    count as labelled."""
    from omegaconf import OmegaConf

    from kgface.evaluation.evaluator import labelled_phenotypes, presence_matrix, train_evaluator
    from kgface.evaluation.probes import PhenotypeHeads, Standardizer

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    df = read_manifest(tiny_data / "manifest.csv")[0]
    sick_train = df.index[(df["split"] == "train") & (df["disease"] != "healthy")]
    photos = sick_train[::2]
    df.loc[photos, "source"] = "acne04"
    df.loc[photos, "phenotypes"] = [{} for _ in photos]
    labelled = labelled_phenotypes(df)
    assert not labelled[photos].any() and labelled[df.index.difference(photos)].all()
    labelled_photo = df.loc[[photos[0]]].assign(phenotypes=[{"HP:0001061": 1.0}])
    assert labelled_phenotypes(labelled_photo).all()  # a photo with labels is labelled
    clip = ({k: v.clone() for k, v in tiny_evaluator.model.state_dict().items()}, tiny_evaluator.info["clip"])
    ev = train_evaluator(cfg, df, tiny_profiles, progress=False, clip=clip)
    assert ev.info["unlabelled_phenotype_rows"] == len(photos)
    train = df[df["split"] == "train"].reset_index(drop=True)
    keep = labelled_phenotypes(train)
    f = ev.encoder(load_images(list(train["abspath"]))).numpy()
    x = Standardizer.fit(f)(f)[torch.from_numpy(keep.copy())]
    expected = PhenotypeHeads.fit(x, presence_matrix(list(train["phenotypes"][keep]), ev.phenotypes),
                                  l2=float(cfg["probe"].get("l2", 1e-2)))
    assert torch.allclose(ev.heads.weight, expected.weight, atol=1e-5)


def test_the_clip_presence_loss_leaves_unlabelled_rows_out():
    """The tiny CLIP's auxiliary phenotype term: a NaN presence row (a photo without labels) adds nothing; the loss
    equals the one on the labelled rows alone."""
    from kgface.evaluation.clip_model import AuxiliaryHeads

    torch.manual_seed(0)
    heads = AuxiliaryHeads(8, 3, 4)
    emb, classes = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    presence = torch.randint(0, 2, (5, 4)).float()
    with_photo = presence.clone()
    with_photo[2] = float("nan")
    keep = torch.tensor([True, True, False, True, True])
    term = heads.loss(emb, classes, with_photo, None) - heads.loss(emb, classes, None, None)
    alone = torch.nn.functional.binary_cross_entropy_with_logits(heads.phenotypes(emb[keep]), presence[keep])
    assert torch.isfinite(term) and torch.allclose(term, alone)


def test_the_probe_ignores_rows_below_min_stage(tiny_cfg, tiny_data, tiny_profiles, tiny_evaluator):
    """With the same CLIP, relabelling the train and val faces below probe.min_stage leaves the probe and its
    temperature unchanged; with min_stage 0 they move."""
    from omegaconf import OmegaConf

    from kgface.evaluation.evaluator import train_evaluator

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    df = read_manifest(tiny_data / "manifest.csv")[0]
    sick = sorted(set(df["disease"]) - {"healthy"})
    low = (df["disease"] != "healthy") & (df["stage"] < 2)
    swapped = df.copy()
    swapped.loc[low, "disease"] = [sick[(sick.index(d) + 1) % len(sick)] for d in df["disease"][low]]
    clip = ({k: v.clone() for k, v in tiny_evaluator.model.state_dict().items()}, tiny_evaluator.info["clip"])
    fits = {}
    for min_stage in (2, 0):
        c = {**cfg, "probe": {**cfg["probe"], "min_stage": min_stage}}
        fits[min_stage] = [train_evaluator(c, d, tiny_profiles, progress=False, clip=clip) for d in (df, swapped)]
    a, b = fits[2]
    assert torch.equal(a.probe.weight, b.probe.weight) and a.info["temperature"] == b.info["temperature"]
    a, b = fits[0]
    assert not torch.equal(a.probe.weight, b.probe.weight)


def _generated_manifest(tiny_data, tmp_path, n=None):
    """A 'generated' set: real test images relabelled as requests (mode sample) plus one transformation of the
    first (a copy of it)."""
    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    test = df[df["split"] == "test"].copy()
    test["path"] = [str(tiny_data / p) for p in test["path"]]
    gdir = tmp_path / "gen"
    gdir.mkdir(exist_ok=True)
    import shutil
    rows = []
    for i, r in enumerate(test.to_dict("records")[:n]):
        dst = gdir / f"g{i:03d}.png"
        shutil.copy(r["path"], dst)
        rows.append({**r, "path": dst.name, "split": "test", "source": "generated", "mode": "sample",
                     "requested_disease": r["disease"], "requested_stage": r["stage"], "seed": i,
                     "source_image": ""})
    shutil.copy(rows[0]["abspath"] if "abspath" in rows[0] else gdir / rows[0]["path"], gdir / "t000.png")
    rows.append({**rows[0], "path": "t000.png", "mode": "transform", "source_image": test.iloc[0]["path"]})
    return write_manifest(rows, gdir / "manifest.csv")


def test_evaluate_sets_and_entry_report(tiny_evaluator, tiny_data, tiny_profiles, tmp_path, tiny_cfg):
    gen = _generated_manifest(tiny_data, tmp_path)
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
    assert m["generation"]["top1_all"] == pytest.approx(m["evaluator"]["real_top1_all"], abs=1e-4)
    assert m["generation"]["stage_spearman"] == pytest.approx(m["evaluator"]["real_stage_spearman_disease"],
                                                              abs=1e-4)
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

    from kgface.evaluate import main

    out = tmp_path / "out"
    over = [o for o in __import__("tests.evaluation.conftest", fromlist=["x"]).TINY_EVALUATOR]
    main([*over, f"real={tiny_data / 'manifest.csv'}", f"generated={gen}", f"hydra.run.dir={out}", "progress=false"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"real_top1", "real_stage_mae", "oracle_top1"} <= set(metrics["evaluator"])
    # the entry trains the same evaluator (same config and data: the cache) and reads the same numbers
    for key in ("seen_top1", "heldout_top1", "stage_spearman"):
        assert metrics["generation"][key] == pytest.approx(m["generation"][key]), key
    assert metrics["fid_clip"] < 1e-3
    assert metrics["evaluator"]["phenotype_auroc"]  # so its bars are drawn
    for name in ["report.md", "report.html", "confusion_real.png", "stage_real.png", "phenotypes_real.png",
                 "real_best.png", "real_worst.png", "confusion_generated.png", "stage_generated.png",
                 "generated_best.png", "generated_worst.png", "memorisation_nearest.png", "learned_profiles.json",
                 "phenotype_match_generated.png",
                 "learned_profiles.png"]:
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert all(f'src="{n}"' in page for n in ("confusion_real.png", "phenotypes_real.png", "memorisation_nearest.png"))
    md = (out / "report.md").read_text()
    assert md.index("`kid_clip`") < md.index("`fid_clip`")  # lead with KID
    # the heads whose phenotype no labelled stage-3 test face shows (rare phenotypes in a few test faces) have their
    # hit rate taken as 1, and the report counts them
    from kgface.evaluation.learned_profiles import detector_rates

    learned = json.loads((out / "learned_profiles.json").read_text())["diseases"]
    used = {e["hpo_id"] for entry in learned.values() for e in entry["phenotypes"]}
    untested = used - set(detector_rates(tiny_evaluator, rt)[0])
    assert used and all(e["tpr"] == 1 for v in learned.values() for e in v["phenotypes"] if e["hpo_id"] in untested)
    assert 0 < len(untested) < len(used)
    assert f"{len(untested)} of {len(used)} learned phenotypes have no labelled stage-3 test face" in md
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
    # report.grid_cases sizes the case grids: 12 cases take two rows of 8, 4 take one
    from PIL import Image

    from kgface.evaluation import write_report

    heights = {}
    for k in (4, 12):
        write_report(tmp_path / f"grid{k}", m, scored, tiny_evaluator, tiny_profiles, grid_cases=k)
        heights[k] = Image.open(tmp_path / f"grid{k}" / "real_best.png").size[1]
    assert heights[12] > 1.5 * heights[4]


def test_memorisation_audit_counts_copies_of_extra_training_images(tiny_evaluator, tiny_data, tmp_path):
    # generated = copies of val faces (no train image); as extra training images (the phenotype atlas under
    # trainer.atlas_share) the same faces make every generated image a copy
    import shutil

    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    val = df[df["split"] == "val"].head(12).copy()
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
    assert audited["memorisation_train_n"] == plain["memorisation_train_n"] + 12
    assert audited["memorisation_rate"] == 1.0 and plain["memorisation_rate"] < 0.5


def test_bad_inputs_are_clear_errors(tiny_evaluator, tiny_data, tiny_cfg, tiny_profiles, tmp_path, capsys):
    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    paths = list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:3])
    with pytest.raises(EvaluatorInputError, match="empty"):
        load_images([])
    with pytest.raises(EvaluatorInputError, match="does not exist"):
        load_images([str(tmp_path / "nope.png")])
    from PIL import Image
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    with pytest.raises(EvaluatorInputError, match="expected 32x32"):
        load_images([*paths, str(tmp_path / "big.png")])
    with pytest.raises(EvaluatorInputError, match="unknown to the evaluator"):
        tiny_evaluator.check_labels(["ORPHA:870"])
    with pytest.raises(UserError, match="evaluator.pretrained"):
        build_clip({"name": "openclip", "model": "ViT-B-16", "pretrained": str(tmp_path / "missing.bin")})
    # generated images never pass as real ones: not as the real set, not as the evaluator's training data
    made = read_manifest(tiny_data / "manifest.csv")[0]
    made.loc[3, "source"] = "generated"
    with pytest.raises(EvaluatorInputError, match=r"real set: 1 rows have source 'generated' .*generated="):
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
    with pytest.raises(EvaluatorInputError, match=r"real images are \(32, 32\) px and generated \(16, 16\) px"):
        evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", write_manifest(gen_rows, small / "manifest.csv"),
                      None)
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

    with pytest.raises(SystemExit) as exc:
        main([f"real={bad_path}", f"hydra.run.dir={tmp_path / 'o'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert not (tmp_path / "o" / "metrics.json").exists()  # nothing that looks finished
    with pytest.raises(SystemExit) as exc:
        main([f"hydra.run.dir={tmp_path / 'o2'}"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([f"real={tiny_data / 'manifest.csv'}", "evaluator=openclip", f"hydra.run.dir={tmp_path / 'o3'}"])
    assert exc.value.code == 2 and "evaluator.pretrained" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([f"real={tiny_data / 'manifest.csv'}", "report.grid_cases=0", f"hydra.run.dir={tmp_path / 'o4'}"])
    assert exc.value.code == 2 and "report.grid_cases=0" in capsys.readouterr().err
    # run= a folder whose profiles.json is truncated: one line naming the file (it was a JSON traceback)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "profiles.json").write_text('{"profiles": [')
    with pytest.raises(SystemExit) as exc:
        main([f"real={tiny_data / 'manifest.csv'}", f"run={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'o5'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "profiles.json: not a kgface profiles file" in err[0]


def test_evaluator_never_imports_the_generator():
    code = ("import sys, kgface.evaluation, kgface.evaluate; "
            "bad = [m for m in sys.modules if m.startswith(('kgface.diffusion', 'kgface.encoders'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    # nor at run time: imports inside functions (kgface.evaluate run=RUN read the held-out list through
    # kgface.diffusion.run_loading, which loads the whole generator package)
    import ast
    from pathlib import Path

    import kgface

    root = Path(kgface.__file__).parent
    files = [root / "evaluate.py", root / "run_files.py", *sorted((root / "evaluation").glob("*.py"))]
    bad = []
    for f in files:
        package = ["kgface"] + list(f.relative_to(root).parts[:-1])
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):  # `from .x import y` and `from .. import diffusion` alike
                base = package[:len(package) - node.level + 1] if node.level else []
                module = base + ([node.module] if node.module else [])
                names = [".".join(module)] + [".".join(module + [a.name]) for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            bad += [f"{f.name}: {n}" for n in names if n.startswith(("kgface.diffusion", "kgface.encoders"))]
    assert not bad, bad


def test_auxiliary_loss_leaves_out_faces_without_a_disease():
    from kgface.evaluation.clip_model import AuxiliaryHeads, contrastive_loss

    torch.manual_seed(0)
    aux, emb = AuxiliaryHeads(8, 3, 5), torch.randn(6, 8)
    classes = torch.tensor([0, 1, -1, 2, -1, 0])
    presence = (torch.rand(6, 5) > 0.5).float()
    stages = torch.tensor([1.0, 2.0, float("nan"), 3.0, float("nan"), 0.0])
    known = classes >= 0
    full = aux.loss(emb, classes, presence, stages)
    # disease and stage terms from the 4 labelled faces only; phenotype term from all 6
    part = (torch.nn.functional.cross_entropy(aux.disease(emb[known]), classes[known])
            + torch.nn.functional.binary_cross_entropy_with_logits(aux.phenotypes(emb), presence)
            + torch.nn.functional.mse_loss(aux.stage(emb[known]).squeeze(-1), stages[known]))
    assert torch.isfinite(full) and torch.allclose(full, part)
    only_atlas = aux.loss(emb[~known], classes[~known], presence[~known], stages[~known])
    # a batch of atlas faces alone: the phenotype term only (not a zero left where every term was dropped)
    assert torch.allclose(only_atlas, torch.nn.functional.binary_cross_entropy_with_logits(
        aux.phenotypes(emb[~known]), presence[~known])) and only_atlas > 0
    # two disease-less faces are not partial positives of each other
    img = txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    groups = torch.arange(6)
    a = contrastive_loss(img, txt, torch.tensor(1.0), groups, classes, class_weight=0.5)
    b = contrastive_loss(img, txt, torch.tensor(1.0), groups, torch.tensor([0, 1, 3, 2, 4, 0]), class_weight=0.5)
    assert torch.allclose(a, b)


def test_a_phenotype_atlas_beside_the_manifest_trains_the_clip_and_heads(tiny_cfg, tiny_data, tiny_profiles,
                                                                        session_cache_dir, tmp_path):
    """phenotype_atlas.csv beside manifest.csv: its faces join the CLIP and phenotype heads, never the classes;
    the cache key covers it."""
    import shutil

    from omegaconf import OmegaConf

    from kgface.cache import Cache
    from kgface.data.phantom.dataset import ATLAS, PhantomConfig, build_atlas
    from kgface.data.phantom.effects import load_phantom_effects
    from kgface.resources import kg_data_dir

    folder = tmp_path / "with-atlas"
    shutil.copytree(tiny_data, folder)
    pcfg = PhantomConfig(size=32, supersample=2, identities=120)
    rows = build_atlas(tiny_profiles, pcfg, load_phantom_effects(kg_data_dir() / "phantom_effects.csv"), folder,
                       faces=24, per_face=(2, 3), progress=False)
    write_manifest(rows, folder / "phenotype_atlas.csv")
    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    cfg["train"].update(supervised_weight=1.0, class_weight=0.5)  # the auxiliary heads and partial positives too
    cache = Cache(session_cache_dir)
    ev = fit_evaluator(cfg, folder / "manifest.csv", tiny_profiles, cache, progress=False)
    assert ev.info["atlas_images"] == 24 and ATLAS not in ev.classes and len(ev.classes) == 4
    drawn = {h for r in rows for h in json.loads(r["phenotypes"])}
    assert drawn <= set(ev.phenotypes)
    assert np.isfinite(ev.info["clip"]["final_loss"])
    with_atlas = [u for u in cache.used if u["kind"] == "evaluator"][-1]["path"]
    only = fit_evaluator({**cfg, "phenotype_heads": "atlas"}, folder / "manifest.csv", tiny_profiles, None,
                         progress=False)
    assert only.phenotypes == sorted(drawn)  # heads for the atlas's phenotypes, fitted on its faces alone
    with pytest.raises(EvaluatorInputError, match="phenotype_heads"):
        fit_evaluator({**cfg, "phenotype_heads": "both"}, folder / "manifest.csv", tiny_profiles, None,
                      progress=False)
    (folder / "phenotype_atlas.csv").unlink()
    with pytest.raises(EvaluatorInputError, match="phenotype_heads=atlas needs phenotype_atlas.csv"):
        fit_evaluator({**cfg, "phenotype_heads": "atlas"}, folder / "manifest.csv", tiny_profiles, None,
                      progress=False)
    fit_evaluator(cfg, folder / "manifest.csv", tiny_profiles, cache, progress=False)
    assert [u for u in cache.used if u["kind"] == "evaluator"][-1]["path"] != with_atlas  # without: another entry


def test_an_atlas_with_val_rows_or_unknown_phenotypes_is_a_clear_error(tiny_cfg, tiny_data, tiny_profiles, tmp_path):
    import shutil

    folder = tmp_path / "bad-atlas"
    shutil.copytree(tiny_data, folder)
    rows = read_manifest(folder / "manifest.csv")[0].head(3).drop(columns=["abspath"])
    rows["disease"], rows["phenotypes"] = "atlas", [{"HP:0000508": 1.0}] * 3
    write_manifest(rows.assign(split=["train", "val", "train"], identity=["a", "b", "c"]),  # one person per split
                   folder / "phenotype_atlas.csv")
    with pytest.raises(EvaluatorInputError, match="phenotype_atlas.csv.*split 'train'"):
        fit_evaluator(tiny_cfg.evaluator, folder / "manifest.csv", tiny_profiles, None, progress=False)
    write_manifest(rows.assign(split="train", phenotypes=[{"HP:9999999": 1.0}] * 3), folder / "phenotype_atlas.csv")
    with pytest.raises(EvaluatorInputError, match="HP:9999999 in no profile"):
        fit_evaluator(tiny_cfg.evaluator, folder / "manifest.csv", tiny_profiles, None, progress=False)


def test_the_disease_probe_learns_from_stages_at_or_above_min_stage(tiny_cfg, tiny_data, tiny_profiles):
    """Stage-0 faces look healthy by construction: with probe.min_stage=2 the probe (and its calibration) sees
    healthy faces and stages 2-3 only; a class left without such faces is a clear error."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    df = read_manifest(tiny_data / "manifest.csv")[0]
    train = df[df["split"] == "train"]
    for min_stage in (0, 2):
        ev = fit_evaluator({**cfg, "probe": {**cfg["probe"], "min_stage": min_stage}}, tiny_data / "manifest.csv",
                           tiny_profiles, None, progress=False)
        want = ((train["disease"] == "healthy") | (train["stage"] >= min_stage)).sum()
        assert ev.info["probe_images"] == want and len(ev.classes) == 4
    assert ev.info["probe_images"] < len(train)  # stages 0-1 of the diseases left out
    with pytest.raises(EvaluatorInputError, match="evaluator.probe.min_stage=4"):
        fit_evaluator({**cfg, "probe": {**cfg["probe"], "min_stage": 4}}, tiny_data / "manifest.csv", tiny_profiles,
                      None, progress=False)


def test_a_head_setting_refits_the_heads_on_the_cached_clip(tiny_cfg, tiny_data, tiny_profiles, tmp_path,
                                                            monkeypatch):
    """The tiny CLIP has its own cache entry keyed by what shapes it: a probe or phenotype-head setting reuses it
    (no CLIP training), a CLIP setting trains a new one."""
    from omegaconf import OmegaConf

    from kgface.cache import Cache
    from kgface.evaluation import evaluator as evaluator_module

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    cache = Cache(tmp_path / "cache")
    first = fit_evaluator(cfg, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    clip_dir = next((tmp_path / "cache" / "evaluator-clip").iterdir())  # the CLIP's own entry
    assert {"clip.safetensors", "clip.json"} <= {p.name for p in clip_dir.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("the CLIP was trained again")

    monkeypatch.setattr(evaluator_module, "train_clip", no_training)
    refit = fit_evaluator({**cfg, "probe": {**cfg["probe"], "l2": 0.1}, "phenotype_threshold": 0.6},
                          tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert refit.info["clip"] == first.info["clip"] and refit.cfg["probe"]["l2"] == 0.1
    a, b = first.model.state_dict(), refit.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first.probe.weight, refit.probe.weight)  # the heads were refitted with the new L2
    assert len({u["path"] for u in cache.used if u["kind"] == "evaluator"}) == 2
    with pytest.raises(AssertionError, match="trained again"):
        fit_evaluator({**cfg, "train": {**cfg["train"], "steps": 13}}, tiny_data / "manifest.csv", tiny_profiles,
                      cache, progress=False)


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


def test_requests_are_read_row_by_row_and_continuous_stages_round():
    from kgface.evaluation.sets import _requested

    table = pd.DataFrame({"path": ["a.png", "b.png", "c.png", "d.png"], "disease": ["A", "B", "C", "D"],
                          "stage": [3, 2, 1, 0], "requested_disease": ["X", "", "Z", float("nan")],
                          "requested_stage": ["2.6", "", "0.4", "1.5"]})
    diseases, severity, stages = _requested(table)
    assert list(diseases) == ["X", "B", "Z", "D"]  # an empty cell falls back for its own row only
    assert list(severity) == [2.6, 2.0, 0.4, 1.5]  # Spearman reads the requested severity
    assert list(stages) == [3, 2, 0, 2]  # as the generator's own stage column rounds it (half to even)
    for bad in ("two", "3.5", "-1"):
        with pytest.raises(EvaluatorInputError, match=f"b.png: requested stage '{bad}' is not a number in"):
            _requested(table.assign(requested_stage=["1", bad, "1", "1"]))


def test_a_real_set_without_test_rows_and_a_one_image_set_are_clear_errors(tiny_evaluator, tiny_data, tmp_path):
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
    with pytest.raises(UserError, match="at least 2 real and 2 generated images .*1 generated"):
        evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None)
    # one drawn image beside a transformation: no FID/KID (edits of real faces are left out), said, not an error
    m = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", _generated_manifest(tiny_data, tmp_path, n=1), None)
    assert "fid_clip" not in m and m["fid_kid_n"]["generated"] == 1 and "left out" in m["fid_kid_n"]["edits_of_real_faces"]


def test_a_damaged_evaluator_json_is_a_clear_error(tiny_evaluator, tmp_path):
    folder = tiny_evaluator.save(tmp_path / "ev")
    (folder / "evaluator.json").write_text('{"format": ', encoding="utf-8")
    with pytest.raises(EvaluatorInputError, match="evaluator.json: not valid JSON"):
        Evaluator.load(folder)


def test_a_report_that_fails_midway_leaves_no_metrics_json(tiny_evaluator, tiny_data, tiny_profiles, tmp_path,
                                                           monkeypatch):
    """metrics.json is written last, every figure under a temporary name: a failed report is visibly unfinished."""
    from kgface.evaluation import report

    gen = _generated_manifest(tiny_data, tmp_path, n=12)
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


def test_photos_of_unknown_stage_teach_no_stage_and_enter_no_stage_metric(tiny_cfg, tiny_data, tiny_profiles,
                                                                        tiny_evaluator, tmp_path):
    """stage_known=False rows (real photos without a grade, placeholder stage 2) are left out of the stage head, the
    captions' stage words and the real-set stage metrics; the disease heads still use them."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    df = pd.read_csv(copy / "manifest.csv", dtype=str, keep_default_na=False)
    sick = df["disease"] != "healthy"
    unknown = sick & (df.index % 3 == 0)
    df["stage_known"] = np.where(unknown, "False", "True")
    df.loc[unknown, "stage"] = "2"  # the placeholder the real-data readers write
    df.to_csv(copy / "manifest.csv", index=False)
    ev = fit_evaluator(tiny_cfg.evaluator, copy / "manifest.csv", tiny_profiles, None, progress=False)
    train = df["split"] == "train"
    assert ev.info["stage_images"] == int((train & ~unknown).sum()) < int(train.sum())
    acne = next(p for p in tiny_profiles if p.disease_id == "MONDO:0011438")
    assert "stage" not in image_caption(acne, None, {}) and "stage" in image_caption(acne, 2, {})
    real = read_manifest(copy / "manifest.csv")[0]
    v = instrument_validity(ev, real)
    test = real["split"] == "test"
    assert v["n_stage_known"] == int((test & ~unknown.to_numpy()).sum()) < int(test.sum())
    # the placeholder stage 2 fills no stage-2 cell: ungraded photos have their own, and count in the headline
    scored = ev.score(real[test.to_numpy()])
    graded = ~unknown.to_numpy()[test.to_numpy()]
    right = (scored["pred_disease"] == scored["disease"]).to_numpy()
    at2 = graded & (scored["stage"] == 2).to_numpy()
    assert v["per_stage_top1"][2] == pytest.approx(right[at2].mean())
    assert v["per_stage_top1"]["unknown"] == pytest.approx(right[~graded].mean())
    head = (scored["disease"] == "healthy").to_numpy() | ~graded | (graded & scored["stage"].isin([2, 3]).to_numpy())
    assert v["real_top1"] == pytest.approx(right[head].mean())


def test_non_square_images_train_calibrate_and_score(tiny_cfg, tiny_data, tiny_profiles, tmp_path):
    """Atlas and val images were loaded at the train width squared: a set of 32x24 photos failed on its val rows."""
    import shutil

    from PIL import Image

    from kgface.data.phantom.dataset import PhantomConfig, build_atlas
    from kgface.data.phantom.effects import load_phantom_effects
    from kgface.resources import kg_data_dir

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    rows = build_atlas(tiny_profiles, PhantomConfig(size=32, supersample=2, identities=120),
                       load_phantom_effects(kg_data_dir() / "phantom_effects.csv"), copy, faces=8, per_face=(2, 3),
                       progress=False)
    write_manifest(rows, copy / "phenotype_atlas.csv")
    df = read_manifest(copy / "manifest.csv")[0]
    atlas = read_manifest(copy / "phenotype_atlas.csv")[0]
    for p in [*df["abspath"], *atlas["abspath"]]:
        with Image.open(p) as im:
            im.convert("RGB").crop((0, 4, 32, 28)).save(p)  # 32 wide, 24 high
    assert (df["split"] == "val").any()
    ev = fit_evaluator(tiny_cfg.evaluator, copy / "manifest.csv", tiny_profiles, None, progress=False)
    assert ev.info["temperature"] > 0 and ev.info["val_images"] > 0 and ev.info["atlas_images"] == 8
    assert load_images(list(df["abspath"][:2]), size=(24, 32)).shape[-2:] == (24, 32)
    with pytest.raises(EvaluatorInputError, match="expected 24x32"):
        load_images(list(df["abspath"][:2]), size=(32, 24))


def test_a_real_frame_without_split_is_a_clear_error(tiny_evaluator, tiny_data):
    df = read_manifest(tiny_data / "manifest.csv")[0].drop(columns=["split"])
    with pytest.raises(EvaluatorInputError, match="no split column"):
        instrument_validity(tiny_evaluator, df)


def _edits_of(tiny_data, test: pd.DataFrame, gdir, modes: list[str], absolute: bool = False):
    """A generated manifest of copies of real test images, one row per mode; an edit (any mode but sample) gets a
    copy of its own image as its source_image, src/s<i>.png relative to the manifest. absolute: rows' `path`
    absolute (inside the folder), else relative."""
    import shutil

    (gdir / "src").mkdir(parents=True)
    rows = []
    for i, (r, mode) in enumerate(zip(test.to_dict("records"), modes)):
        shutil.copy(tiny_data / r["path"], gdir / f"g{i}.png")
        edit = mode != "sample"
        if edit:
            shutil.copy(tiny_data / r["path"], gdir / "src" / f"s{i}.png")
        rows.append(r | {"path": str(gdir / f"g{i}.png") if absolute else f"g{i}.png", "source": "generated",
                         "mode": mode, "requested_disease": r["disease"], "requested_stage": r["stage"], "seed": i,
                         "source_image": f"src/s{i}.png" if edit else ""})
    return write_manifest(rows, gdir / "manifest.csv")


def test_relative_transform_sources_are_read_from_the_manifest_folder(tiny_evaluator, tiny_data, tmp_path):
    """An absolute `path` inside the folder (read_manifest accepts it) with a relative source_image: the source is
    found beside the manifest (it was an IndexError); a DataFrame with no folder is a one-line error."""
    test = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    test = test[test["split"] == "test"].head(6)
    gen = _edits_of(tiny_data, test, tmp_path / "gen", ["transform"] * 2 + ["sample"] * 4, absolute=True)
    m = evaluate_sets(tiny_evaluator, None, gen, None)
    assert m["transform"]["n"] == 2 and m["transform"]["identity_similarity"] == pytest.approx(1.0, abs=1e-4)
    frame = read_manifest(gen)[0]
    frame.attrs.clear()
    with pytest.raises(EvaluatorInputError, match="source_image 'src/s0.png' is relative"):
        evaluate_sets(tiny_evaluator, None, frame, None)


def test_a_requested_disease_without_a_profile_is_a_clear_error(tiny_evaluator, tiny_data, tiny_profiles, tmp_path):
    gen = _generated_manifest(tiny_data, tmp_path, n=8)
    some = [p for p in tiny_profiles if p.disease_id != "ORPHA:96253"]
    assert "ORPHA:96253" in set(read_manifest(gen)[0]["requested_disease"])
    with pytest.raises(EvaluatorInputError, match="no KG profile for ORPHA:96253"):
        evaluate_sets(tiny_evaluator, None, gen, some)


def test_evaluate_with_run_refuses_a_real_set_holding_the_evaluators_training_images(tiny_evaluator, tiny_data,
                                                                                   tmp_path, session_cache_dir):
    import os

    from kgface.evaluation.evaluator import image_digest

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


def test_saving_over_an_evaluator_is_all_or_nothing(tiny_evaluator, tiny_data, tmp_path, monkeypatch):
    import safetensors.torch

    folder = tiny_evaluator.save(tmp_path / "ev")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    calls = []

    def failing(tensors, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 2:  # the probes are written, the CLIP is not
            raise OSError("disk full")
        return real_save(tensors, filename, *a, **k)

    real_save = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        tiny_evaluator.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ev"]  # no temporary folder left


def test_the_openclip_path_keys_and_checks_its_weights_file(tiny_cfg, tiny_data, tiny_profiles, session_cache_dir,
                                                           tmp_path):
    """evaluator=openclip with a real open_clip model read from a local safetensors file (a tiny registered config,
    random weights): new bytes under the same path are a new cache entry, and a saved evaluator whose file changed
    refuses to load (its heads read another model's features)."""
    import open_clip
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from kgface.cache import Cache
    from kgface.evaluation.clip_model import register_tiny

    name = register_tiny(OmegaConf.to_container(tiny_cfg.evaluator, resolve=True))
    weights = tmp_path / "clip.safetensors"

    def write(seed):
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    from kgface.config import compose

    cfg = compose("evaluate", ["evaluator=openclip", f"evaluator.model={name}", f"evaluator.pretrained={weights}"])
    cache = Cache(session_cache_dir)
    write(0)
    first = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert len(first.info["pretrained_sha256"]) == 64
    saved = first.save(tmp_path / "ev")
    assert Evaluator.load(saved).classes == first.classes
    again = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert "cache_entry" not in again.info  # same bytes: from the cache
    write(1)
    changed = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert changed.info["cache_entry"] != first.info["cache_entry"]
    with pytest.raises(EvaluatorInputError, match="not the weights file its heads were fitted on"):
        Evaluator.load(saved)
    with pytest.raises(EvaluatorInputError, match="evaluator.pretrained=.*not a readable weights file"):
        fit_evaluator(compose("evaluate", ["evaluator=openclip", f"evaluator.model={name}",
                                           f"evaluator.pretrained={tmp_path}"]).evaluator,
                      tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)


def test_a_cache_entry_from_before_the_list_gets_it_from_the_data_its_key_names(tiny_cfg, tiny_data, tiny_profiles,
                                                                                tmp_path):
    from kgface.cache import Cache
    from kgface.evaluation.evaluator import TRAINED_ON_FILE, learned_digests

    cache = Cache(tmp_path / "cache")
    ev = fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    entry = __import__("pathlib").Path(ev.info["cache_entry"])
    (entry / TRAINED_ON_FILE).unlink()  # as an entry written before 2026-12-01
    assert Evaluator.load(entry).trained_on is None
    again = fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert again.trained_on == ev.trained_on == learned_digests(read_manifest(tiny_data / "manifest.csv")[0])
    again.save(tmp_path / "run" / "evaluator")  # what a train run keeps: checkable later
    assert Evaluator.load(tmp_path / "run" / "evaluator").trained_on == ev.trained_on


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


def _tiny_bert(bert):
    """A Hugging Face BERT's config and tokenizer files (no weights) in a local folder, as BiomedCLIP's text tower."""
    from transformers import BertConfig, BertTokenizer

    bert.mkdir()
    words = ["a", "acne", "face", "healthy", "of", "person", "photo", "stage", "with"]  # the rest read as [UNK]
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(str(bert))
    BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(str(bert))
    return bert


def test_an_openclip_config_file_with_a_local_hugging_face_text_tower(tiny_data, tiny_profiles, session_cache_dir,
                                                                      tmp_path, monkeypatch):
    """BiomedCLIP's layout at a tiny size: an open_clip config JSON whose text tower and tokenizer are a Hugging Face
    BERT saved in a local folder (named relative to the JSON), weights in a local file; nothing is downloaded. A hub
    id instead of a folder is a one-line error; an edited config file is another cache entry."""
    import json

    from safetensors.torch import save_file

    from kgface.cache import Cache
    from kgface.config import compose
    from kgface.evaluation.clip_model import register_config_file

    bert = _tiny_bert(tmp_path / "bert")
    folder = tmp_path / "clip"
    folder.mkdir()
    model_cfg = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                 "head_width": 16},
                 "text_cfg": {"hf_model_name": "../bert", "hf_tokenizer_name": "../bert", "hf_proj_type": "linear",
                              "hf_pooler_type": "cls_pooler", "context_length": 16}}
    config = folder / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    model = build_clip({"name": "openclip", "model": str(config)}, load_pretrained=False)[0]
    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    cfg = compose("evaluate", ["evaluator=openclip", f"evaluator.model={config}", f"evaluator.pretrained={weights}"])
    cache = Cache(session_cache_dir)
    # the config file and its text model's files are read (and hashed) once per fit or load, not once per use
    from kgface.evaluation import clip_model

    reads = []

    def counted(model):
        reads.append(model)
        return register_config_file(model)

    with monkeypatch.context() as mp:  # (not undo(): the autouse cache-folder patch shares this monkeypatch)
        mp.setattr(clip_model, "register_config_file", counted)  # every caller reaches it through clip_model
        ev = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
        assert ev.encoder.num_features == 24 and reads == [str(config)]
        cached = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
        assert "cache_entry" not in cached.info and reads == [str(config)] * 2  # the second one: from the cache
    # a name this process never registered is not trusted: the file is read
    assert build_clip({"name": "openclip", "model": str(config)}, load_pretrained=False,
                      registered="kgface-openclip-never")[0].kgface_embed_dim == 24
    saved = ev.save(tmp_path / "ev")
    loaded = Evaluator.load(saved)
    images = load_images(list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:4]))
    assert np.allclose(loaded.features(images), ev.features(images))
    # another config under the same path (an unrelated key added), or another vocabulary, is another model as far
    # as the heads know: a new cache entry, and the saved evaluator refuses to load
    config.write_text(json.dumps({"model_cfg": {**model_cfg, "quick_gelu": False}}))
    other = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert other.info["cache_entry"] != ev.info.get("cache_entry", "")
    with pytest.raises(EvaluatorInputError, match="not the config its heads were fitted on"):
        Evaluator.load(saved)
    config.write_text(json.dumps({"model_cfg": model_cfg}))
    Evaluator.load(saved)  # the same config again
    (bert / "vocab.txt").write_text((bert / "vocab.txt").read_text().replace("\nface\n", "\nfaces\n"))
    with pytest.raises(EvaluatorInputError, match="not the config its heads were fitted on"):
        Evaluator.load(saved)
    # what kgface cannot honour is refused: another normalisation, a timm tower fetched from the hub
    config.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    with pytest.raises(UserError, match=r"preprocess_cfg.mean=\[0.5, 0.5, 0.5\] is not CLIP's"):
        register_config_file(str(config))
    config.write_text(json.dumps({**model_cfg, "vision_cfg": {"timm_model_name": "hf-hub:timm/x", "image_size": 32}}))
    with pytest.raises(UserError, match="timm_model_name=hf-hub:timm/x is fetched"):
        register_config_file(str(config))
    # a hub id would be downloaded by open_clip: refused, naming the key to rewrite
    hub = tmp_path / "hub.json"
    hub.write_text(json.dumps({**model_cfg, "text_cfg": {**model_cfg["text_cfg"],
                                                         "hf_model_name": "microsoft/BiomedNLP-BiomedBERT"}}))
    with pytest.raises(UserError, match=r"text_cfg.hf_model_name=microsoft/BiomedNLP-BiomedBERT is not a local folder"):
        build_clip({"name": "openclip", "model": str(hub), "pretrained": str(weights)})


def test_an_openclip_config_file_with_a_timm_image_tower(tiny_data, tiny_profiles, session_cache_dir, tmp_path):
    """BiomedCLIP's image tower is timm's (vit_base_patch16_224, timm's own token pooling, a linear projection): the
    same config with timm's 0.3M-parameter test_vit beside the local BERT. Built without CLIP weights, neither tower
    looks for base weights (the BERT folder holds none; the config asks for timm's ImageNet weights, which open_clip
    2.x would download); with them, it fits, saves and reloads. test_vit takes any image size (timm builds it with
    dynamic_img_size), so the size itself is not checked here."""
    import json

    import open_clip
    import timm

    from kgface.evaluation.clip_model import register_config_file

    if "test_vit" not in timm.list_models("test_vit"):
        pytest.skip("timm too old for its test_vit (timm >= 1.0)")

    from safetensors.torch import save_file

    from kgface.cache import Cache
    from kgface.config import compose

    _tiny_bert(tmp_path / "bert")
    config = tmp_path / "open_clip_config.json"
    config.write_text(json.dumps({"model_cfg": {
        "embed_dim": 24,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": True, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 160},
        "text_cfg": {"hf_model_name": "bert", "hf_tokenizer_name": "bert", "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}}}))
    registered = open_clip.get_model_config(register_config_file(str(config)))
    assert registered["vision_cfg"]["timm_model_pretrained"] is False
    model, tokenizer, image_size = build_clip({"name": "openclip", "model": str(config)}, load_pretrained=False)
    assert image_size == 160 and model.kgface_embed_dim == 24
    assert type(model.visual).__name__ == "TimmModel" and type(model.text).__name__ == "HFTextEncoder"
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    cfg = compose("evaluate", ["evaluator=openclip", f"evaluator.model={config}", f"evaluator.pretrained={weights}"])
    ev = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, Cache(session_cache_dir),
                       progress=False)
    images = load_images(list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:4]))
    features = ev.features(images)
    assert features.shape == (4, 24) and np.isfinite(features).all() and features.std(0).max() > 0
    assert np.allclose(Evaluator.load(ev.save(tmp_path / "ev")).features(images), features)


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
    gen_path = _generated_manifest(tiny_data, tmp_path)
    gen = pd.read_csv(gen_path, dtype=str, keep_default_na=False).drop(columns=["heldout"])
    write_manifest(gen.to_dict("records"), gen_path)
    cfg = compose("evaluate", [f"run={run_dir}", f"real={real_path}", f"generated={gen_path}",
                               "progress=false", "face_identity=none"])
    m = evaluate_run(cfg, tmp_path / "out")
    held = int(((real["split"] == "test") & (real["disease"] == "ORPHA:963")
                & real["stage"].astype(int).isin([2, 3])).sum())
    assert held > 0 and m["tstr_n_real_seen"] == m["tstr_n_real"] - held
    assert m["generation"]["heldout_top1"] is not None
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


def test_phenotype_auroc_leaves_unlabelled_photos_out():
    """A stage-3 photo whose phenotypes are {} is not a negative of every phenotype: the head that reads it
    (high score) is not marked down for it."""
    from types import SimpleNamespace

    from kgface.evaluation.sets import phenotype_auroc

    rows = pd.DataFrame({
        "stage": [3, 3, 0, 0, 3, 3], "disease": ["D", "D", "healthy", "healthy", "D", "D"],
        "source": ["phantom", "phantom", "phantom", "phantom", "acne04", "acne04"],
        "phenotypes": [{"HP:1": 1.0}, {"HP:1": 1.0}, {}, {}, {}, {}],
        "ph_HP:1": [0.9, 0.8, 0.1, 0.2, 0.95, 0.85]})
    assert phenotype_auroc(SimpleNamespace(phenotypes=["HP:1"]), rows) == {"HP:1": 1.0}


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
    gen_path = _generated_manifest(tiny_data, tmp_path)
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
    assert f"all {len(used)} learned phenotypes have no labelled stage-3 test face showing them: their heads' hit " \
           "rate (tpr) is taken as 1" in (tmp_path / "out" / "report.md").read_text()
    assert all(e["tpr"] == 1 for v in learned.values() for e in v["phenotypes"])
    # a folder that is not one of OUT's baselines does not borrow OUT's evaluator
    (run_dir / "samples").mkdir()
    with pytest.raises(EvaluatorInputError, match="no evaluator.json there"):
        load_evaluator(run_dir / "samples")


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
    gen = _edits_of(tiny_data, test, tmp_path / "prog", ["progression"] * len(test))
    m = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, None)
    assert m["fid_kid_n"]["generated"] == 0 and "left out" in m["fid_kid_n"]["edits_of_real_faces"]
    assert "kid_clip" not in m and "transform" not in m
    assert m["progression_edits"]["n"] == 6
    assert m["progression_edits"]["identity_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert m["generation"]["top1_all"] is not None
    assert "tstr_n_generated" not in m  # edits of real faces do not train the synthetic probe
