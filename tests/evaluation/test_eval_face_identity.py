"""dlib's identity instrument (the [dlib] extra, part of [dev]) on real phantom faces and through evaluate_sets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kgface.config import compose
from kgface.errors import UserError
from kgface.evaluation import face_identity as F
from kgface.evaluation.inputs import EvaluatorInputError, load_images


def test_modes_resolve_and_a_bad_value_names_the_key(monkeypatch):
    assert F.available(), "the [dlib] extra is part of [dev]: pip install -e '.[dev]'"
    assert F.resolve("auto") == "dlib" and F.resolve("DLIB") == "dlib"
    assert F.resolve("none") == "none" and F.resolve(None) == "none" and F.resolve(False) == "none"
    with pytest.raises(UserError, match=r"face_identity='sometimes': use one of auto, dlib, none"):
        F.resolve("sometimes")
    monkeypatch.setattr(F, "available", lambda: False)  # a machine without the extra
    assert F.resolve("auto") == "none" and F.load_face_identity("auto") is None
    with pytest.raises(UserError, match=r'face_identity=dlib: .*pip install -e "\.\[dlib\]"'):
        F.resolve("dlib")


@pytest.fixture(scope="module")
def dlib_identity():
    return F.load_face_identity("dlib")


@pytest.fixture(scope="module")
def split_faces(tiny_data):
    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    test = df[df["split"] == "test"].reset_index(drop=True)
    return load_images([str(tiny_data / p) for p in test["path"]]), list(test["identity"])


def test_embeddings_tell_the_same_phantom_from_another(dlib_identity, split_faces, tiny_evaluator):
    from kgface.evaluation.metrics import identity_auroc

    images, ids = split_faces
    feats, found = dlib_identity.embed(images[:3])
    assert feats.shape == (3, 128) and found.dtype == bool
    clip = tiny_evaluator.features(images)
    v = F.identity_validity(dlib_identity, images, ids, clip_features=clip)
    assert v["n"] == len(ids) and v["face_found"] > 0
    assert v["face_found"] == pytest.approx(dlib_identity.embed(images)[1].mean(), abs=1e-4)
    # one person at four stages vs two people: measured 0.85-0.89 on the 64-px default panel
    assert v["same_mean_distance"] < v["different_mean_distance"] and v["auroc"] > 0.6
    assert v["clip_auroc"] == identity_auroc(clip, ids)  # uncapped: the evaluator's cosine on the same pairs
    assert "clip_auroc" not in F.identity_validity(dlib_identity, images[:8], ids[:8])
    # capped: the CLIP cosine is read on the kept faces' pairs, the same ones dlib reads
    keep = F.cap_by_identity(ids, 12)
    kept = [ids[i] for i in keep]
    capped = F.identity_validity(dlib_identity, images, ids, max_images=12, clip_features=clip)
    assert capped["n"] == len(keep) <= 12 and len(set(kept)) >= 2
    assert capped["clip_auroc"] == pytest.approx(identity_auroc(clip[keep], kept), abs=1e-12)


def test_the_cap_keeps_whole_identities_and_never_exceeds_its_size():
    ids = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 4
    for cap in range(2, 14):
        keep = F.cap_by_identity(ids, cap, seed=cap)
        kept = [ids[i] for i in keep]
        assert 0 < len(keep) <= cap and list(keep) == sorted(set(keep.tolist()))
        assert all(kept.count(u) == ids.count(u) for u in set(kept)), (cap, kept)  # no identity cut in two
    assert len(F.cap_by_identity(ids, 20)) == len(ids)
    keep = F.cap_by_identity(["a"] * 5 + ["b"] * 5, 3)  # no identity fits: a random 3 faces, not all 5 of one
    assert len(keep) == 3


def test_a_damaged_install_is_an_error_under_dlib_and_a_warning_under_auto(monkeypatch, tmp_path, caplog):
    for name in F.MODEL_FILES:
        (tmp_path / name).write_bytes(b"not a dlib model")
    monkeypatch.setattr(F, "_package_models", lambda: tmp_path)
    monkeypatch.setattr(F, "_loaded", {})
    assert F.available()  # the files are there; whether they load is only known by loading them
    from kgface.run_checks import preflight
    from tests.test_train_smoke import MICRO

    with pytest.raises(UserError, match=r"face_identity: dlib's models did not load .*face_identity=auto\|none"):
        preflight(compose("train", MICRO + ["evaluate=true", "face_identity=dlib"]))  # before any data is built
    with caplog.at_level("WARNING"):
        assert F.load_face_identity("auto") is None
        assert F.load_face_identity("auto") is None
    assert caplog.text.count("did not load") == 0  # the failed load is remembered: preflight said it once
    monkeypatch.setattr(F, "_loaded", {})
    with caplog.at_level("WARNING"):
        assert F.load_face_identity("auto") is None and F.load_face_identity("auto") is None
    assert caplog.text.count("did not load") == 1
    with pytest.raises(UserError, match=r"did not load"):
        F.load_face_identity("dlib")
    (tmp_path / F.MODEL_FILES[0]).unlink()
    assert not F.available() and F.resolve("auto") == "none"


def test_pair_distances_are_zero_for_copies_and_not_for_other_people(dlib_identity, split_faces):
    images, ids = split_faces
    same = F.pair_distances(dlib_identity, images[:4], images[:4].clone())
    assert same["identity_distance_dlib"] == pytest.approx(0.0, abs=1e-6) and same["identity_same_person_dlib"] == 1
    assert same["identity_cosine_dlib"] == pytest.approx(1.0, abs=1e-6)
    found = dlib_identity.embed(images[:4])[1]
    # dlib's detector finds these phantoms (so the aligned path is the one read), and copies align identically
    assert found.any() and same["identity_dlib_both_found_n"] == int(found.sum())
    assert same["identity_distance_dlib_both_found"] == pytest.approx(0.0, abs=1e-6)
    noise = torch.from_numpy(np.random.default_rng(1).integers(0, 255, images[:2].shape, dtype=np.uint8))
    mixed = F.pair_distances(dlib_identity, noise, noise.clone())  # no face on either side: no aligned pair
    assert mixed["identity_dlib_both_found_n"] == 0 and np.isnan(mixed["identity_distance_dlib_both_found"])
    other = [i for i, x in enumerate(ids) if x != ids[0]][:4]
    diff = F.pair_distances(dlib_identity, images[:1].expand(len(other), -1, -1, -1), images[other])
    assert diff["identity_distance_dlib"] > 0.05
    # the cosine is computed from the embeddings themselves, pair by pair
    fa, fb = dlib_identity.embed(images[:1].expand(len(other), -1, -1, -1))[0], dlib_identity.embed(images[other])[0]
    want = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(fa, fb)])
    assert diff["identity_cosine_dlib"] == pytest.approx(want, abs=1e-6) and diff["identity_cosine_dlib"] < 1 - 1e-4


def test_evaluate_sets_reports_dlib_identity_beside_the_clip_cosine(tiny_evaluator, tiny_data, tiny_profiles,
                                                                    tmp_path, dlib_identity):
    from kgface.evaluation import evaluate_sets
    from tests.evaluation.conftest import generated_manifest

    gen = generated_manifest(tiny_data, tmp_path, n=6)  # its one transformation is a copy of its source
    m = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles, face_identity=dlib_identity)
    assert m["transform"]["identity_distance_dlib"] == pytest.approx(0.0, abs=1e-4)
    assert m["transform"]["identity_same_person_dlib"] == 1.0
    assert m["evaluator"]["identity_dlib"]["auroc"] > 0.6
    assert m["transform"]["identity_cosine_dlib"] == pytest.approx(1.0, abs=1e-5)
    v = m["evaluator"]["identity_dlib"]
    assert v["cosine_auroc"] > 0.6 and v["same_mean_cosine"] > v["different_mean_cosine"]
    # the train job's later conditionings: transformations only, the real pairs are not read again
    later = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles, face_identity=dlib_identity,
                          identity_pairs=False)
    assert "identity_dlib" not in later["evaluator"] and later["transform"]["identity_distance_dlib"] == 0
    without = evaluate_sets(tiny_evaluator, tiny_data / "manifest.csv", gen, tiny_profiles)
    assert "identity_distance_dlib" not in without["transform"] and "identity_dlib" not in without["evaluator"]
    assert without["transform"]["identity_similarity"] == m["transform"]["identity_similarity"]


def test_embed_reads_non_square_tiny_float_grey_and_rgba_images(dlib_identity, split_faces):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 255, (2, 3, 24, 40), dtype=np.uint8))
    feats, found = dlib_identity.embed(images)
    assert feats.shape == (2, 128) and np.isfinite(feats).all() and not found.any()  # noise holds no face
    faces = split_faces[0][:2]
    u8 = dlib_identity.embed(faces)[0]
    # float in [0, 1] (a VAE round trip) reads as the same faces, not as black frames
    assert np.allclose(dlib_identity.embed(faces.float() / 255)[0], u8, atol=1e-6)
    assert np.allclose(dlib_identity.embed(torch.cat([faces, torch.full_like(faces[:, :1], 255)], 1))[0], u8)
    grey = dlib_identity.embed(faces[:, :1])[0]
    # one channel reads as that grey face in all three, not as a black frame
    assert np.allclose(grey, dlib_identity.embed(faces[:, :1].expand(-1, 3, -1, -1))[0], atol=1e-6)
    assert not np.allclose(grey[0], grey[1]) and not np.allclose(grey, dlib_identity.embed(0 * faces)[0])
    for bad in (faces[0], faces[:, :2], faces.to(torch.int32)):
        with pytest.raises(EvaluatorInputError, match="face identity: images must be"):
            dlib_identity.embed(bad)
