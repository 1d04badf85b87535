"""What every real-dataset adapter shares: bad-input routing, safe relative paths, deterministic splits.

An adapter returns a DataFrame with the manifest columns (`path` relative to the dataset root, posix), an `abspath`
column (the source file) and a private `_where` column (label file and line, or the file, for messages); the builder
(`build.py`) turns it into a preprocessed dataset. Bad input goes through `BadInput`: with on_error="raise" a
ManifestError naming the file and line, with on_error="skip" a record {where, path, reason} in the caller's list
and a warning in the log.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ...cache import file_sha256
from ...errors import UserError
from ..manifest import N_STAGES, ManifestError

log = logging.getLogger(__name__)

def _avif() -> tuple[str, ...]:
    from PIL import features

    return (".avif",) if features.check("avif") else ()  # Pillow reads AVIF only in builds that carry it


IMAGE_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", *_avif())
# photos Pillow cannot open (phones' HEIC, raw camera files, vector art): left out of a listed folder with a warning,
# not the info line of a stray notes.txt, since a class shrinks by them
UNREAD_PHOTO_EXTS = tuple(e for e in (".heic", ".heif", ".jxl", ".dng", ".cr2", ".nef", ".arw", ".raw", ".svg", ".psd",
                                       ".avif") if e not in IMAGE_EXTS)
ON_ERROR = ("raise", "skip")
UNKNOWN_STAGE = 2          # the stage written when a photo's stage is unknown (stage_known=False); docs/data.md
SKIP_COLUMNS = ["where", "path", "reason"]


class BadInput:
    """Routes one bad row or file to an error (on_error=raise) or a counted, logged skip (on_error=skip)."""

    def __init__(self, on_error: str = "raise", skipped: list[dict] | None = None):
        if on_error not in ON_ERROR:
            raise UserError(f"on_error must be one of {', '.join(ON_ERROR)}, got '{on_error}'")
        self.on_error = on_error
        self.skipped = skipped if skipped is not None else []

    def __call__(self, where: str, path: str, reason: str) -> None:
        if self.on_error == "raise":
            raise ManifestError(f"{where}: {reason}; fix it or set on_error=skip")
        self.skipped.append({"where": where, "path": path, "reason": reason})
        log.warning("%s skipped: %s", where, reason)


def listed_image(image_dir: Path, prefix: str, rel: str, name: str, where: str, seen: dict, bad: BadInput
                 ) -> Path | None:
    """The image file a label line names (`rel`, from safe_relpath). If it repeats an earlier line's image (`seen`:
    rel -> where, kept by the caller) or does not exist, `bad` is told (it raises, or records a skip and this returns
    None). `prefix` names the image folder in the message, as the reader shows it to the user."""
    if rel in seen:
        bad(where, name, f"duplicate image '{name}' (first at {seen[rel]})")
        return None
    path = image_dir / rel
    if not path.is_file():
        bad(where, name, f"image {prefix}/{rel} does not exist")
        return None
    return path


def read_label_text(path: Path) -> str:
    """A dataset's label file as text (UTF-8, a BOM allowed), or a one-line error naming it."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the label file as UTF-8") from None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise UserError(f"{path}: cannot read the label file ({type(e).__name__}: {e.strerror})") from None


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: {what} not found (docs/data.md shows the expected layout)")
    return path


# a subfolder holding one of these is a kgface output (a built data set, a generated set, a trial; `.hydra/`: any
# Hydra job's folder, a train run's too), e.g. Hydra's outputs/ under a photo folder built from twice: its images
# are copies, renders or generations
OUTPUT_MARKS = ("dataset.json", "generation.json", "trial.json", ".hydra")


def _output_mark(dirnames: list[str], filenames: list[str]) -> str | None:
    found = [m for m in OUTPUT_MARKS if m in filenames or m in dirnames]
    if not found and {"data.json", "profiles.json"} <= set(filenames):  # a train run's folder (one run from code)
        found = ["data.json"]
    return found[0] if found else None


def only_outputs(folder: Path) -> bool:
    """A folder that is a kgface output itself (a build into `ROOT/built`, a train run under the class root), or whose
    every image lies in kgface outputs beneath it (e.g. Hydra's outputs/ after a build run from the photo folder
    itself)."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree: read once (as list_images does), never looped
            dirnames[:] = []
            continue
        seen.add(real)
        if _output_mark(dirnames, filenames):
            # the folder itself: an output whatever it holds (list_images reads a folder it is given, marks or not)
            return real == os.path.realpath(folder) or not list_images(folder)[0]
    return False


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under `folder` (recursive, sorted) and the other, non-hidden files (ignored by the adapters).
    Subfolders that hold a kgface output (OUTPUT_MARKS) are left out, with a warning."""
    images, other, seen = [], [], set()
    # linked folders are followed (a dataset assembled from links is supported); each real folder is read once,
    # so a link back up the tree does not loop
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        mark = _output_mark(dirnames, filenames) if Path(dirpath) != Path(folder) else None
        if mark is not None:
            log.warning("%s: a kgface output folder (%s), not photos: left out", dirpath, mark)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            (images if path.suffix.lower() in IMAGE_EXTS else other).append(path)
    return images, other


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()


def check_fractions(val_fraction: float, test_fraction: float = 0.0) -> None:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        try:
            float(f)
        except (TypeError, ValueError):
            raise UserError(f"{name} must be a number in [0, 1), got {f!r}") from None
        if not 0.0 <= float(f) < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {f}")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise UserError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")


def assign_splits(keys: Iterable[str], val_fraction: float, test_fraction: float = 0.0, seed: int = 0) -> dict:
    """Split the distinct keys: the first round(test_fraction n) in SHA-256(seed:key) order go to test, the next
    round(val_fraction n) to val, the rest to train. Deterministic, independent of input order. Returns key -> split."""
    check_fractions(val_fraction, test_fraction)
    unique = sorted(set(keys), key=lambda k: _rank(seed, k))
    n = len(unique)
    n_test = int(math.floor(float(test_fraction) * n + 0.5))
    n_val = int(math.floor(float(val_fraction) * n + 0.5))
    return {k: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, k in enumerate(unique)}


def hashed_subset(keys: list[str], limit: int, seed: int = 0) -> set[str]:
    """A deterministic pseudo-random subset of `limit` keys (the first in SHA-256(seed:key) order)."""
    return set(sorted(keys, key=lambda k: _rank(seed, k))[: int(limit)])


def check_stage(stage, what: str) -> int:
    if isinstance(stage, bool):  # `data.stage=true` is YAML's boolean, not stage 1
        raise UserError(f"{what}: stage must be an integer 0..{N_STAGES - 1}, got {stage!r}")
    try:
        value = int(stage)
    except (TypeError, ValueError):
        raise UserError(f"{what}: stage must be an integer 0..{N_STAGES - 1}, got {stage!r}") from None
    if not 0 <= value < N_STAGES or value != float(stage):
        raise UserError(f"{what}: stage must be an integer 0..{N_STAGES - 1}, got {stage!r}")
    return value


def frame(rows: list[dict], what: str) -> pd.DataFrame:
    if not rows:
        raise ManifestError(f"{what}: no usable images (see the skipped rows in the log)")
    return pd.DataFrame(rows)


def check_identity_splits(df: pd.DataFrame, bad: BadInput) -> pd.DataFrame:
    """A non-empty identity in two splits is bad input (a person seen in training and tested on leaks): an error
    naming both places, or the later rows skipped. Empty identities are unknown people and pass."""
    first, keep = {}, []
    for i, (ident, split, where, path) in enumerate(zip(df["identity"], df["split"], df["_where"], df["path"])):
        ident = "" if ident is None else str(ident)
        if ident and first.get(ident, (split,))[0] != split:
            bad(where, path, f"identity '{ident}' is in {split} here and in {first[ident][0]} at {first[ident][1]}; "
                             "put all of a person's images in one split")
            continue
        if ident:
            first.setdefault(ident, (split, where))
        keep.append(i)
    return df if len(keep) == len(df) else df.iloc[keep].reset_index(drop=True)  # the first place always stays


def _content_digest(path: str) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None  # unreadable: the decoding step reports it with its row


def _healthy_looking(label: dict) -> bool:
    """Healthy, or a disease at stage 0 with no lesion counted, or (uncounted) one whose stage 0 shows no signs
    (acne's stage 0 is mild acne: up to 5 lesions)."""
    from ...prompts.wording import stage_levels

    if label["disease"] == "healthy":
        return True
    try:
        if int(label["stage"]) != 0:
            return False
    except (TypeError, ValueError):
        return False
    count = label.get("lesion_count", "")
    return count == "0" or (count in ("", "-1") and not stage_levels(label["disease"])[0].signs)


# a photo's label: one file listed twice with any of these different is one face with two labels
LABEL_COLUMNS = ("disease", "stage", "stage_known", "severity", "lesion_count", "phenotypes")


def _cell(value) -> str:
    """A label cell as text, blank for missing (NaN never equals itself), a number as %g (8, 8.0 and '8' alike)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:g}" if math.isfinite(number) else text


def check_duplicate_images(df: pd.DataFrame, bad: BadInput) -> pd.DataFrame:
    """The same photo listed twice (byte-identical files under two names, e.g. `img12.jpg` and `img12 (1).jpg` of a
    web-collected folder): with the same label (LABEL_COLUMNS: disease, stage, severity, lesion count, ...) the later
    copies are dropped and listed in skipped.csv (as two identities they could land in train and test); with another
    label it is bad input naming both places and what differs (one photo cannot be both), unless both labels are
    healthy-looking (healthy, or a disease at a stage 0 without signs or lesions)."""
    first, keep = {}, []
    columns = [c for c in LABEL_COLUMNS if c in df.columns]
    labels = [dict(zip(columns, map(_cell, row))) for row in zip(*(df[c] for c in columns))]
    splits = list(df["split"]) if "split" in df.columns else [""] * len(df)
    for i, (path, where, abspath) in enumerate(zip(df["path"], df["_where"], df["abspath"])):
        digest = _content_digest(abspath)
        if digest is None or digest not in first:
            if digest is not None:
                first[digest] = i
            keep.append(i)
            continue
        j = first[digest]
        if labels[i] == labels[j]:
            bad.skipped.append({"where": where, "path": path, "reason": f"a copy of {df['path'].iloc[j]} "
                                                                        f"(at {df['_where'].iloc[j]}): only that one "
                                                                        "is read"})
            log.warning("%s skipped: a copy of %s", where, df["path"].iloc[j])
            continue
        if _healthy_looking(labels[i]) and _healthy_looking(labels[j]):
            # a stage-0 face looks healthy by definition (a phantom draws a disease's stage-0 face and the healthy
            # face of one identity alike): both labels hold, within one split (the same pixels in train and test
            # leak, whatever identities the rows name)
            if splits[i] != splits[j]:
                bad(where, path, f"the same file as {df['path'].iloc[j]} (at {df['_where'].iloc[j]}), in split "
                                 f"{splits[i]} here and {splits[j]} there; one face in two splits leaks from "
                                 "training into evaluation: remove one copy or put both in one split")
                continue
            keep.append(i)
            continue
        differ = [c for c in columns if labels[i][c] != labels[j][c]]
        said = ", ".join(f"{c} {labels[i][c] or '(empty)'} here and {labels[j][c] or '(empty)'} there" for c in differ)
        bad(where, path, f"the same file as {df['path'].iloc[j]} (at {df['_where'].iloc[j]}), labelled {said}; "
                         "remove the wrongly labelled copy")
    return df if len(keep) == len(df) else df.iloc[keep].reset_index(drop=True)
