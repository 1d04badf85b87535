"""ACNE04 (Wu et al., ICCV 2019): 1,457 face photos graded 0-3 (Hayashi) with a lesion count each.

Layout (either the VOC or the flat "Classification" release):

    ROOT/JPEGImages/levle0_271.jpg ...                     (sic: "levle")
    ROOT/ImageSets/Main/NNEW_trainval_{0..4}.txt           or  ROOT/NNEW_trainval_{0..4}.txt
    ROOT/ImageSets/Main/NNEW_test_{0..4}.txt               or  ROOT/NNEW_test_{0..4}.txt

Each label line is `filename grade lesion_count` (whitespace-separated). Labels: disease = acne vulgaris
(MONDO:0011438), stage = grade (grade 0 is MILD acne, not healthy), severity = severity_from_count(lesion_count)
(kgface.data.phantom.acne, the one monotone count <-> severity map) where the count's Hayashi grade is the labelled
grade, else the grade itself (a severity inside the stage's bin; since 2026-12-07), lesion_count as given. Such a
row keeps both and is flagged `grade_matches_count=False` (logged, counted).
Split: NNEW_test_k -> test; NNEW_trainval_k -> train, with round(val_fraction n) images moved to val by hashed image
id. ACNE04 has no person ids: identity = the file stem, so "by identity" splits are per image.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from ...errors import UserError
from ..manifest import N_STAGES, safe_relpath
from ..phantom.acne import grade_from_count, severity_from_count
from .common import (BadInput, assign_splits, check_identity_splits, frame, listed_image, read_label_text,
                     require_dir)

log = logging.getLogger(__name__)

ACNE_ID = "MONDO:0011438"
N_FOLDS = 5


def _label_file(root: Path, kind: str, fold: int) -> Path:
    name = f"NNEW_{kind}_{fold}.txt"
    for candidate in (root / "ImageSets" / "Main" / name, root / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"{root}: ACNE04 label file {name} not found in ImageSets/Main/ or the root (docs/data.md)")


def acne04_manifest(root: str | Path, fold: int = 0, val_fraction: float = 0.1, seed: int = 0,
                    images: str = "JPEGImages", on_error: str = "raise",
                    skipped: list[dict] | None = None) -> pd.DataFrame:
    """Manifest rows of ACNE04 fold `fold` (0..4); see the module docstring for the labels and splits."""
    bad = BadInput(on_error, skipped)
    root = Path(root)
    try:  # data.fold=a was a ValueError traceback; '1' (quoted) read as not 1
        number = float(fold) if not isinstance(fold, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (number.is_integer() and 0 <= number < N_FOLDS):
        raise UserError(f"data.fold={fold!r}: ACNE04 folds are 0..{N_FOLDS - 1}")
    fold = int(number)
    image_dir = require_dir(root / images, f"ACNE04 image folder {images}/")
    rows, seen, mismatched = [], {}, 0
    for kind, split in (("trainval", "train"), ("test", "test")):
        label_file = _label_file(root, kind, int(fold))
        for number, line in enumerate(read_label_text(label_file).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{label_file}:{number}"
            fields = line.split()
            if len(fields) != 3:
                bad(where, fields[0] if fields else "", f"expected 'filename grade lesion_count', got {line.strip()!r}")
                continue
            name, grade_text, count_text = fields
            rel = safe_relpath(name)
            if rel is None:
                bad(where, name, f"file name '{name}' escapes the image folder")
                continue
            try:
                grade, count = int(grade_text), int(count_text)
            except ValueError:
                bad(where, name, f"grade '{grade_text}' and lesion count '{count_text}' must be integers")
                continue
            if not 0 <= grade < N_STAGES:
                bad(where, name, f"grade {grade} is outside 0..{N_STAGES - 1}")
                continue
            if count < 0:
                bad(where, name, f"lesion count {count} is negative")
                continue
            path = listed_image(image_dir, images, rel, name, where, seen, bad)
            if path is None:
                continue
            seen[rel] = where
            matches = grade_from_count(count) == grade
            mismatched += not matches
            # the grade is the label: where the count's bin disagrees, its severity would sit in another stage's
            # range (stage g owns [g - 0.5, g + 0.5)), so the row gets its grade's severity instead
            rows.append({"path": f"{Path(images).as_posix()}/{rel}", "abspath": str(path),
                         "identity": Path(rel).stem, "disease": ACNE_ID, "stage": grade,
                         "severity": severity_from_count(count) if matches else float(grade),
                         "lesion_count": count, "split": split,
                         "source": "acne04", "phenotypes": {}, "stage_known": True,
                         "grade_matches_count": matches, "_where": where})
    # identity is the file stem: x.jpg in trainval and x.png in test would be one face in two splits
    df = check_identity_splits(frame(rows, f"ACNE04 {root} fold {fold}"), bad)
    trainval = df["split"] == "train"
    splits = assign_splits(df.loc[trainval, "identity"], val_fraction, 0.0, seed)
    df.loc[trainval, "split"] = df.loc[trainval, "identity"].map(splits)
    if mismatched:
        log.warning("ACNE04 fold %d: %d of %d labelled grades differ from the Hayashi grade of the lesion count; "
                    "kept as labelled with the grade's severity, flagged grade_matches_count=False", fold,
                    mismatched, len(df))
    return df
