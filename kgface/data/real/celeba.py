"""CelebA as healthy faces (Liu et al., ICCV 2015): 202,599 aligned celebrity photos, 40 binary attributes.

Layout (torchvision's, the official Google Drive one with Anno/ and Eval/, or Kaggle's nested images folder):

    ROOT/img_align_celeba/000001.jpg ...      (or ROOT/Img/img_align_celeba/, ROOT/img_align_celeba/img_align_celeba/)
    ROOT/list_attr_celeba.txt                 (or ROOT/Anno/): line 1 the count, line 2 the 40 attribute names,
                                              then `000001.jpg -1  1  1 ...` (+-1 padded with spaces)
    ROOT/list_eval_partition.txt              optional (or ROOT/Eval/): `000001.jpg 0`, 0/1/2 = train/val/test
    ROOT/identity_CelebA.txt                  optional (or ROOT/Anno/): `000001.jpg 2880`

Every row is disease=healthy, stage 0, severity 0. `filters` keeps images whose attributes have the given values
(`{Eyeglasses: -1, Wearing_Hat: -1}`); `limit` then keeps a deterministic pseudo-random subset of that many images
(hashed by file name and seed, so every split is represented), in file order. Without the partition file the split is
drawn by identity (when identity_CelebA.txt is present) or by image.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path

import pandas as pd

from ...errors import UserError
from ..manifest import safe_relpath
from .common import (BadInput, assign_splits, check_fractions, check_identity_splits, frame, hashed_subset,
                     listed_image, read_label_text)

log = logging.getLogger(__name__)

PARTITIONS = {"0": "train", "1": "val", "2": "test"}
IMAGE_DIRS = ("img_align_celeba", "Img/img_align_celeba", "img_align_celeba/img_align_celeba")


def _find(root: Path, name: str, subdirs: tuple[str, ...]) -> Path | None:
    for sub in ("", *subdirs):
        path = root / sub / name
        if path.is_file():
            return path
    return None


def _image_dir(root: Path, images: str | None) -> Path:
    candidates = [images] if images else list(IMAGE_DIRS)
    for sub in candidates:
        path = root / sub
        # Kaggle's zip nests img_align_celeba/img_align_celeba/: take the folder that holds the images
        if path.is_dir() and not (images is None and (path / "img_align_celeba").is_dir()):
            return path
    raise UserError(f"{root}: CelebA image folder not found (looked for {', '.join(candidates)}; docs/data.md)")


def _two_column(path: Path, bad: BadInput, allowed: dict | None = None) -> dict[str, str]:
    """`name value` lines of the partition / identity files -> {name: value}."""
    out, first = {}, {}
    for number, line in enumerate(read_label_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 2 or (allowed is not None and fields[1] not in allowed):
            expected = "'file partition' with partition 0/1/2" if allowed else "'file identity'"
            bad(where, fields[0], f"expected {expected}, got {line.strip()!r}")
            continue
        if fields[0] in out:  # the later line won in silence: an image moved into test (or to another person)
            if out[fields[0]] != fields[1]:
                bad(where, fields[0], f"{fields[0]} is listed again with {fields[1]} (line {first[fields[0]]}: "
                                      f"{out[fields[0]]}); keep one line per image")
            continue
        out[fields[0]], first[fields[0]] = fields[1], number
    return out


def _check_filters(filters: dict | None, names: list[str]) -> dict[str, int]:
    if filters is not None and not isinstance(filters, dict):  # dict() of a list was a traceback
        raise UserError(f"data.filters must map CelebA attributes to 1 or -1 (e.g. {{Eyeglasses: -1}}), got "
                        f"{filters!r}")
    checked = {}
    for key, value in dict(filters or {}).items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"CelebA filter: unknown attribute '{key}'{hint}; attributes: {' '.join(names)}")
        if value not in (-1, 1) or isinstance(value, bool):
            raise UserError(f"CelebA filter {key}: value must be 1 (has it) or -1 (has not), got {value!r}")
        checked[key] = int(value)
    return checked


def celeba_manifest(root: str | Path, filters: dict | None = None, limit: int | None = None, seed: int = 0,
                    val_fraction: float = 0.1, test_fraction: float = 0.1, images: str | None = None,
                    on_error: str = "raise", skipped: list[dict] | None = None) -> pd.DataFrame:
    """Manifest rows of CelebA as healthy faces; see the module docstring."""
    bad = BadInput(on_error, skipped)
    check_fractions(val_fraction, test_fraction)  # read only without list_eval_partition.txt; checked either way
    root = Path(root)
    attr_file = _find(root, "list_attr_celeba.txt", ("Anno",))
    if attr_file is None:
        raise UserError(f"{root}: list_attr_celeba.txt not found (in the root or Anno/; docs/data.md)")
    image_dir = _image_dir(root, images)
    lines = read_label_text(attr_file).splitlines()
    if len(lines) < 2:
        raise UserError(f"{attr_file}: expected the image count on line 1 and the attribute names on line 2")
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise UserError(f"{attr_file}:1: expected the image count, got {lines[0].strip()!r}") from None
    names = lines[1].split()
    if not names:
        raise UserError(f"{attr_file}:2: expected the attribute names")
    wanted = _check_filters(filters, names)
    columns = {n: i for i, n in enumerate(names)}
    records, listed = [], 0
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        listed += 1
        where = f"{attr_file}:{number}"
        if len(fields) != len(names) + 1 or any(v not in ("1", "-1") for v in fields[1:]):
            bad(where, fields[0], f"expected a file name and {len(names)} values of 1/-1")
            continue
        if all(fields[1 + columns[k]] == str(v) for k, v in wanted.items()):
            records.append((fields[0], where))
    if listed != declared:
        bad(f"{attr_file}:1", "", f"declares {declared} images but lists {listed} (truncated download?)")
    if limit is not None:
        if isinstance(limit, bool) or not str(limit).strip().isdigit() or int(limit) < 1:
            raise UserError(f"CelebA limit must be a positive number of images or null, got {limit}")
        keep = hashed_subset([name for name, _ in records], int(limit), seed)
        records = [r for r in records if r[0] in keep]
    part_file = _find(root, "list_eval_partition.txt", ("Eval",))
    id_file = _find(root, "identity_CelebA.txt", ("Anno",))
    partition = _two_column(part_file, bad, PARTITIONS) if part_file else None
    identity = _two_column(id_file, bad) if id_file else {}
    # as given, like acne04: `images` may be absolute or outside the root, where relative_to(root) would fail
    prefix = Path(images).as_posix() if images else image_dir.relative_to(root).as_posix()
    rows, seen = [], {}
    for name, where in records:
        rel = safe_relpath(name)
        if rel is None:
            bad(where, name, f"file name '{name}' escapes the image folder")
            continue
        path = listed_image(image_dir, prefix, rel, name, where, seen, bad)
        if path is None:
            continue
        if partition is not None and name not in partition:
            bad(where, name, f"image '{name}' has no line in {part_file.name}")
            continue
        seen[rel] = where
        rows.append({"path": f"{prefix}/{rel}", "abspath": str(path),
                     "identity": f"celeba:{identity[name]}" if name in identity else Path(rel).stem,
                     "disease": "healthy", "stage": 0, "severity": 0.0, "lesion_count": "",
                     "split": PARTITIONS[partition[name]] if partition is not None else "",
                     "source": "celeba", "phenotypes": {}, "stage_known": True, "_where": where})
    df = frame(rows, f"CelebA {root}" + (f" with filters {wanted}" if wanted else ""))
    unnamed = int(sum(1 for name, _ in records if name not in identity)) if len(df) else 0
    if partition is None and unnamed:  # ~20 photos per celebrity: split by image, one person lands in train and test
        log.warning("CelebA: %d images have no person in %s; each is its own identity, so the split by identity can "
                    "put one person in train and test (give identity_CelebA.txt, or list_eval_partition.txt)",
                    unnamed, id_file.name if id_file else "identity_CelebA.txt (not found)")
    if partition is None:
        splits = assign_splits(df["identity"], val_fraction, test_fraction, seed)
        df["split"] = df["identity"].map(splits)
    else:  # the official partition is by identity; a person in two of its splits would leak
        df = check_identity_splits(df, bad)
    if limit is not None and len(df) < len(records):  # skipped rows of the chosen subset are not refilled
        log.warning("CelebA: %d images kept of the limit=%s chosen: the rest were skipped (skipped.csv)", len(df),
                    limit)
    log.info("CelebA: %d of %d listed images kept (filters %s, limit %s)", len(df), listed, wanted or "none", limit)
    return df
