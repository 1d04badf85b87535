"""Real-dataset adapters on tiny fixtures in each dataset's on-disk layout, and the builder that preprocesses them."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from kgface.data.images import ImageError
from kgface.data.manifest import ManifestError, read_manifest, write_manifest
from kgface.data.phantom.acne import severity_from_count
from kgface.data.real import (ACNE_ID, acne04_manifest, build_real_dataset, celeba_manifest, class_folder_manifest,
                              folder_manifest, user_manifest)
from kgface.errors import UserError
from kgface.resources import conf_dir

SIZE = 16


def _face(seed: int, w: int = 24, h: int = 20) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def _truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    _face(99, 48, 48).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def _data_cfg(name: str, **overrides):
    cfg = OmegaConf.load(conf_dir() / "data" / f"{name}.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


# ---------------------------------------------------------------------------------------------------------- ACNE04

# (file, grade, lesion count) of fold 0; levle2_7 is graded 2 but counts 4 lesions (grade 0 by count)
TRAINVAL = [(f"levle{g}_{i}.jpg", g, n) for g, i, n in
            [(0, 1, 0), (0, 2, 3), (0, 3, 5), (1, 4, 6), (1, 5, 12), (1, 6, 20), (2, 7, 4), (2, 8, 35), (2, 9, 50),
             (3, 10, 51), (3, 11, 70), (3, 12, 120)]]
TEST = [(f"levle{g}_{i}.jpg", g, n) for g, i, n in [(0, 13, 2), (1, 14, 9), (2, 15, 30), (3, 16, 60)]]


def make_acne04(root: Path, flat: bool = False, extra_trainval: list[str] = (), extra_test: list[str] = ()) -> Path:
    """ACNE04's layout: JPEGImages/ and ImageSets/Main/NNEW_{trainval,test}_0.txt (flat: label files in the root)."""
    (root / "JPEGImages").mkdir(parents=True)
    labels = root if flat else root / "ImageSets" / "Main"
    labels.mkdir(parents=True, exist_ok=True)
    for i, (name, _, _) in enumerate(TRAINVAL + TEST):
        img = _face(i)
        if i == 1:
            img = img.convert("L")                    # a greyscale JPEG
        if i == 2:
            img = img.convert("CMYK")                 # a CMYK JPEG
        img.save(root / "JPEGImages" / name, quality=90)
    (labels / "NNEW_trainval_0.txt").write_text(
        "".join(f"{n}  {g}  {c}\n" for n, g, c in TRAINVAL) + "".join(f"{x}\n" for x in extra_trainval))
    (labels / "NNEW_test_0.txt").write_text(
        "".join(f"{n} {g} {c}\n" for n, g, c in TEST) + "\n" + "".join(f"{x}\n" for x in extra_test))
    return root


def test_acne04_labels_are_exact(tmp_path):
    df = acne04_manifest(make_acne04(tmp_path / "acne04"), fold=0, val_fraction=0.25, seed=0)
    assert len(df) == 16
    expected = {n: (g, c) for n, g, c in TRAINVAL + TEST}
    for row in df.to_dict("records"):
        name = Path(row["path"]).name
        assert row["path"] == f"JPEGImages/{name}"
        assert (row["stage"], row["lesion_count"]) == expected[name]
        grade, count = expected[name]  # a count in another grade's bin would contradict the stage: the grade's
        assert row["severity"] == pytest.approx(severity_from_count(count) if row["grade_matches_count"] else grade)
        assert grade - 0.5 <= row["severity"] < grade + 0.5
        assert row["disease"] == ACNE_ID == "MONDO:0011438"
        assert row["identity"] == name[:-4] and row["source"] == "acne04" and row["phenotypes"] == {}
    assert df.loc[df["path"].str.endswith("levle0_1.jpg"), "stage"].item() == 0   # grade 0 is mild acne, not healthy
    assert Counter(df["split"]) == {"train": 9, "val": 3, "test": 4}               # round(0.25 * 12) val from trainval
    assert set(df.loc[df["split"] == "test", "identity"]) == {n[:-4] for n, _, _ in TEST}
    flagged = df.loc[~df["grade_matches_count"], "identity"].tolist()
    assert flagged == ["levle2_7"]                                                 # kept as labelled, flagged


def test_acne04_val_split_is_deterministic_and_seeded(tmp_path):
    root = make_acne04(tmp_path / "acne04")
    a = acne04_manifest(root, val_fraction=0.25, seed=0)
    b = acne04_manifest(root, val_fraction=0.25, seed=0)
    c = acne04_manifest(root, val_fraction=0.25, seed=1)
    assert a["split"].tolist() == b["split"].tolist()
    assert set(a.loc[a["split"] == "val", "identity"]) != set(c.loc[c["split"] == "val", "identity"])
    assert Counter(acne04_manifest(root, val_fraction=0.0)["split"]) == {"train": 12, "test": 4}


def test_acne04_flat_classification_layout(tmp_path):
    df = acne04_manifest(make_acne04(tmp_path / "Classification", flat=True), val_fraction=0.25)
    assert len(df) == 16


def test_acne04_settings_errors(tmp_path):
    root = make_acne04(tmp_path / "acne04")
    for fold in (5, "a", 1.5, None):  # "a" was a ValueError traceback
        with pytest.raises(UserError, match=r"^data.fold=.*: ACNE04 folds are 0..4"):
            acne04_manifest(root, fold=fold)
    with pytest.raises(UserError, match="NNEW_trainval_1.txt not found"):
        acne04_manifest(root, fold=1)
    with pytest.raises(UserError, match="image folder Images/ not found"):
        acne04_manifest(root, images="Images")
    with pytest.raises(UserError, match="on_error must be one of raise, skip"):
        acne04_manifest(root, on_error="ignore")
    with pytest.raises(UserError, match="val_fraction must be in"):
        acne04_manifest(root, val_fraction=1.0)
    with pytest.raises(UserError, match="val_fraction must be a number in \\[0, 1\\), got 'x'"):
        acne04_manifest(root, val_fraction="x")  # it failed in float(), a traceback
    with pytest.raises(UserError, match="data.size='abc': a whole number of pixels"):
        build_real_dataset(_data_cfg("acne04", root=str(root)), tmp_path / "out", size="abc")
    label = root / "ImageSets" / "Main" / "NNEW_trainval_0.txt"
    label.write_bytes(label.read_bytes() + "levle0_99.jpg 0 0 # caf\xe9\n".encode("latin-1"))  # not UTF-8
    with pytest.raises(UserError, match=r"NNEW_trainval_0\.txt: not UTF-8 text \(byte \d+\); save the label file"):
        acne04_manifest(root)


BAD_ACNE_LINES = [
    ("levle0_1.jpg 0", "expected 'filename grade lesion_count'"),
    ("levle0_2.jpg 4 3", "grade 4 is outside 0..3"),
    ("levle0_2.jpg -1 3", "grade -1 is outside 0..3"),
    ("levle0_2.jpg 0 -3", "lesion count -3 is negative"),
    ("levle0_2.jpg mild 3", "must be integers"),
    ("levle0_2.jpg 0 2.5", "must be integers"),
    ("../secret.jpg 0 1", "escapes the image folder"),
    ("/etc/hosts 0 1", "escapes the image folder"),
    ("levle0_1.jpg 0 0", "duplicate image 'levle0_1.jpg'"),
    ("levle1_99.jpg 1 8", "image JPEGImages/levle1_99.jpg does not exist"),
]


@pytest.mark.parametrize("line,message", BAD_ACNE_LINES, ids=[m for _, m in BAD_ACNE_LINES])
def test_acne04_bad_line_raises_with_file_and_line(tmp_path, line, message):
    root = make_acne04(tmp_path / "acne04", extra_trainval=[line])
    with pytest.raises(ManifestError) as err:
        acne04_manifest(root)
    text = str(err.value)
    assert f"NNEW_trainval_0.txt:{len(TRAINVAL) + 1}: " in text and message in text and "on_error=skip" in text


def test_acne04_skip_mode_counts_every_bad_line(tmp_path):
    lines = [line for line, _ in BAD_ACNE_LINES]
    root = make_acne04(tmp_path / "acne04", extra_trainval=lines[:5], extra_test=lines[5:] + ["levle0_3.jpg 0 5"])
    skipped = []
    df = acne04_manifest(root, on_error="skip", skipped=skipped)
    assert len(df) == 16                                        # the good rows, labels untouched
    assert len(skipped) == len(BAD_ACNE_LINES) + 1              # + a trainval image listed again in test
    reasons = [s["reason"] for s in skipped]
    for _, message in BAD_ACNE_LINES:
        assert any(message in r for r in reasons), message
    assert any("duplicate image 'levle0_3.jpg' (first at" in r for r in reasons)
    assert skipped[0]["where"].endswith(f"NNEW_trainval_0.txt:{len(TRAINVAL) + 1}")
    assert skipped[-1]["where"].endswith(f"NNEW_test_0.txt:{len(TEST) + 2 + len(lines) - 5}")  # blank line counted


def test_build_acne04_from_its_config(tmp_path):
    root = make_acne04(tmp_path / "acne04")
    _truncated_jpeg(root / "JPEGImages" / TEST[0][0])               # a truncated JPEG
    (root / "JPEGImages" / TEST[1][0]).write_text("not a picture")  # a text file named .jpg
    cfg = _data_cfg("acne04", root=str(root), val_fraction=0.25, on_error="skip", size=SIZE)
    out = tmp_path / "out"
    result = build_real_dataset(cfg, out)
    df, report = read_manifest(out / "manifest.csv")
    assert result.rows == len(df) == 14 and not report.skipped
    skipped = pd.read_csv(out / "skipped.csv")
    assert len(skipped) == 2 and list(skipped.columns) == ["where", "path", "reason"]
    assert skipped["path"].tolist() == [f"JPEGImages/{TEST[0][0]}", f"JPEGImages/{TEST[1][0]}"]
    assert "truncated" in skipped["reason"][0] and "not an image file" in skipped["reason"][1]
    assert skipped["where"][0].endswith("NNEW_test_0.txt:1")
    for row in df.to_dict("records"):
        with Image.open(row["abspath"]) as img:
            assert img.size == (SIZE, SIZE) and img.mode == "RGB" and img.format == "PNG"
        assert row["path"] == "images/" + row["original"][:-4] + ".png"
    by_name = df.set_index("original")
    assert by_name.loc["JPEGImages/levle3_12.jpg", "lesion_count"] == 120
    assert by_name.loc["JPEGImages/levle3_12.jpg", "stage"] == 3
    assert by_name.loc["JPEGImages/levle3_12.jpg", "severity"] == 3.0          # capped with the count
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["rows"] == 14 and summary["skipped"] == 2 and summary["listed"] == 16
    assert summary["converted_to_rgb"] == {"CMYK": 1, "L": 1}
    assert summary["splits"] == {"train": 9, "val": 3, "test": 2}
    assert summary["upscaled"] == 0  # 20-px crops made 16 px


def test_crops_smaller_than_the_set_are_counted_and_said(tmp_path, caplog):
    # 24 x 20 photos made 32 px: every crop (20 px) is enlarged, softer than a set of larger photos (it was silent)
    root = make_acne04(tmp_path / "acne04")
    cfg = _data_cfg("acne04", root=str(root), val_fraction=0.25, size=32)
    with caplog.at_level(logging.WARNING):
        build_real_dataset(cfg, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["upscaled"] == 16
    assert "16 of 16 images' crops were smaller than data.size=32 (smallest 20 px) and were enlarged" in caplog.text


def test_acne04_one_stem_in_trainval_and_test_is_an_identity_leak(tmp_path):
    root = make_acne04(tmp_path / "acne04", extra_test=["levle0_1.png 0 2"])
    _face(50).save(root / "JPEGImages" / "levle0_1.png")        # same stem (identity) as a trainval image
    with pytest.raises(ManifestError, match=r"NNEW_test_0.txt:6: identity 'levle0_1' is in test here and in train "
                                            r"at .*NNEW_trainval_0.txt:1"):
        acne04_manifest(root)
    skipped = []
    df = acne04_manifest(root, on_error="skip", skipped=skipped)
    assert len(df) == 16 and [s["path"] for s in skipped] == ["JPEGImages/levle0_1.png"]


def test_rebuild_that_fails_leaves_the_old_build_whole(tmp_path):
    root, out = make_acne04(tmp_path / "acne04"), tmp_path / "out"
    build_real_dataset(_data_cfg("acne04", root=str(root), size=24), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"manifest.csv", "dataset.json", "skipped.csv"} <= {str(p) for p in before}
    _truncated_jpeg(root / "JPEGImages" / TEST[0][0])              # listed after every trainval image
    with pytest.raises(ImageError, match="unreadable or truncated"):
        build_real_dataset(_data_cfg("acne04", root=str(root), size=SIZE), out)
    # the build stopped after writing the 16-px trainval images: none of them replaced a 24-px one, and no staging
    # folder is left behind
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    read_manifest(out / "manifest.csv")


def test_a_build_called_from_python_keeps_a_users_own_images_folder(tmp_path):
    root, out = make_acne04(tmp_path / "acne04"), tmp_path / "proj"
    (out / "images").mkdir(parents=True)
    (out / "images" / "mine.png").write_bytes(b"not ours")  # no dataset.json beside it: no build wrote it
    with pytest.raises(UserError, match=r"holds images that no earlier run of the data set wrote"):
        build_real_dataset(_data_cfg("acne04", root=str(root), size=SIZE), out)
    assert (out / "images" / "mine.png").read_bytes() == b"not ours"


def test_rebuild_replaces_hard_linked_images_instead_of_writing_through(tmp_path):
    root, out = make_acne04(tmp_path / "acne04"), tmp_path / "out"
    build_real_dataset(_data_cfg("acne04", root=str(root), size=24), out)
    image = out / "images" / "JPEGImages" / f"{TRAINVAL[0][0][:-4]}.png"
    cached = tmp_path / "cache-copy.png"                           # what materialise links into OUT from the cache
    image.replace(cached)
    os.link(cached, image)
    before = cached.read_bytes()
    build_real_dataset(_data_cfg("acne04", root=str(root), size=SIZE), out)
    assert cached.read_bytes() == before                          # the cache's file is untouched
    with Image.open(image) as img:
        assert img.size == (SIZE, SIZE)
    assert not list(out.rglob("*.tmp"))


def test_materialise_removes_the_old_manifest_before_touching_images(tmp_path):
    from kgface.data.build import materialise

    out = tmp_path / "out"
    write_manifest([{"path": "images/a.png", "disease": "healthy", "stage": 0, "split": "train"}],
                   out / "manifest.csv")
    (out / "images").mkdir()
    _face(0).save(out / "images" / "a.png")
    src = tmp_path / "entry"
    src.mkdir()                                                   # an entry without images/: the copy fails
    with pytest.raises(FileNotFoundError):
        materialise(src, out)
    assert not (out / "manifest.csv").exists()


def test_build_raise_mode_names_the_unreadable_image(tmp_path):
    root = make_acne04(tmp_path / "acne04")
    _truncated_jpeg(root / "JPEGImages" / TEST[0][0])
    with pytest.raises(ImageError, match=rf"{TEST[0][0]}: unreadable or truncated.*listed at .*NNEW_test_0.txt:1"):
        build_real_dataset(_data_cfg("acne04", root=str(root), size=SIZE), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.csv").exists()      # no half-built dataset is left to be trusted


# ------------------------------------------------------------------------------------------- Disease-specific faces

CLASSES = {"Beta-thalassemia": "ORPHA:231214", "Hyperthyroidism": "ORPHA:525731", "Down syndrome": "ORPHA:870",
           "Leprosy": "ORPHA:548", "Healthy": "healthy"}


def make_disease_faces(root: Path, per_class: int = 5) -> Path:
    """One folder per class, images in varied files and modes, plus files the adapter must ignore."""
    for c, folder in enumerate(CLASSES):
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            img, name = _face(10 * c + i), f"{folder[:3].lower()}_{i}"
            kind = i % 5
            if kind == 0:
                img.save(root / folder / f"{name}.jpg")
            elif kind == 1:
                img.convert("L").save(root / folder / f"{name}.png")
            elif kind == 2:
                img.convert("RGBA").save(root / folder / f"{name}.png")
            elif kind == 3:
                Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257)).save(root / folder / f"{name}.png")
            else:
                img.convert("P").save(root / folder / f"{name}.bmp")
        (root / folder / "notes.txt").write_text("ignored")
        (root / folder / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("ignored")
    return root


def test_disease_faces_takes_jfif_and_warns_of_photos_it_cannot_read(tmp_path, caplog):
    root = make_disease_faces(tmp_path / "faces", per_class=1)
    _face(99).save(root / "Leprosy" / "web.jfif", format="JPEG")
    (root / "Leprosy" / "phone.HEIC").write_bytes(b"\0" * 16)
    with caplog.at_level("INFO"):
        df = class_folder_manifest(root, CLASSES)
    assert "Leprosy/web.jfif" in set(df["path"]) and len(df) == 6
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "left out 1 photos in formats kgface cannot read (phone.HEIC)" in warned[0].message
    assert "ignored 1 files without an image extension (notes.txt)" in caplog.text  # info only


def test_disease_faces_labels_stage_convention_and_stratified_splits(tmp_path):
    cfg = OmegaConf.to_container(_data_cfg("disease_faces"))
    df = class_folder_manifest(make_disease_faces(tmp_path / "faces"), cfg["classes"], val_fraction=0.2,
                               test_fraction=0.2)
    assert len(df) == 25
    folders = df["path"].str.split("/").str[0]
    for folder, kg_id in CLASSES.items():
        assert set(df.loc[folders == folder, "disease"]) == {kg_id}          # matched ignoring case and separators
        assert Counter(df.loc[folders == folder, "split"]) == {"train": 3, "val": 1, "test": 1}
    sick = df["disease"] != "healthy"
    assert set(df.loc[sick, "stage"]) == {2} and not df.loc[sick, "stage_known"].any()
    assert set(df.loc[sick, "severity"]) == {""}                             # unknown, not invented
    assert set(df.loc[~sick, "stage"]) == {0} and df.loc[~sick, "stage_known"].all()
    assert set(df.loc[~sick, "severity"]) == {0.0}
    assert df["identity"].is_unique and not df["path"].str.endswith(".txt").any()


def test_disease_faces_known_stage_from_config(tmp_path):
    df = class_folder_manifest(make_disease_faces(tmp_path / "faces"), CLASSES, stages={"leprosy": 3})
    lep = df[df["disease"] == "ORPHA:548"]
    assert set(lep["stage"]) == {3} and lep["stage_known"].all()


def test_disease_faces_stages_are_checked_before_any_folder(tmp_path):
    root = make_disease_faces(tmp_path / "faces", per_class=1)
    with pytest.raises(UserError, match=r"data.stages names \['leprocy'\], which are not classes; use one of "
                                        r"Beta-thalassemia, .*Leprosy, Healthy"):
        class_folder_manifest(root, CLASSES, stages={"leprocy": 3})   # a typo left leprosy at the unknown stage
    with pytest.raises(UserError, match=r"data.stages.Leprosy: stage must be an integer 0..3, got 7"):
        class_folder_manifest(tmp_path / "faces", CLASSES, stages={"leprosy": 7})
    with pytest.raises(UserError, match=r"data.stages.Leprosy: stage must be an integer 0..3, got 1.5"):
        class_folder_manifest(root, CLASSES, stages={"Leprosy": 1.5})
    with pytest.raises(UserError, match="names one class twice"):
        class_folder_manifest(root, CLASSES, stages={"Leprosy": 1, "leprosy": 2})
    # a class without its id was labelled disease 'None'; a list of folders was a traceback
    with pytest.raises(UserError, match=r"^data.classes.Leprosy is empty; give the folder's KG id"):
        class_folder_manifest(root, {**CLASSES, "Leprosy": None})
    with pytest.raises(UserError, match=r"^data.classes must map class folders to KG ids"):
        class_folder_manifest(root, list(CLASSES))
    (root / "stray").mkdir()                                      # checked before the folders are read
    with pytest.raises(UserError, match="data.stages.Healthy: healthy images are stage 0"):
        class_folder_manifest(root, CLASSES, stages={"healthy": 2})
    df = class_folder_manifest(root, CLASSES, stages={"leprosy": None, "Down_Syndrome": 1}, on_error="skip")
    assert set(df.loc[df["disease"] == "ORPHA:870", "stage"]) == {1}
    assert not df.loc[df["disease"] == "ORPHA:548", "stage_known"].any()


def test_disease_faces_unmapped_and_missing_folders(tmp_path):
    root = make_disease_faces(tmp_path / "faces", per_class=2)
    (root / "acne").mkdir()
    _face(0).save(root / "acne" / "x.jpg")
    with pytest.raises(ManifestError, match="folder 'acne' is not a class in the config"):
        class_folder_manifest(root, CLASSES)
    skipped = []
    df = class_folder_manifest(root, CLASSES, on_error="skip", skipped=skipped)
    assert len(df) == 10 and len(skipped) == 1 and skipped[0]["path"] == "acne"
    with pytest.raises(UserError, match=r"no folder for classes \['vitiligo'\]"):
        class_folder_manifest(root, {**CLASSES, "vitiligo": "ORPHA:3437", "acne": "MONDO:0011438"})
    with pytest.raises(UserError, match="name the same folder"):
        class_folder_manifest(root, {"Down syndrome": "ORPHA:870", "down_syndrome": "ORPHA:870"})
    with pytest.raises(UserError, match="healthy images are stage 0"):
        class_folder_manifest(root, CLASSES, stages={"healthy": 2}, on_error="skip")
    with pytest.raises(UserError, match=r"^class 'Healthy': 'Healthy': write healthy faces as 'healthy'"):
        class_folder_manifest(root, {**CLASSES, "Healthy": "Healthy"})  # before any image is read
    # `cd faces && python -m kgface.dataset data.root=.`: Hydra's outputs/ (a build, its .hydra/) is no class
    shutil.rmtree(root / "acne")
    built = root / "outputs" / "2026-12-07" / "10-00-00"
    (built / "images").mkdir(parents=True)
    (built / ".hydra").mkdir()
    (built / "dataset.json").write_text("{}")
    _face(1).save(built / "images" / "copy.png")
    assert len(class_folder_manifest(root, CLASSES)) == 10
    _face(2).save(root / "outputs" / "mine.png")  # a photo of its own: a folder to name, as before
    with pytest.raises(ManifestError, match="folder 'outputs' is not a class in the config"):
        class_folder_manifest(root, CLASSES)
    # hydra.run.dir=built (a class-root subfolder that is an output itself): left out, not "not a class"
    shutil.move(str(built), str(root / "built"))
    shutil.rmtree(root / "outputs")
    assert len(class_folder_manifest(root, CLASSES)) == 10


def test_a_class_whose_every_photo_went_to_val_or_test_is_named(tmp_path, caplog):
    root = make_disease_faces(tmp_path / "faces", per_class=2)
    with caplog.at_level("WARNING"):
        df = class_folder_manifest(root, CLASSES, val_fraction=0.4, test_fraction=0.5)
    assert "train" not in set(df["split"])
    assert "its 2 identities all went to val / test (val_fraction 0.4, test_fraction 0.5)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        class_folder_manifest(root, CLASSES)
    assert "went to val / test" not in caplog.text


def test_build_disease_faces_converts_every_mode(tmp_path):
    root = make_disease_faces(tmp_path / "faces")
    out = tmp_path / "out"
    result = build_real_dataset(_data_cfg("disease_faces", root=str(root)), out, size=SIZE)
    df, _ = read_manifest(out / "manifest.csv", known_diseases=set(CLASSES.values()))
    assert result.rows == 25 and result.skipped == []
    assert result.summary["converted_to_rgb"] == {"I;16": 5, "L": 5, "P": 5, "RGBA": 5}
    assert set(df.loc[df["disease"] == "ORPHA:870", "stage_known"]) == {"False"}
    assert set(df.loc[df["disease"] == "healthy", "stage_known"]) == {"True"}
    # dataset.json counts graded rows only: a disease row's stage is a placeholder there, not a grade
    healthy = int((df["disease"] == "healthy").sum())
    assert result.summary["stages"] == {"0": healthy} and result.summary["stage_unknown"] == 25 - healthy
    # a linked folder of images is read (once, even with a link back up the tree), and a bad margin is one line
    linked, outside = tmp_path / "linked", tmp_path / "outside"
    shutil.copytree(root, linked)
    shutil.copytree(next(p for p in sorted(root.iterdir()) if p.is_dir()), outside)
    from kgface.data.real.common import list_images

    n_outside = len(list_images(outside)[0])
    (linked / "extra").symlink_to(outside)  # a batch kept elsewhere, linked in
    (outside / "loop").symlink_to(linked)  # ... and a link back up the tree
    images, _ = list_images(linked)
    assert n_outside > 0 and len(images) == len(list_images(root)[0]) + n_outside
    with pytest.raises(UserError, match=r"^data.margin=-0.5: a number >= 0"):
        build_real_dataset(_data_cfg("disease_faces", root=str(root), margin=-0.5), tmp_path / "m", size=SIZE)
    for path in df["abspath"]:
        with Image.open(path) as img:
            assert img.size == (SIZE, SIZE)
    assert pd.read_csv(out / "skipped.csv").empty


# ------------------------------------------------------------------------------------------------------------ CelebA

ATTRS = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
         "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
         "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
         "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
         "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
N_CELEBA = 10
PARTITION = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
# identities repeat only within a split: the official partition is by identity (a person in two splits is an error)
IDENTITY = [2880, 2937, 8692, 5805, 9295, 2880, 4126, 4126, 1, 1]


def _attr_row(i: int) -> list[int]:
    values = [1 if (i + j) % 3 == 0 else -1 for j in range(len(ATTRS))]
    values[ATTRS.index("Eyeglasses")] = 1 if i in (2, 5) else -1
    values[ATTRS.index("Wearing_Hat")] = 1 if i == 7 else -1
    return values


def make_celeba(root: Path, partition: bool = True, identity: bool = True, anno_dirs: bool = False,
                extra_lines: list[str] = (), declared: int | None = None) -> Path:
    """CelebA's files: img_align_celeba/000001.jpg..., list_attr_celeba.txt in its padded format, optional lists."""
    images = root / ("Img/img_align_celeba" if anno_dirs else "img_align_celeba")
    images.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(N_CELEBA)]
    for i, name in enumerate(names):
        _face(i, 18, 22).save(images / name)
    anno = root / "Anno" if anno_dirs else root
    anno.mkdir(exist_ok=True)
    body = "".join(f"{n} " + " ".join(f"{v:2d}" for v in _attr_row(i)) + "\n" for i, n in enumerate(names))
    count = declared if declared is not None else N_CELEBA + len(extra_lines)
    (anno / "list_attr_celeba.txt").write_text(f"{count}\n" + " ".join(ATTRS) + " \n" + body
                                               + "".join(f"{x}\n" for x in extra_lines))
    if partition:
        ev = root / "Eval" if anno_dirs else root
        ev.mkdir(exist_ok=True)
        (ev / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, PARTITION)))
    if identity:
        (anno / "identity_CelebA.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, IDENTITY)))
    return root


def test_celeba_healthy_rows_with_official_splits_and_identities(tmp_path):
    df = celeba_manifest(make_celeba(tmp_path / "celeba"))
    assert len(df) == N_CELEBA
    assert df["path"].tolist() == [f"img_align_celeba/{i + 1:06d}.jpg" for i in range(N_CELEBA)]
    assert set(df["disease"]) == {"healthy"} and set(df["stage"]) == {0} and set(df["severity"]) == {0.0}
    assert df["split"].tolist() == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert df["identity"].tolist() == [f"celeba:{i}" for i in IDENTITY]


def test_celeba_an_image_listed_twice_in_the_partition_file(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    with open(root / "list_eval_partition.txt", "a") as f:  # the same line again is harmless, another value is not
        f.write("000001.jpg 0\n000001.jpg 2\n")
    with pytest.raises(ManifestError, match=r"list_eval_partition.txt:12: 000001.jpg is listed again with 2 \(line 1: "
                                            r"0\); keep one line per image"):
        celeba_manifest(root)
    skipped = []
    df = celeba_manifest(root, on_error="skip", skipped=skipped)
    assert df.loc[df["path"].str.endswith("000001.jpg"), "split"].tolist() == ["train"] and len(skipped) == 1


def test_celeba_filters_and_limit(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    df = celeba_manifest(root, filters={"Eyeglasses": -1, "Wearing_Hat": -1})
    assert df["identity"].tolist() == [f"celeba:{IDENTITY[i]}" for i in range(N_CELEBA) if i not in (2, 5, 7)]
    assert celeba_manifest(root, filters={"Eyeglasses": 1})["path"].str[-10:].tolist() == ["000003.jpg", "000006.jpg"]
    a, b = celeba_manifest(root, limit=4, seed=3), celeba_manifest(root, limit=4, seed=3)
    assert len(a) == 4 and a["path"].tolist() == b["path"].tolist()
    assert a["path"].tolist() == sorted(a["path"])                      # file order kept
    assert len(celeba_manifest(root, filters={"Eyeglasses": -1}, limit=100)) == 8
    with pytest.raises(UserError, match="unknown attribute 'Eyeglass'.*did you mean Eyeglasses"):
        celeba_manifest(root, filters={"Eyeglass": -1})
    with pytest.raises(UserError, match="must be 1 .* or -1"):
        celeba_manifest(root, filters={"Eyeglasses": 0})
    with pytest.raises(UserError, match=r"^data.filters must map CelebA attributes to 1 or -1 .*got \['Eyeglasses'\]"):
        celeba_manifest(root, filters=["Eyeglasses"])  # a traceback from dict()
    with pytest.raises(UserError, match="limit must be a positive"):
        celeba_manifest(root, limit=0)
    with pytest.raises(UserError, match=r"val_fraction must be in \[0, 1\), got 5"):  # with the partition file too
        celeba_manifest(root, val_fraction=5)


def test_celeba_a_limit_short_of_skipped_images_says_so(tmp_path, caplog):
    root = make_celeba(tmp_path / "celeba")
    chosen = celeba_manifest(root, limit=4, seed=3)
    (root / chosen["path"].iloc[0]).unlink()
    with caplog.at_level("WARNING"):
        df = celeba_manifest(root, limit=4, seed=3, on_error="skip", skipped=[])
    assert len(df) == 3 and "CelebA: 3 images kept of the limit=4 chosen" in caplog.text


def test_celeba_without_partition_splits_by_identity(tmp_path, caplog):
    df = celeba_manifest(make_celeba(tmp_path / "celeba", partition=False), val_fraction=0.2, test_fraction=0.2)
    assert "have no person in" not in caplog.text
    assert set(df["split"]) <= {"train", "val", "test"} and len(df) == N_CELEBA
    assert df.groupby("identity")["split"].nunique().max() == 1          # a person never straddles two splits
    # the fractions act on people: 7 identities -> round(0.2 * 7) = 1 test, 1 val, 5 train
    assert df.drop_duplicates("identity")["split"].value_counts().to_dict() == {"train": 5, "val": 1, "test": 1}
    no_ids = celeba_manifest(make_celeba(tmp_path / "c2", partition=False, identity=False))
    assert no_ids["identity"].tolist() == [f"{i + 1:06d}" for i in range(N_CELEBA)]
    # split per image then: one celebrity's photos can straddle train and test, which is said
    assert f"CelebA: {N_CELEBA} images have no person in identity_CelebA.txt (not found)" in caplog.text


def test_celeba_official_drive_layout(tmp_path):
    df = celeba_manifest(make_celeba(tmp_path / "celeba", anno_dirs=True))
    assert df["path"][0] == "Img/img_align_celeba/000001.jpg" and df["split"].tolist()[-1] == "test"


def test_celeba_bad_rows(tmp_path):
    root = make_celeba(tmp_path / "celeba", extra_lines=["000011.jpg " + " ".join(["0"] * len(ATTRS)),
                                                         "000012.jpg 1 -1", "000013.jpg " + " 1" * len(ATTRS)])
    with pytest.raises(ManifestError, match=rf"list_attr_celeba.txt:{N_CELEBA + 3}: expected a file name and 40"):
        celeba_manifest(root)
    skipped = []
    df = celeba_manifest(root, on_error="skip", skipped=skipped)
    assert len(df) == N_CELEBA
    reasons = [s["reason"] for s in skipped]
    assert len(reasons) == 3 and "40 values" in reasons[0] and "40 values" in reasons[1]
    assert "img_align_celeba/000013.jpg does not exist" in reasons[2]


def test_celeba_person_in_two_partitions_is_an_identity_leak(tmp_path):
    root = make_celeba(tmp_path / "celeba")
    (root / "identity_CelebA.txt").write_text("".join(f"{i + 1:06d}.jpg {7 if i in (0, 9) else 100 + i}\n"
                                                      for i in range(N_CELEBA)))
    with pytest.raises(ManifestError, match=rf"list_attr_celeba.txt:{N_CELEBA + 2}: identity 'celeba:7' is in test "
                                            r"here and in train at .*list_attr_celeba.txt:3"):
        celeba_manifest(root)
    skipped = []
    df = celeba_manifest(root, on_error="skip", skipped=skipped)
    assert len(df) == N_CELEBA - 1 and [s["path"] for s in skipped] == ["img_align_celeba/000010.jpg"]
    assert df.groupby("identity")["split"].nunique().max() == 1


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_celeba_images_outside_the_root(tmp_path, where):
    root = make_celeba(tmp_path / "celeba")
    elsewhere = tmp_path / "disk2" / "faces"
    elsewhere.parent.mkdir()
    (root / "img_align_celeba").rename(elsewhere)
    images = str(elsewhere) if where == "absolute" else "../disk2/faces"
    df = celeba_manifest(root, images=images)
    assert df["path"].tolist() == [f"{Path(images).as_posix()}/{i + 1:06d}.jpg" for i in range(N_CELEBA)]
    assert [Path(p).resolve() for p in df["abspath"]] == [elsewhere / f"{i + 1:06d}.jpg" for i in range(N_CELEBA)]
    out = tmp_path / "out"
    result = build_real_dataset(_data_cfg("celeba", root=str(root), images=images, size=SIZE), out)
    final, _ = read_manifest(result.manifest)
    assert len(final) == N_CELEBA and final["original"].tolist() == df["path"].tolist()
    assert all(Path(p).is_relative_to((out / "images").resolve()) for p in final["abspath"])  # inside OUT


def test_celeba_count_mismatch_and_missing_files(tmp_path):
    root = make_celeba(tmp_path / "celeba", declared=202599)
    with pytest.raises(ManifestError, match="declares 202599 images but lists 10"):
        celeba_manifest(root)
    with pytest.raises(UserError, match="list_attr_celeba.txt not found"):
        celeba_manifest(tmp_path)
    root = make_celeba(tmp_path / "c2")
    (root / "list_eval_partition.txt").write_text("000001.jpg 5\n")
    with pytest.raises(ManifestError, match="list_eval_partition.txt:1: expected 'file partition'"):
        celeba_manifest(root)
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(ManifestError, match="image '000002.jpg' has no line in list_eval_partition.txt"):
        celeba_manifest(root)


def test_build_celeba_from_its_config(tmp_path):
    cfg = _data_cfg("celeba", root=str(make_celeba(tmp_path / "celeba")), filters={"Wearing_Hat": -1}, size=SIZE)
    result = build_real_dataset(cfg, tmp_path / "out")
    assert result.rows == 9 and result.summary["splits"] == {"train": 6, "val": 1, "test": 2}
    assert result.summary["diseases"] == {"healthy": 9}


# ------------------------------------------------------------------------------------ generic folder, user manifest

def test_folder_manifest(tmp_path):
    root = tmp_path / "pics"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        _face(i).save(root / ("sub" if i % 2 else "") / f"p{i}.png")
    df = folder_manifest(root, "ORPHA:870")
    assert sorted(df["path"]) == ["p0.png", "p2.png", "sub/p1.png", "sub/p3.png"]
    assert set(df["stage"]) == {2} and not df["stage_known"].any()      # stage unknown by default
    known = folder_manifest(root, "ORPHA:870", stage=1)
    assert set(known["stage"]) == {1} and known["stage_known"].all()
    with pytest.raises(UserError, match="healthy images are stage 0"):
        folder_manifest(root, "healthy", stage=1)
    with pytest.raises(UserError, match="stage must be an integer 0..3"):
        folder_manifest(root, "ORPHA:870", stage=4)
    for stage in (True, False):  # data.stage=true is YAML's boolean: neither stage 1 nor a healthy stage 0
        with pytest.raises(UserError, match="stage must be an integer 0..3, got " + str(stage)):
            folder_manifest(root, "ORPHA:870", stage=stage)
    with pytest.raises(UserError, match="healthy images are stage 0"):
        folder_manifest(root, "healthy", stage=False)
    # data.disease=[ORPHA:870] or 870 would have become the labels "['ORPHA:870']" and "870"
    for disease in (["ORPHA:870"], 870):
        with pytest.raises(UserError, match=r"disease must be one id as text \(e.g. data.disease=ORPHA:870"):
            folder_manifest(root, disease)
    with pytest.raises(ManifestError, match="no usable images"):
        folder_manifest(_empty(tmp_path / "empty"), "ORPHA:870")
    with pytest.raises(UserError, match="image folder not found"):
        folder_manifest(tmp_path / "nowhere", "ORPHA:870")


def _empty(path: Path) -> Path:
    path.mkdir()
    (path / "readme.txt").write_text("no images here")
    return path


def test_build_folder_from_its_config(tmp_path):
    root = tmp_path / "pics"
    root.mkdir()
    for i in range(5):
        _face(i).save(root / f"p{i}.jpg")
    _face(9).save(root / "p0.png")                                    # same stem as p0.jpg: output name must differ
    result = build_real_dataset(_data_cfg("folder", root=str(root), disease="healthy"), tmp_path / "out", size=SIZE)
    df, _ = read_manifest(result.manifest)
    assert result.rows == 6 and df["path"].is_unique and set(df["disease"]) == {"healthy"}
    with pytest.raises(UserError, match=r"data.disease: a value is required"):
        build_real_dataset(_data_cfg("folder", root=str(root)), tmp_path / "out2")
    # into a folder that held a phantom build: its atlas (read by an evaluator fitted on the manifest) and its
    # images the new manifest does not list go
    out = tmp_path / "out"
    (out / "images" / "atlas").mkdir(parents=True)
    _face(3).save(out / "images" / "atlas" / "a0.png")
    (out / "phenotype_atlas.csv").write_text("path,disease,stage,split\nimages/atlas/a0.png,phenotype_atlas,0,train\n")
    _face(4).save(out / "contact_sheet.png")  # the phantom build's sheet and cache record describe its faces
    (out / "cache_entries.json").write_text("[]")
    (out / "dataset.json").write_text("{}")  # what a phantom build writes beside them: an earlier set, not photos
    result = build_real_dataset(_data_cfg("folder", root=str(root), disease="healthy"), out, size=SIZE)
    assert not (out / "phenotype_atlas.csv").exists() and not (out / "cache_entries.json").exists()
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == set(read_manifest(result.manifest)[0]["path"])
    # inputs inside the folder the build writes: they would be read back as inputs, or written over
    with pytest.raises(UserError, match=r"input image .*\.png lies in .*out/images, the folder this build writes"):
        build_real_dataset(_data_cfg("folder", root=str(out), disease="healthy"), out, size=SIZE)
    assert (out / "manifest.csv").is_file()  # refused before anything of the earlier build was removed


def test_a_folder_build_leaves_earlier_kgface_outputs_under_its_root_out(tmp_path, caplog):
    """`cd photos && python -m kgface.dataset data=folder data.root=.` twice: Hydra's outputs/ lies under the root,
    and the first build's images were read back as new photos of the same class (copies that could land in test)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    _face(5).save(photos / "a.png")
    first = build_real_dataset(_data_cfg("folder", root=str(photos), disease="healthy"), photos / "outputs" / "t1",
                               size=SIZE)
    second = build_real_dataset(_data_cfg("folder", root=str(photos), disease="healthy"), photos / "outputs" / "t2",
                                size=SIZE)
    assert first.rows == second.rows == 1 and "a kgface output folder (dataset.json), not photos" in caplog.text
    assert read_manifest(second.manifest)[0]["original"].tolist() == ["a.png"]


def test_user_manifest_is_validated_and_rebuilt(tmp_path):
    src = tmp_path / "mine"
    (src / "img").mkdir(parents=True)
    for i in range(3):
        _face(i, 30, 40).save(src / "img" / f"{i}.png")
    rows = [{"path": f"img/{i}.png", "disease": "ORPHA:870", "stage": i, "split": "train", "identity": f"id{i}"}
            for i in range(3)]
    rows.append({"path": "../escape.png", "disease": "ORPHA:870", "stage": 0, "split": "train"})
    write_manifest(rows, src / "manifest.csv")
    with pytest.raises(ManifestError, match=r"manifest.csv:5: path '\.\./escape\.png' escapes the dataset root"):
        user_manifest(src / "manifest.csv")
    skipped = []
    df = user_manifest(src / "manifest.csv", on_error="skip", skipped=skipped)
    assert len(df) == 3 and skipped[0]["where"].endswith("manifest.csv:5")
    with pytest.raises(ManifestError, match="not one of the known labels"):
        user_manifest(src / "manifest.csv", known_diseases=["healthy"])
    # one id as data.known_diseases is a list of one (it was a set of its characters, refusing every row)
    assert len(user_manifest(src / "manifest.csv", known_diseases="ORPHA:870", on_error="skip")) == 3
    result = build_real_dataset(_data_cfg("manifest", path=str(src / "manifest.csv"), on_error="skip"),
                                tmp_path / "out", size=SIZE)
    out, _ = read_manifest(result.manifest)
    assert out["stage"].tolist() == [0, 1, 2] and out["identity"].tolist() == ["id0", "id1", "id2"]
    assert out["lesion_count"].tolist() == [-1, -1, -1] and len(pd.read_csv(tmp_path / "out" / "skipped.csv")) == 1
    with pytest.raises(UserError, match="would overwrite"):
        build_real_dataset(_data_cfg("manifest", path=str(result.manifest)), tmp_path / "out")


def test_the_built_heldout_column_is_data_heldouts(tmp_path):
    """A phantom manifest imported with data=manifest kept its heldout column: training read data.heldout ([]) and
    trained on those diseases, evaluation read the column and counted them held out. kgface.dataset ignored
    data.heldout for real data. Now the column is written from data.heldout, and a source column that disagrees is
    refused."""
    (tmp_path / "img").mkdir()
    rows = []
    for i, disease in enumerate(["ORPHA:870", "ORPHA:870", "ORPHA:648", "ORPHA:648", "healthy"]):
        _face(i, 30, 40).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "disease": disease, "stage": 0 if disease == "healthy" else 2,
                     "split": "train", "identity": f"id{i}", "heldout": str(disease == "ORPHA:648").lower()})
    write_manifest(rows, tmp_path / "phantom.csv")
    with pytest.raises(UserError, match=r"phantom.csv: its heldout column holds out \['ORPHA:648'\], data.heldout="
                                        r"\[\]: the generator would train on .* set data.heldout=\[ORPHA:648\]"):
        build_real_dataset(_data_cfg("manifest", path=str(tmp_path / "phantom.csv")), tmp_path / "a", size=SIZE)
    assert not (tmp_path / "a" / "manifest.csv").exists()
    built = build_real_dataset(_data_cfg("manifest", path=str(tmp_path / "phantom.csv"), heldout=["ORPHA:648"]),
                               tmp_path / "b", size=SIZE)
    out = pd.read_csv(built.manifest, dtype=str)
    assert out.groupby("disease")["heldout"].first().to_dict() == {"ORPHA:648": "true", "ORPHA:870": "false",
                                                                   "healthy": "false"}
    # a source without the column: data.heldout writes it (kgface.dataset data=... data.heldout=[...])
    write_manifest([{k: v for k, v in r.items() if k != "heldout"} for r in rows], tmp_path / "plain.csv")
    built = build_real_dataset(_data_cfg("manifest", path=str(tmp_path / "plain.csv"), heldout=["ORPHA:870"]),
                               tmp_path / "c", size=SIZE)
    assert set(read_manifest(built.manifest)[0].query("heldout == 'true'")["disease"]) == {"ORPHA:870"}
    built = build_real_dataset(_data_cfg("manifest", path=str(tmp_path / "plain.csv")), tmp_path / "d", size=SIZE)
    assert "heldout" not in pd.read_csv(built.manifest).columns  # nothing held out: the set as before
    for heldout, what in ((["ORPHA:999"], "name diseases of the data"),
                          (["ORPHA:870", "ORPHA:648"], "leave at least one")):
        with pytest.raises(UserError, match=what):
            build_real_dataset(_data_cfg("manifest", path=str(tmp_path / "plain.csv"), heldout=heldout),
                               tmp_path / "e", size=SIZE)
    # ... also on what was built: with ORPHA:870's photos unreadable (skipped), nothing is left to train on
    for i in (0, 1):
        (tmp_path / "img" / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"data.heldout=\['ORPHA:648'\]: name diseases of the data after the skipped "
                                        r"images \(ORPHA:648\)"):
        build_real_dataset(_data_cfg("manifest", path=str(tmp_path / "plain.csv"), heldout=["ORPHA:648"],
                                     on_error="skip"), tmp_path / "f", size=SIZE)
    assert not (tmp_path / "f" / "manifest.csv").exists()


def test_user_manifest_rows_without_identity_are_named_in_a_warning(tmp_path, caplog):
    # the leakage check cannot keep a person's photos in one split when it does not know the person
    (tmp_path / "img").mkdir()
    for i in range(3):
        _face(i, 30, 40).save(tmp_path / "img" / f"{i}.png")
    write_manifest([{"path": f"img/{i}.png", "disease": "ORPHA:870", "stage": 1, "split": ("train", "test")[i % 2],
                     "identity": "" if i else "p0"} for i in range(3)], tmp_path / "m.csv")
    with caplog.at_level("WARNING"):
        assert len(user_manifest(tmp_path / "m.csv")) == 3
    assert "m.csv: 2 of 3 rows name no identity" in caplog.text


def test_config_errors(tmp_path):
    with pytest.raises(UserError, match=r"^data\.root: a value is required \(e\.g\. data\.root=/path\)$"):
        build_real_dataset(_data_cfg("acne04"), tmp_path / "out")
    job = OmegaConf.create({"data": _data_cfg("acne04")})  # as the dataset job passes it: a child node of its config
    with pytest.raises(UserError, match=r"^data\.root: a value is required \(e\.g\. data\.root=/path\)$"):
        build_real_dataset(job.data, tmp_path / "out")
    with pytest.raises(UserError, match=r"unknown options \['folds'\]"):
        build_real_dataset(_data_cfg("acne04", root=str(tmp_path), folds=2), tmp_path / "out")
    with pytest.raises(UserError, match=r"data=folder: \['disease'\] must be set"):
        build_real_dataset({"name": "folder", "root": str(tmp_path)}, tmp_path / "out")
    with pytest.raises(UserError, match="not a real-dataset adapter"):
        build_real_dataset({"name": "phantom"}, tmp_path / "out")
    with pytest.raises(UserError, match="data.size must be a positive number of pixels, got 0"):
        build_real_dataset({"name": "folder", "root": str(tmp_path), "disease": "healthy"}, tmp_path / "out", size=0)


def test_a_build_whose_every_image_is_skipped_is_refused_and_writes_no_manifest(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.jpg"):
        (photos / name).write_bytes(b"not an image")
    with pytest.raises(ManifestError, match=r"data=folder: every image was skipped \(2\); first: "):
        build_real_dataset({"name": "folder", "root": str(photos), "disease": "healthy", "on_error": "skip"},
                           tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_build_keeps_a_photo_saved_twice_once_and_refuses_one_labelled_twice(tmp_path):
    root = make_disease_faces(tmp_path / "faces")
    shutil.copy(root / "Leprosy" / "lep_0.jpg", root / "Leprosy" / "lep_0 (1).jpg")  # a web folder's repeat
    out = tmp_path / "out"
    result = build_real_dataset(_data_cfg("disease_faces", root=str(root)), out, size=SIZE)
    df, _ = read_manifest(out / "manifest.csv", known_diseases=set(CLASSES.values()))
    assert result.rows == 25 and len(result.skipped) == 1 and result.summary["skipped"] == 1
    pair = {"Leprosy/lep_0.jpg", "Leprosy/lep_0 (1).jpg"}  # listed in sorted order: "lep_0 (1)" comes first
    dropped, = pair & {result.skipped[0]["path"]}
    assert f"a copy of {(pair - {dropped}).pop()}" in result.skipped[0]["reason"]
    assert pd.read_csv(out / "skipped.csv")["path"].tolist() == [dropped] and dropped not in set(df["original"])
    # the same photo in two classes: one of the two labels is wrong, and the build cannot tell which
    shutil.copy(root / "Leprosy" / "lep_0.jpg", root / "Healthy" / "hea_9.jpg")
    with pytest.raises(ManifestError, match=r"Leprosy/lep_0.*jpg: the same file as Healthy/hea_9.jpg \(at .*\), "
                                            r"labelled disease ORPHA:548 here and healthy there, stage 2 here and 0 "
                                            r"there.*; remove the wrongly labelled copy; fix it or set on_error=skip"):
        build_real_dataset(_data_cfg("disease_faces", root=str(root)), out, size=SIZE)
    assert read_manifest(out / "manifest.csv", known_diseases=set(CLASSES.values()))[0].equals(df)  # kept whole


def test_one_photo_as_healthy_and_as_a_disease_at_stage_0_is_both(tmp_path):
    # a stage-0 face looks healthy by definition: the phantom draws one identity's stage-0 face and healthy face
    # alike, and a phantom manifest imported with data=manifest must keep both rows
    from kgface.data.real.common import BadInput, check_duplicate_images

    _face(1).save(tmp_path / "a.png")
    shutil.copy(tmp_path / "a.png", tmp_path / "b.png")
    shutil.copy(tmp_path / "a.png", tmp_path / "c.png")
    df = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "disease": ["healthy", "ORPHA:870", "ORPHA:870"],
                       "stage": [0, 0, 2], "_where": ["m:2", "m:3", "m:4"],
                       "abspath": [str(tmp_path / n) for n in ("a.png", "b.png", "c.png")]})
    skipped = []
    kept = check_duplicate_images(df, BadInput("skip", skipped))
    assert kept["path"].tolist() == ["a.png", "b.png"]  # c: stage 2 cannot be the healthy face a is
    assert [s["where"] for s in skipped] == ["m:4"]
    # ... within one split: the same pixels in train (a) and test (d) leak, whatever identities the rows name
    shutil.copy(tmp_path / "a.png", tmp_path / "d.png")
    df = pd.DataFrame({"path": ["a.png", "d.png"], "disease": ["healthy", "ORPHA:870"], "stage": [0, 0],
                       "split": ["train", "test"], "identity": ["p1", "p2"], "_where": ["m:2", "m:3"],
                       "abspath": [str(tmp_path / n) for n in ("a.png", "d.png")]})
    skipped = []
    assert check_duplicate_images(df, BadInput("skip", skipped))["path"].tolist() == ["a.png"]
    assert skipped[0]["where"] == "m:3" and "in split test here and train there" in skipped[0]["reason"]


def test_one_photo_with_two_lesion_counts_or_as_healthy_and_mild_acne_is_two_labels(tmp_path):
    # a copy was compared on disease and stage only: 8 and 19 lesions at one grade kept the first in silence; acne's
    # stage 0 is mild acne (up to 5 lesions), not a healthy-looking face
    from kgface.data.real.common import BadInput, check_duplicate_images

    _face(1).save(tmp_path / "a.png")
    for name in ("b.png", "c.png", "d.png"):
        shutil.copy(tmp_path / "a.png", tmp_path / name)
    df = pd.DataFrame({"path": ["a.png", "b.png", "c.png", "d.png"],
                       "disease": ["MONDO:0011438", "MONDO:0011438", "MONDO:0011438", "healthy"],
                       "stage": [1, 1, 1, 0], "lesion_count": [8, 19, 8.0, ""], "severity": [1.0, 1.0, 1.0, 0.0],
                       "_where": ["m:2", "m:3", "m:4", "m:5"],
                       "abspath": [str(tmp_path / n) for n in ("a.png", "b.png", "c.png", "d.png")]})
    skipped = []
    assert check_duplicate_images(df, BadInput("skip", skipped))["path"].tolist() == ["a.png"]
    reasons = {s["where"]: s["reason"] for s in skipped}
    assert "labelled lesion_count 19 here and 8 there" in reasons["m:3"] and "a copy of a.png" in reasons["m:4"]
    assert "labelled disease healthy here and MONDO:0011438 there" in reasons["m:5"]
    df.loc[:, "stage"], df.loc[:3, "lesion_count"] = 0, 3  # acne's stage 0 with 3 lesions: not healthy-looking
    skipped = []
    check_duplicate_images(df.iloc[[0, 3]].reset_index(drop=True), BadInput("skip", skipped))
    assert len(skipped) == 1 and "labelled disease healthy here" in skipped[0]["reason"]
    df.loc[:, "lesion_count"], df.loc[:, "severity"] = [0, 0, 0, ""], 0.0  # ... with none counted: it is
    skipped = []
    assert len(check_duplicate_images(df.iloc[[0, 3]].reset_index(drop=True), BadInput("skip", skipped))) == 2
    assert not skipped
