"""kgface.evaluation.evaluator, .fitting, .inputs on a tiny phantom panel: training, caching, save/load, scoring."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kgface.data.manifest import read_manifest, stage_known, write_manifest
from kgface.evaluation import Evaluator, EvaluatorInputError, fit_evaluator, instrument_validity, load_images
from kgface.evaluation.inputs import image_caption
from kgface.prompts.wording import stage_levels
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
    # which diseases the generator holds out (the heldout column) is not what the evaluator learns: the same entry
    first = sorted(set(df["disease"]) - {"healthy"})[0]
    other = tiny_data / "manifest_heldout.csv"
    df.assign(heldout=["true" if d == first else "false" for d in df["disease"]]).to_csv(other, index=False)
    try:
        same = fit_evaluator(tiny_cfg.evaluator, other, tiny_profiles, cache, progress=False)
    finally:
        other.unlink()
    assert "cache_entry" not in same.info and cache.used[-1]["path"] == entry


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
    key = [u for u in cache.used if u["kind"] == "evaluator"][-1]["path"]  # not its CLIP's entry, used after it
    rel = read_manifest(copy / "manifest.csv")[0]["path"].iloc[0]
    img = Image.open(copy / rel).convert("RGB")
    Image.new("RGB", img.size, (255, 0, 0)).save(copy / rel)  # the same name, other pixels
    again = fit_evaluator(tiny_cfg.evaluator, copy / "manifest.csv", tiny_profiles, cache, progress=False)
    # the first fit's entry (trained now, which names it, or by an earlier test)
    assert first.info.get("cache_entry", str(key)) == str(key) and Path(key).is_dir()
    assert "cache_entry" in again.info and again.info["cache_entry"] != str(key)


def test_captions_name_disease_stage_and_phenotypes(tiny_profiles):
    acne = next(p for p in tiny_profiles if p.disease_id == "MONDO:0011438")
    ph = acne.phenotypes[0]
    text = image_caption(acne, 2, {ph.hpo_id: 0.3}, True)
    assert acne.name in text and "stage" in text and (ph.visual or ph.name).strip().rstrip(".")[:20] in text
    # the stage is named, not a fixed word: another stage, or none known, is another caption
    others = {image_caption(acne, s, {ph.hpo_id: 0.3}, True) for s in (1, 3, None)}
    assert len(others) == 3 and text not in others
    assert "stage" not in image_caption(acne, None, {ph.hpo_id: 0.3}, True)
    # a labelled face that drew nothing (a phantom's {}) names no phenotype; an unlabelled photo the template's
    bare = f"a photo of a face with {acne.name}, {stage_levels(acne.disease_id)[2].name} stage"
    assert image_caption(acne, 2, {}, True) == bare
    assert image_caption(acne, 2, {}, False).startswith(image_caption(acne, 2, {}, True) + ", showing ")
    assert image_caption(acne, 2, {ph.hpo_id: 0.0}, True) == image_caption(acne, 2, {}, True)


def test_photos_without_phenotype_labels_teach_the_heads_nothing(tiny_cfg, tiny_data, tiny_profiles, tiny_evaluator):
    """A diseased photo's `{}` means "not labelled" (docs/data.md): with the same CLIP, the phenotype heads fitted on
    a manifest where half the diseased train faces are such photos equal heads fitted on the labelled rows alone
    (they were trained as negatives of every phenotype before); phantom renders, healthy faces and labelled photos
    count as labelled."""
    from omegaconf import OmegaConf

    from kgface.evaluation.fitting import train_evaluator
    from kgface.evaluation.inputs import labelled_phenotypes, presence_matrix
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


def test_the_probe_ignores_rows_below_min_stage(tiny_cfg, tiny_data, tiny_profiles, tiny_evaluator):
    """With the same CLIP, relabelling the train and val faces below probe.min_stage leaves the probe and its
    temperature unchanged; with min_stage 0 they move."""
    from omegaconf import OmegaConf

    from kgface.evaluation.fitting import train_evaluator

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


def test_without_val_rows_the_probe_is_left_uncalibrated_and_says_so(tiny_cfg, tiny_data, tiny_profiles,
                                                                     tiny_evaluator, caplog):
    """No val rows the probe could learn from: no temperature (the raw softmax), a warning, and the validity keys
    read calibration_temperature None while real_ece is still measured."""
    from omegaconf import OmegaConf

    from kgface.evaluation.fitting import train_evaluator

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    df = read_manifest(tiny_data / "manifest.csv")[0]
    clip = ({k: v.clone() for k, v in tiny_evaluator.model.state_dict().items()}, tiny_evaluator.info["clip"])
    ev = train_evaluator(cfg, df[df["split"] != "val"], tiny_profiles, progress=False, clip=clip)
    assert "temperature" not in ev.info and ev.probe.temperature == 1.0
    assert "not calibrated" in caplog.text
    v = instrument_validity(ev, df)
    assert v["calibration_temperature"] is None and 0 <= v["real_ece"] <= 1


def test_pair_presence_reads_one_disease_against_health_alone():
    from kgface.evaluation.evaluator import pair_presence

    classes = ["healthy", "D:1", "D:2"]
    zs = torch.eye(3)  # the three prompt embeddings, orthogonal
    feats = np.array([[0.0, 1.0, 0.0],   # at D:1's prompts
                      [1.0, 0.0, 0.0],   # at the healthy prompts
                      [0.0, 0.6, 0.8]])  # between the two diseases
    p = pair_presence(feats, zs, classes)
    assert p.shape == (3, 3) and np.allclose(p[:, 0], 0.5)  # health against itself
    assert p[0, 1] == pytest.approx(1.0) and p[1, 1] < 1e-6 and p[1, 2] < 1e-6
    # a face at D:1's prompts is no nearer D:2's than the healthy ones: even odds for D:2, where one softmax over
    # every class (zs_presence = 1 - P(healthy)) reads it as ~1 present
    assert p[0, 2] == pytest.approx(0.5)
    assert p[2, 1] == pytest.approx(1.0) and p[2, 2] == pytest.approx(1.0)
    assert p[2, 1] == pytest.approx(torch.sigmoid(torch.tensor(100 * 0.6)).item())
    assert np.isnan(pair_presence(feats, zs[1:], classes[1:])).all()  # no healthy class: undefined
    # logit gaps of 20 and 30 stay apart: in float32 both rounded to exactly 1 and tied in an AUROC (float64 holds
    # them up to a gap of ~36)
    near = pair_presence(np.array([[0.0, 0.2, 0.3]]), zs, classes)[0]
    assert near.dtype == np.float64 and near[1] < near[2] < 1.0


def test_zero_shot_presence_keeps_far_faces_apart(tiny_evaluator):
    """zs_presence = 1 - P(healthy) over every class at CLIP's scale 100, in float64: two faces far on the diseased
    side read two values below 1, not a tie at exactly 1."""
    t = tiny_evaluator.zs_text.double()
    h = tiny_evaluator.classes.index("healthy")
    sick = [k for k in range(len(t)) if k != h][0]
    away = torch.nn.functional.normalize(t[sick] - t[h], dim=0)  # further from health than the disease's prompts
    feats = torch.nn.functional.normalize(torch.stack([t[sick], t[sick] + 0.5 * away]), dim=1).float().numpy()
    zs = tiny_evaluator.predict(feats)["zs_presence"].to_numpy()
    assert zs.dtype == np.float64 and (zs < 1.0).all() and zs[0] != zs[1]


def test_blur_images_spreads_a_point_and_keeps_the_image():
    from kgface.evaluation.inputs import blur_images

    point = torch.zeros(2, 3, 15, 15, dtype=torch.uint8)
    point[:, :, 7, 7] = 255
    soft = blur_images(point, 1.0)
    assert soft.dtype == torch.uint8 and soft.shape == point.shape
    assert 0 < soft[0, 0, 7, 7] < 255 and soft[0, 0, 7, 8] == soft[0, 0, 8, 7] == soft[0, 0, 6, 7] > 0  # symmetric
    assert abs(int(soft[0, 0].sum()) - 255) <= 30  # the light is spread, not lost (up to uint8 rounding)
    assert torch.equal(soft[0], soft[1])
    with pytest.raises(EvaluatorInputError, match="evaluator.probe.blur"):
        blur_images(point, 0.0)


def test_probe_blur_adds_blurred_copies_of_each_face_to_every_head(tiny_cfg, tiny_data, tiny_profiles,
                                                                   tiny_evaluator):
    """evaluator.probe.blur=[s]: the disease probe and the stage head are exactly the heads fitted on the train
    faces' features followed by those of the same faces blurred by s (labels repeated)."""
    from omegaconf import OmegaConf

    from kgface.evaluation.fitting import train_evaluator
    from kgface.evaluation.inputs import blur_images, probe_rows
    from kgface.evaluation.probes import CoralHead, LinearProbe

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    df = read_manifest(tiny_data / "manifest.csv")[0]
    clip = ({k: v.clone() for k, v in tiny_evaluator.model.state_dict().items()}, tiny_evaluator.info["clip"])
    plain = train_evaluator(cfg, df, tiny_profiles, progress=False, clip=clip)
    soft = train_evaluator({**cfg, "probe": {**cfg["probe"], "blur": [1.0]}}, df, tiny_profiles, progress=False,
                           clip=clip)
    assert soft.info["blur_sigmas"] == [1.0] and plain.info["blur_sigmas"] == []
    train = df[df["split"] == "train"].reset_index(drop=True)
    images = load_images(list(train["abspath"]))
    x, xb = (soft.scale(soft.features(im)) for im in (images, blur_images(images, 1.0)))
    rows = torch.from_numpy(probe_rows(train, cfg["probe"]).to_numpy().copy())
    labels = [soft.classes.index(d) for d in train["disease"][rows.numpy()]] * 2
    probe = LinearProbe.fit(torch.cat([x[rows], xb[rows]]), labels, len(soft.classes), l2=cfg["probe"]["l2"])
    assert torch.allclose(probe.weight, soft.probe.weight, atol=1e-5)
    assert not torch.allclose(plain.probe.weight, soft.probe.weight, atol=1e-3)  # the copies changed the fit
    known = torch.from_numpy(stage_known(train).copy())
    coral = CoralHead.fit(torch.cat([x[known], xb[known]]), np.tile(train["stage"].to_numpy()[known.numpy()], 2),
                          l2=cfg["probe"]["l2"])
    assert torch.allclose(coral.weight, soft.coral.weight, atol=1e-5)
    # the phenotype heads (every labelled train face here, no atlas): the same presence labels twice
    from kgface.evaluation.inputs import labelled_phenotypes, presence_matrix
    from kgface.evaluation.probes import PhenotypeHeads

    lab = torch.from_numpy(labelled_phenotypes(train).copy())
    ph = [p for p, k in zip(train["phenotypes"], lab.tolist()) if k] * 2
    heads = PhenotypeHeads.fit(torch.cat([x[lab], xb[lab]]), presence_matrix(ph, soft.phenotypes),
                               l2=cfg["probe"]["l2"])
    assert soft.phenotypes == plain.phenotypes and torch.allclose(heads.weight, soft.heads.weight, atol=1e-5)


def test_a_bad_probe_blur_fails_before_the_clip_trains(tiny_cfg, tiny_data, tiny_profiles, monkeypatch):
    from omegaconf import OmegaConf

    from kgface.evaluation import fitting as fitting_module
    from kgface.evaluation.inputs import blur_sigmas

    assert blur_sigmas({"blur": [0.5, 1]}) == [0.5, 1.0] and blur_sigmas({}) == [] and blur_sigmas(None) == []

    def no_training(*args, **kwargs):
        raise AssertionError("the CLIP trained before the setting was checked")

    monkeypatch.setattr(fitting_module, "train_clip", no_training)
    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    df = read_manifest(tiny_data / "manifest.csv")[0]
    for bad, says in ((1.0, "a list of Gaussian sigmas"), ([0.0], "must be > 0"), (["soft"], "must be a number"),
                      ([40.0], "too wide")):
        with pytest.raises(EvaluatorInputError, match=says):
            fitting_module.train_evaluator({**cfg, "probe": {**cfg["probe"], "blur": bad}}, df, tiny_profiles,
                                           progress=False)
    for key, bad, says in (("probe", {**cfg["probe"], "l2": "1e-2x"}, "evaluator.probe.l2=1e-2x: not a number"),
                           ("probe", {**cfg["probe"], "l2": -1}, r"evaluator.probe.l2=-1: an L2 weight >= 0"),
                           ("phenotype_threshold", True, "evaluator.phenotype_threshold=True: not a number"),
                           ("phenotype_threshold", 0, r"evaluator.phenotype_threshold=0: a head probability in")):
        with pytest.raises((UserError, EvaluatorInputError), match=says):  # read after the CLIP trained, or never
            fitting_module.train_evaluator({**cfg, key: bad}, df, tiny_profiles, progress=False)
    # evaluator.train.blur_share / blur_sigma (the CLIP's own augmentation) too
    for bad, says in (({"blur_share": 2}, "must be a share"), ({"blur_share": 0.5, "blur_sigma": 9}, "too wide")):
        with pytest.raises(UserError, match=says):
            fitting_module.train_evaluator({**cfg, "train": {**cfg["train"], **bad}}, df, tiny_profiles,
                                           progress=False)
    # no graded train image: the data alone says the stage head has nothing to learn (it said so after the CLIP)
    ungraded = df.assign(stage_known="False")
    with pytest.raises(EvaluatorInputError, match="no train image has a known stage"):
        fitting_module.train_evaluator(cfg, ungraded, tiny_profiles, progress=False)


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
    from kgface.evaluation import fitting as fitting_module

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    cache = Cache(tmp_path / "cache")
    first = fit_evaluator(cfg, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    clip_dir = next((tmp_path / "cache" / "evaluator-clip").iterdir())  # the CLIP's own entry
    assert {"clip.safetensors", "clip.json"} <= {p.name for p in clip_dir.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("the CLIP was trained again")

    monkeypatch.setattr(fitting_module, "train_clip", no_training)
    # probe.blur=[] is the evaluator fitted before the key existed: the same entry
    assert cfg["probe"]["blur"] == []
    fit_evaluator({**cfg, "probe": {k: v for k, v in cfg["probe"].items() if k != "blur"}},
                  tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert len({u["path"] for u in cache.used if u["kind"] == "evaluator"}) == 1
    refit = fit_evaluator({**cfg, "probe": {**cfg["probe"], "l2": 0.1}, "phenotype_threshold": 0.6},
                          tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert refit.info["clip"] == first.info["clip"] and refit.cfg["probe"]["l2"] == 0.1
    a, b = first.model.state_dict(), refit.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first.probe.weight, refit.probe.weight)  # the heads were refitted with the new L2
    assert len({u["path"] for u in cache.used if u["kind"] == "evaluator"}) == 2
    # zero-shot heads (their prompts are in the evaluator's key, not the CLIP's): the same CLIP, a new entry
    zs = fit_evaluator({**cfg, "phenotype_heads": "zero_shot"}, tiny_data / "manifest.csv", tiny_profiles, cache,
                       progress=False)
    assert zs.info["clip"] == first.info["clip"] and zs.phenotypes != first.phenotypes
    assert len({u["path"] for u in cache.used if u["kind"] == "evaluator"}) == 3
    with pytest.raises(AssertionError, match="trained again"):
        fit_evaluator({**cfg, "train": {**cfg["train"], "steps": 13}}, tiny_data / "manifest.csv", tiny_profiles,
                      cache, progress=False)
    # train.blur_share=0 is the CLIP trained before the key existed (both entries reused); > 0 is another CLIP
    assert cfg["train"]["blur_share"] == 0.0
    fit_evaluator({**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in ("blur_share", "blur_sigma")}},
                  tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert [u["path"] for u in cache.used if u["kind"] == "evaluator"][-1] == first.info["cache_entry"]
    fit_evaluator({**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in ("blur_share", "blur_sigma")},
                   "probe": {**cfg["probe"], "l2": 0.2}},  # a new evaluator entry: the heads refit on the same CLIP
                  tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    with pytest.raises(AssertionError, match="trained again"):
        fit_evaluator({**cfg, "train": {**cfg["train"], "blur_share": 0.5}}, tiny_data / "manifest.csv",
                      tiny_profiles, cache, progress=False)


def test_a_damaged_evaluator_json_is_a_clear_error(tiny_evaluator, tmp_path):
    folder = tiny_evaluator.save(tmp_path / "ev")
    (folder / "evaluator.json").write_text('{"format": ', encoding="utf-8")
    with pytest.raises(EvaluatorInputError, match="evaluator.json: not valid JSON"):
        Evaluator.load(folder)
    # heads of one evaluator beside the names of another (files mixed from two folders): refused, not misnamed
    folder = tiny_evaluator.save(tmp_path / "ev2")
    meta = json.loads((folder / "evaluator.json").read_text())
    (folder / "evaluator.json").write_text(json.dumps({**meta, "phenotypes": meta["phenotypes"][:-1]}))
    with pytest.raises(EvaluatorInputError, match=rf"probes.safetensors: heads.bias holds {len(meta['phenotypes'])} "
                                                  rf"rows, evaluator.json names {len(meta['phenotypes']) - 1}"):
        Evaluator.load(folder)


def test_photos_of_unknown_stage_teach_no_stage_and_enter_no_stage_metric(tiny_cfg, tiny_data, tiny_profiles,
                                                                        tiny_evaluator, tmp_path, monkeypatch):
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
    import kgface.evaluation.fitting as fitting

    seen, real_train_clip = [], fitting.train_clip

    def recording(model, tokenizer, images, captions, *args, **kwargs):  # the CLIP's own captions, as trained on
        seen.extend(captions)
        return real_train_clip(model, tokenizer, images, captions, *args, **kwargs)

    monkeypatch.setattr(fitting, "train_clip", recording)
    ev = fit_evaluator(tiny_cfg.evaluator, copy / "manifest.csv", tiny_profiles, None, progress=False)
    train = df["split"] == "train"
    assert ev.info["stage_images"] == int((train & ~unknown).sum()) < int(train.sum())
    ungraded = (unknown & sick)[train].to_numpy()
    assert len(seen) == int(train.sum()) and ungraded.any() and (~ungraded & sick[train].to_numpy()).any()
    assert not any("stage" in c for c, u in zip(seen, ungraded) if u)  # no stage word for an ungraded photo
    assert all("stage" in c for c, u, s in zip(seen, ungraded, sick[train]) if s and not u)
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
    # a copy that lost a file, or holds half of one: one line naming it (safetensors' own error named neither)
    for name in ("clip.safetensors", "probes.safetensors"):
        broken = tmp_path / f"broken-{name}"
        __import__("shutil").copytree(folder, broken)
        (broken / name).write_bytes(before[name][:len(before[name]) // 2])
        with pytest.raises(EvaluatorInputError, match=rf"broken-{name}/{name}: cannot be read .*damaged"):
            Evaluator.load(broken)
    (broken / "probes.safetensors").unlink()
    with pytest.raises(EvaluatorInputError, match=r"probes\.safetensors: cannot be read"):
        Evaluator.load(broken)


def test_a_cache_entry_from_before_the_list_gets_it_from_the_data_its_key_names(tiny_cfg, tiny_data, tiny_profiles,
                                                                                tmp_path):
    from kgface.cache import Cache
    from kgface.evaluation.evaluator import TRAINED_ON_FILE
    from kgface.evaluation.inputs import learned_digests

    cache = Cache(tmp_path / "cache")
    ev = fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    entry = __import__("pathlib").Path(ev.info["cache_entry"])
    (entry / TRAINED_ON_FILE).unlink()  # as an entry written before 2026-12-01
    assert Evaluator.load(entry).trained_on is None
    again = fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert again.trained_on == ev.trained_on == learned_digests(read_manifest(tiny_data / "manifest.csv")[0])
    # the profiles in another order (kgface.evaluate without run= sorts them by id): the same entry, no refit
    plist = list(tiny_profiles.values()) if isinstance(tiny_profiles, dict) else list(tiny_profiles)
    reordered = fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", plist[::-1], cache, progress=False)
    assert "cache_entry" not in reordered.info and reordered.classes == ev.classes
    again.save(tmp_path / "run" / "evaluator")  # what a train run keeps: checkable later
    assert Evaluator.load(tmp_path / "run" / "evaluator").trained_on == ev.trained_on


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
    write(123)  # not the fit's own seed (0): a model built at random instead of read would not match the file
    first = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert len(first.info["pretrained_sha256"]) == 64
    from safetensors.torch import load_file

    on_disk = load_file(str(weights))  # the CLIP the heads read is the file's, tensor for tensor
    loaded = first.model.state_dict()
    assert set(on_disk) <= set(loaded) and all(torch.equal(loaded[k], v) for k, v in on_disk.items())
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
    # the same bytes moved elsewhere hit the entry (keyed by bytes) and build from the file named now: the entry's
    # saved path, gone, was opened ("file not found", a path nobody passed) or, holding other weights, read in silence
    moved = tmp_path / "elsewhere.safetensors"
    weights.rename(moved)
    hit = fit_evaluator(compose("evaluate", ["evaluator=openclip", f"evaluator.model={name}",
                                             f"evaluator.pretrained={moved}"]).evaluator,
                        tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert "cache_entry" not in hit.info and hit.cfg["pretrained"] == str(moved)
    assert Evaluator.load(hit.save(tmp_path / "ev2")).cfg["pretrained"] == str(moved)  # what a run folder keeps


def test_zero_shot_heads_score_every_profile_phenotype_without_labels(tiny_cfg, tiny_data, tiny_profiles,
                                                                     tiny_evaluator, tmp_path):
    """evaluator.phenotype_heads=zero_shot: on photos without a phenotype label (no fitted head possible), one head
    per visible phenotype of the classes' profiles, each the two-way softmax of the CLIP's logits for the
    phenotype's prompts against a healthy face's; saved and loaded like fitted heads."""
    from omegaconf import OmegaConf

    from kgface.evaluation.clip_model import encode_texts
    from kgface.evaluation.fitting import train_evaluator
    from kgface.prompts import healthy_prompts, phenotype_prompts

    cfg = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)
    df = read_manifest(tiny_data / "manifest.csv")[0]
    sick = df.index[df["disease"] != "healthy"]
    df.loc[sick, "source"] = "acne04"
    df.loc[sick, "phenotypes"] = [{} for _ in sick]
    clip = ({k: v.clone() for k, v in tiny_evaluator.model.state_dict().items()}, tiny_evaluator.info["clip"])
    fitted = train_evaluator(cfg, df, tiny_profiles, progress=False, clip=clip)
    assert fitted.phenotypes == []  # nothing labelled: no fitted head
    ev = train_evaluator({**cfg, "phenotype_heads": "zero_shot"}, df, tiny_profiles, progress=False, clip=clip)
    by_id = {p.disease_id: p for p in tiny_profiles}
    named = {ph.hpo_id: ph for d in ev.classes for ph in by_id[d].phenotypes}
    assert ev.phenotypes == sorted(named) and len(ev.phenotypes) > 3
    test = df[df["split"] == "test"].reset_index(drop=True).iloc[:12]
    f = torch.as_tensor(ev.features(load_images(list(test["abspath"]))))

    def ensemble(prompts):
        return torch.nn.functional.normalize(encode_texts(ev.model, ev.tokenizer, prompts).mean(0), dim=-1)

    s = min(float(ev.model.logit_scale.detach().exp()), 100.0)
    t0 = ensemble(healthy_prompts())
    want = np.stack([torch.softmax(s * torch.stack([f @ ensemble(phenotype_prompts(named[h])), f @ t0], 1), 1)[:, 0]
                     .numpy() for h in ev.phenotypes], 1)
    got = ev.predict(f.numpy())[[f"ph_{h}" for h in ev.phenotypes]].to_numpy()
    assert np.allclose(got, want, atol=1e-4) and want.std() > 1e-3
    loaded = Evaluator.load(ev.save(tmp_path / "zs"))
    assert loaded.cfg["phenotype_heads"] == "zero_shot"
    assert np.allclose(loaded.predict(f.numpy())[[f"ph_{h}" for h in ev.phenotypes]].to_numpy(), got, atol=1e-6)


def test_the_cache_key_reads_what_the_captions_and_prompts_say(tiny_profiles, monkeypatch):
    # a template rephrased or a stage renamed must refit the CLIP: its captions were the old sentences
    import kgface.prompts.wording as wording
    from kgface.evaluation.fitting import wording_digest

    profiles = list(tiny_profiles.values()) if isinstance(tiny_profiles, dict) else list(tiny_profiles)
    before = wording_digest(profiles)
    import copy

    assert wording_digest(copy.deepcopy(profiles)) == before  # of what the profiles say, not of these objects
    monkeypatch.setattr(wording, "HEALTHY_TEXT", "a face without any visible sign of disease")
    assert wording_digest(profiles) != before
    monkeypatch.undo()
    sick = next(p for p in profiles if not p.healthy)
    original = wording.stage_levels
    renamed = tuple(level.__class__(**{**level.__dict__, "name": level.name + "-ish"})
                    for level in original(sick.disease_id))
    monkeypatch.setattr(wording, "stage_levels", lambda d: renamed if d == sick.disease_id else original(d))
    assert wording_digest(profiles) != before


def test_the_probe_keeps_ungraded_photos_whatever_its_min_stage():
    """A photo without a grade carries the placeholder stage 2: probe.min_stage=3 dropped every one, in silence."""
    import pandas as pd

    from kgface.evaluation.inputs import probe_rows

    df = pd.DataFrame({"disease": ["healthy", "D", "D", "D"], "stage": [0, 2, 3, 2],
                       "stage_known": ["True", "True", "True", "False"]})
    assert probe_rows(df, {"min_stage": 3}).tolist() == [True, False, True, True]
    assert probe_rows(df.drop(columns=["stage_known"]), {"min_stage": 3}).tolist() == [True, False, True, False]


def test_load_images_fits_other_sizes_only_when_asked(tmp_path):
    """A picture shown beside another (a source photo, a nearest training face) is centre-cropped and resized to its
    size; a set to be scored still refuses a foreign size (nothing is resized behind the user's back)."""
    from PIL import Image

    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 200  # the centre square, bright; the side strips, black
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with pytest.raises(EvaluatorInputError, match=r"wide.png: image is 40x20, expected 10x10"):
        load_images([str(tmp_path / "wide.png")], size=10)
    fitted = load_images([str(tmp_path / "wide.png")], size=10, fit=True)
    assert fitted.shape == (1, 3, 10, 10) and int(fitted.min()) >= 190  # the side strips were cropped away
    assert load_images([str(tmp_path / "wide.png")], size=(10, 20), fit=True).shape[-2:] == (10, 20)  # aspect kept
