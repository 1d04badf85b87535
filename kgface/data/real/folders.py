"""Folder datasets and user manifests.

- `class_folder_manifest`: one folder per class (Disease-specific faces of Jin, Cruz & Goncalves 2020: beta-thalassemia,
  hyperthyroidism, Down syndrome, leprosy, healthy), class folder -> KG id from the config. Folder names match
  ignoring case, spaces, '-' and '_' ("Down syndrome" = "down_syndrome" = "DownSyndrome").
- `folder_manifest`: every image under one folder, one label.
- `user_manifest`: an existing manifest CSV, validated by `read_manifest`.

Those photos carry no grade: unless the config gives one, a disease row gets stage UNKNOWN_STAGE (2, "established,
visibly present"), an empty severity and `stage_known=False`, so that stage-sensitive evaluations can leave it out;
healthy rows are stage 0, severity 0, `stage_known=True`. No person ids either: identity = the path without its
extension, so identity splits are per image; splits are drawn per class (stratified) by hashed identity.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from ...config import disease_list
from ...errors import UserError
from ..manifest import read_manifest
from .common import (UNREAD_PHOTO_EXTS, UNKNOWN_STAGE, BadInput, assign_splits, check_stage, frame, list_images,
                     only_outputs, require_dir)

log = logging.getLogger(__name__)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def _labels(disease: str, stage, what: str) -> dict:
    if not isinstance(disease, str):  # data.disease=[ORPHA:870] or 870 would become the label "['ORPHA:870']" / "870"
        raise UserError(f"{what}: disease must be one id as text (e.g. data.disease=ORPHA:870 or healthy), got "
                        f"{disease!r}")
    disease = disease.strip()
    if not disease:
        raise UserError(f"{what}: empty disease id (use a KG id or 'healthy')")
    if disease.lower() == "healthy" and disease != "healthy":  # refused before any image is read, not after
        raise UserError(f"{what}: '{disease}': write healthy faces as 'healthy' (lower case)")
    if disease == "healthy":
        if stage is not None and (isinstance(stage, bool) or stage != 0):
            raise UserError(f"{what}: healthy images are stage 0, got stage {stage}")
        return {"disease": disease, "stage": 0, "severity": 0.0, "stage_known": True}
    if stage is None:
        return {"disease": disease, "stage": UNKNOWN_STAGE, "severity": "", "stage_known": False}
    value = check_stage(stage, what)
    return {"disease": disease, "stage": value, "severity": "", "stage_known": True}


def _image_rows(root: Path, folder: Path, labels: dict, source: str, class_name: str) -> list[dict]:
    images, other = list_images(folder)
    photos = [p for p in other if p.suffix.lower() in UNREAD_PHOTO_EXTS]
    if photos:
        log.warning("%s: left out %d photos in formats kgface cannot read (%s%s); convert them to JPEG or PNG",
                    folder, len(photos), ", ".join(p.name for p in photos[:3]), ", ..." if len(photos) > 3 else "")
    other = [p for p in other if p.suffix.lower() not in UNREAD_PHOTO_EXTS]
    if other:
        log.info("%s: ignored %d files without an image extension (%s%s)", folder, len(other),
                 ", ".join(p.name for p in other[:3]), ", ..." if len(other) > 3 else "")
    rows = []
    for path in images:
        rel = path.relative_to(root).as_posix()
        rows.append({"path": rel, "abspath": str(path), "identity": rel.rsplit(".", 1)[0], **labels,
                     "lesion_count": "", "split": "", "source": source, "phenotypes": {},
                     "class_name": class_name, "_where": str(path)})
    return rows


def _split_per_class(df: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.DataFrame:
    for name, group in df.groupby("class_name", sort=True):
        splits = assign_splits(group["identity"], val_fraction, test_fraction, seed)
        df.loc[group.index, "split"] = group["identity"].map(splits)
        if "train" not in splits.values():  # rounding gave a small class's every identity to val / test
            log.warning("class '%s': its %d identities all went to val / test (val_fraction %s, test_fraction %s): "
                        "nothing of it is trained on; add photos or lower the fractions", name,
                        len(splits), val_fraction, test_fraction)
    return df


def class_folder_manifest(root: str | Path, classes: dict, stages: dict | None = None, val_fraction: float = 0.1,
                          test_fraction: float = 0.2, seed: int = 0, source: str = "class_folders",
                          on_error: str = "raise", skipped: list[dict] | None = None) -> pd.DataFrame:
    """One folder per class under `root`; `classes` maps folder name -> KG id (or 'healthy'), `stages` optionally
    folder name -> known stage. A folder on disk that `classes` does not name is bad input (error, or skipped whole)."""
    bad = BadInput(on_error, skipped)
    root = require_dir(Path(root), "class-folder dataset root")
    if classes is not None and not isinstance(classes, dict):  # dict() of a list was a traceback
        raise UserError(f"data.classes must map class folders to KG ids (e.g. {{leprosy: MONDO:0005124, healthy: "
                        f"healthy}}), got {classes!r}")
    blank = [k for k, v in dict(classes or {}).items() if not isinstance(v, (str, int)) or not str(v).strip()]
    if blank:  # str(None) was the disease 'None'
        raise UserError(f"data.classes.{blank[0]} is empty; give the folder's KG id (or healthy)")
    classes = {str(k): str(v).strip() for k, v in dict(classes or {}).items()}
    if not classes:
        raise UserError("class-folder dataset: `classes` (folder name -> KG id) is empty")
    by_norm = {}
    for name in classes:
        if _norm(name) in by_norm:
            raise UserError(f"classes '{by_norm[_norm(name)]}' and '{name}' name the same folder")
        by_norm[_norm(name)] = name
    if stages is not None and not isinstance(stages, dict):
        raise UserError(f"data.stages must map class folders to stages 0..3 (e.g. {{leprosy: 2}}), got {stages!r}")
    # checked before any folder is read: a misspelt key (`leprocy`) would otherwise leave its class at the unknown
    # stage without a word, and a bad value would only surface once its folder is reached
    unknown = [k for k in dict(stages or {}) if _norm(k) not in by_norm]
    if unknown:
        raise UserError(f"data.stages names {unknown}, which are not classes; use one of {', '.join(classes)}")
    if len({_norm(k) for k in dict(stages or {})}) < len(dict(stages or {})):
        raise UserError(f"data.stages names one class twice ({list(dict(stages))}); keep one key per class")
    stages = {_norm(k): v for k, v in dict(stages or {}).items()}
    for norm, stage in stages.items():
        _labels(classes[by_norm[norm]], stage, f"data.stages.{by_norm[norm]}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found, rows = {}, []
    for folder in folders:
        key = by_norm.get(_norm(folder.name))
        if key is None and only_outputs(folder):  # Hydra's outputs/ under a class root built from: no class
            log.warning("%s: left out, a kgface output (or holding only kgface outputs), not photos", folder)
            continue
        if key is None:
            bad(str(folder), folder.name, f"folder '{folder.name}' is not a class in the config "
                                          f"({', '.join(classes)}); add it to `classes` or remove it")
            continue
        if key in found:
            raise UserError(f"{root}: folders '{found[key].name}' and '{folder.name}' both match class '{key}'")
        found[key] = folder
        labels = _labels(classes[key], stages.get(_norm(key)), f"class '{key}'")
        rows += _image_rows(root, folder, labels, source, key)
    missing = [k for k in classes if k not in found]
    if missing:
        raise UserError(f"{root}: no folder for classes {missing}; folders present: {[f.name for f in folders]}")
    loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        log.info("%s: ignored %d files outside the class folders (%s)", root, len(loose), ", ".join(loose[:3]))
    df = frame(rows, f"class folders {root}")
    for key in classes:
        if not (df["class_name"] == key).any():
            log.warning("%s: class '%s' has no images", found[key], key)
    return _split_per_class(df, val_fraction, test_fraction, seed)


def folder_manifest(root: str | Path, disease: str, stage: int | None = None, val_fraction: float = 0.1,
                    test_fraction: float = 0.2, seed: int = 0, source: str = "folder",
                    on_error: str = "raise", skipped: list[dict] | None = None) -> pd.DataFrame:
    """Every image under `root` (recursive) with one label; stage None = unknown (see the module docstring)."""
    BadInput(on_error, skipped)  # validates on_error; a folder listing has no bad rows of its own
    root = require_dir(Path(root), "image folder")
    labels = _labels(disease, stage, f"folder {root}")
    df = frame(_image_rows(root, root, labels, source, str(disease)), f"image folder {root}")
    return _split_per_class(df, val_fraction, test_fraction, seed)


def user_manifest(path: str | Path, known_diseases: set[str] | None = None, on_error: str = "raise",
                  skipped: list[dict] | None = None) -> pd.DataFrame:
    """An existing manifest (paths relative to its folder), validated row by row by `read_manifest`."""
    bad = BadInput(on_error, skipped)
    path = Path(path)
    # data.known_diseases=ORPHA:870 (one id) is a list of one, not a set of its characters
    known = (None if known_diseases is None else set(known_diseases) if isinstance(known_diseases, (set, frozenset))
             else set(disease_list(known_diseases, "data.known_diseases")))
    df, report = read_manifest(path, known_diseases=known, on_error=on_error, check_files=True)
    for line, reason in report.skipped:
        bad.skipped.append({"where": f"{path}:{line}", "path": "", "reason": reason})
    df = df.copy()
    df["lesion_count"] = [("" if int(v) < 0 else int(v)) for v in df["lesion_count"]]
    df["source"] = [s if isinstance(s, str) and s else "manifest" for s in df.get("source", [""] * len(df))]
    if "stage_known" not in df.columns:
        df["stage_known"] = True
    df["_where"] = [f"{path} (row of {p})" for p in df["path"]]
    unnamed = int((df["identity"].astype(str).str.strip() == "").sum())
    if unnamed:  # the leakage check keeps a person's photos in one split only when it knows the person
        log.warning("%s: %d of %d rows name no identity; their splits are taken as given, so one person's photos "
                    "may sit in train and test (fill the identity column to have that refused)", path, unnamed,
                    len(df))
    return df
