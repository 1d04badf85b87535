"""Build a preprocessed real dataset from a `conf/data/*.yaml` node.

    OUT/images/...png     every usable image, face-cropped to size x size RGB (mirrors the source's relative paths)
    OUT/manifest.csv      the manifest (docs/data.md), validated as it will be read, then renamed in last
    OUT/skipped.csv       where, path, reason of every skipped row or file (on_error=skip), and the dropped copies of
                          one photo saved twice under one label (either mode); header only when none
    OUT/dataset.json      the config, counts by split / disease / stage, conversions and detector misses

Options of the config node other than name, size, on_error, detector and margin are the adapter's keyword arguments.
Every image is decoded here, before any training, so an unreadable file is an error or a counted skip now and never
a crash mid-epoch.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ...cache import move_in, staging_folder, write_json_atomic
from ...config import disease_list
from ...errors import UserError
from ..images import ImageError, face_box, get_detector, load_rgb
from ..manifest import (ATLAS_FILE, ManifestError, marked_heldout, read_manifest, safe_relpath, stage_known,
                        write_manifest)
from .acne04 import acne04_manifest
from .celeba import celeba_manifest
from .common import SKIP_COLUMNS, BadInput, check_duplicate_images, check_identity_splits
from .folders import class_folder_manifest, folder_manifest, user_manifest

log = logging.getLogger(__name__)

ADAPTERS = {
    "acne04": acne04_manifest,
    "disease_faces": class_folder_manifest,
    "class_folders": class_folder_manifest,
    "celeba": celeba_manifest,
    "folder": folder_manifest,
    "manifest": user_manifest,
}
BUILD_KEYS = ("name", "size", "on_error", "detector", "margin", "heldout")  # heldout: kgface.train's, not the adapter's


@dataclass
class BuildResult:
    manifest: Path
    rows: int
    skipped: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _plain(cfg_data: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf
        from omegaconf.errors import MissingMandatoryValue
    except ImportError:  # pragma: no cover - omegaconf comes with hydra-core
        return dict(cfg_data)
    if isinstance(cfg_data, DictConfig):
        try:
            return OmegaConf.to_container(cfg_data, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as exc:  # full_key is `root` for a bare node, `data.root` inside a job's config
            key = exc.full_key if str(exc.full_key).startswith("data.") else f"data.{exc.full_key}"
            raise UserError(f"{key}: a value is required (e.g. {key}=/path)") from None
    return dict(cfg_data)


def manifest_from_config(cfg_data: Any, on_error: str | None = None,
                         skipped: list[dict] | None = None) -> pd.DataFrame:
    """The adapter's rows (paths in the source dataset) for a data config node, without preprocessing."""
    opts = _plain(cfg_data)
    name = opts.get("name")
    if name not in ADAPTERS:
        raise UserError(f"data.name '{name}' is not a real-dataset adapter; choose one of {', '.join(ADAPTERS)}")
    adapter = ADAPTERS[name]
    kwargs = {k: v for k, v in opts.items() if k not in BUILD_KEYS}
    params = inspect.signature(adapter).parameters
    accepted = set(params) - {"on_error", "skipped"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UserError(f"data={name}: unknown options {unknown}; accepted: {sorted(accepted)}")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and kwargs.get(k) is None]
    missing += [k for k, v in kwargs.items() if v == "???"]
    if missing:
        raise UserError(f"data={name}: {missing} must be set (e.g. data.{missing[0]}=/path)")
    return adapter(**kwargs, on_error=on_error or opts.get("on_error", "raise"), skipped=skipped)


def _output_name(rel: str, used: set[str]) -> str:
    safe = safe_relpath(rel)
    if safe is None:  # an image folder given absolute or outside the root: mirror it inside OUT/images all the same
        safe = "/".join(p.replace(":", "") for p in PurePosixPath(rel.replace("\\", "/")).parts
                        if p not in ("/", ".", "..")) or "image"
    stem = PurePosixPath(safe).with_suffix("").as_posix()
    name = f"images/{stem}.png"
    if name.lower() in used:  # a.jpg and a.png in one folder, or names differing only in case
        name = f"images/{stem}-{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:8]}.png"
    used.add(name.lower())
    return name


def _check_heldout(heldout: set[str], present: set[str], when: str = "") -> None:
    if heldout and (not heldout <= present or heldout == present):
        raise UserError(f"data.heldout={sorted(heldout)}: name diseases of the data{when} "
                        f"({', '.join(sorted(present))}), not healthy, and leave at least one for the generator to "
                        "train on")


def _mark_heldout(df: pd.DataFrame, heldout: set[str], opts: dict) -> pd.DataFrame:
    """The built manifest's `heldout` column says what data.heldout says (evaluation reads the column, training reads
    data.heldout): a source manifest that holds out other diseases (a phantom manifest imported with data=manifest)
    is refused, as is a data.heldout naming no disease of the data or every one of them."""
    _check_heldout(heldout, set(df["disease"]) - {"healthy"})
    if "heldout" in df.columns:
        marked = marked_heldout(df)
        if marked != heldout:
            source = opts.get("path") or "the source manifest"
            raise UserError(f"{source}: its heldout column holds out {sorted(marked)}, data.heldout={sorted(heldout)}"
                            f": the generator would train on what evaluation counts as held out; set data.heldout="
                            f"[{','.join(sorted(marked))}] (or clear the column)")
    if heldout or "heldout" in df.columns:
        df = df.assign(heldout=["true" if d in heldout else "false" for d in df["disease"]])
    return df


def build_real_dataset(cfg_data: Any, out_dir: str | Path, size: int | None = None,
                       on_error: str | None = None, detector: str | None = None) -> BuildResult:
    """Build OUT/{images/, manifest.csv, skipped.csv, dataset.json} from a data config node (see the module docs).
    `size`, `on_error` and `detector` override the node's values."""
    opts = _plain(cfg_data)
    size = size if size is not None else opts.get("size", 64)
    if isinstance(size, bool) or not str(size).strip().isdigit():
        raise UserError(f"data.size={size!r}: a whole number of pixels, e.g. 64")
    size = int(size)
    on_error = on_error or opts.get("on_error", "raise")
    detector_name = detector or opts.get("detector", "none")
    try:
        margin = float(opts.get("margin", 0.25))
    except (TypeError, ValueError):
        margin = -1.0
    if not margin >= 0:  # a crop side of 0 or less fails mid-build in Pillow, naming no key
        raise UserError(f"data.margin={opts.get('margin')!r}: a number >= 0 (the share of the face box added "
                        "around it)")
    if size < 1:
        raise UserError(f"data.size must be a positive number of pixels, got {size}")
    out_dir = Path(out_dir)
    if opts.get("name") == "manifest" and Path(str(opts.get("path"))).resolve() == (out_dir / "manifest.csv").resolve():
        raise UserError(f"data.path {opts['path']} is the manifest this build would overwrite; choose another out_dir")
    # called from Python, not through kgface.dataset: a user's own images/ or manifest.csv in OUT is still not ours
    from ...run_files import check_replaced_entries

    check_replaced_entries(out_dir, "the data set", tuple(f for f in SET_FILES if f != "cache_entries.json"),
                           ("dataset.json",))
    skipped: list[dict] = []
    bad = BadInput(on_error, skipped)
    face_detector = get_detector(detector_name)
    heldout = set(disease_list(opts.get("heldout"), "data.heldout", allow_empty=True) or [])
    df = manifest_from_config(opts, on_error=on_error, skipped=skipped)
    df = _mark_heldout(df, heldout, opts)
    n_listed = len(df) + len(skipped)
    df = check_duplicate_images(df, bad)  # byte-identical files under two names: one photo, one label, one split
    df = check_identity_splits(df, bad)  # every adapter; those with given splits check their own already
    built = (out_dir / "images").resolve()
    inside = next((p for p in df["abspath"] if Path(p).resolve().is_relative_to(built)), None)
    if inside is not None:  # they would be read as inputs and written over, or removed below with the old images
        raise UserError(f"input image {inside} lies in {out_dir / 'images'}, the folder this build writes; point "
                        "data.root (or the manifest) at images outside it, or build into another folder")
    # built whole in a staging folder inside OUT and moved in at the end: a build that stops midway (a bad image,
    # Ctrl-C) leaves the data set already in OUT as it was
    with staging_folder(out_dir, ".dataset-") as staging:
        return _build_into(staging, out_dir, opts, df, bad, skipped, n_listed, size, on_error, detector_name,
                           face_detector, margin, heldout)


# a rebuild into a used OUT replaces these: an old image the new manifest does not list, or a phantom build's atlas
# (an evaluator fitted on the manifest reads it), contact sheet or cache record must not stay beside the new set
SET_FILES = ("manifest.csv", "dataset.json", "skipped.csv", ATLAS_FILE, "images", "contact_sheet.png",
             "cache_entries.json")


def _build_into(staging: Path, out_dir: Path, opts: dict, df: pd.DataFrame, bad: BadInput, skipped: list[dict],
                n_listed: int, size: int, on_error: str, detector_name: str, face_detector, margin: float,
                heldout: set[str]) -> BuildResult:
    rows, used, modes, no_face, upscaled = [], set(), Counter(), 0, []
    for row in tqdm(df.to_dict("records"), desc=f"data={opts.get('name')}", unit="img", disable=None):
        try:
            img = load_rgb(row["abspath"])
        except ImageError as exc:
            if on_error == "raise":
                raise ImageError(f"{exc}; listed at {row['_where']}; fix or remove it, or set on_error=skip") from None
            bad(row["_where"], row["path"], str(exc))
            continue
        modes[img.info.get("source_mode", "RGB")] += 1
        (left, top, side, _), found = face_box(img, face_detector, margin)
        no_face += face_detector is not None and not found
        if side < size:  # a crop smaller than the set's size is enlarged: softer than the rest, which can read as a cue
            upscaled.append(side)
        out_name = _output_name(row["path"], used)
        target = staging / out_name
        target.parent.mkdir(parents=True, exist_ok=True)
        crop = img.crop((left, top, left + side, top + side))
        crop.resize((size, size), Image.Resampling.LANCZOS).save(target, format="PNG")
        out = {k: v for k, v in row.items() if k not in ("abspath", "_where")}
        rows.append({**out, "path": out_name, "original": row["path"]})
    if not rows:
        first = skipped[0]["reason"] if skipped else "no rows"
        raise ManifestError(f"data={opts.get('name')}: every image was skipped ({len(skipped)}); first: {first}")
    pd.DataFrame(skipped, columns=SKIP_COLUMNS).to_csv(staging / "skipped.csv", index=False)
    converted = {m: n for m, n in sorted(modes.items()) if m != "RGB"}
    if converted:
        log.info("converted to RGB: %s", ", ".join(f"{n} {m}" for m, n in converted.items()))
    if no_face:
        log.warning("%s: no face found in %d of %d images; those were centre-cropped", detector_name, no_face,
                    len(rows))
    if upscaled:
        log.warning("data=%s: %d of %d images' crops were smaller than data.size=%d (smallest %d px) and were "
                    "enlarged, so they are softer than the rest; a smaller data.size avoids it", opts.get("name"),
                    len(upscaled), len(rows), size, min(upscaled))
    if skipped:
        log.warning("data=%s: skipped %d (listed in %s)", opts.get("name"), len(skipped), out_dir / "skipped.csv")
    # the manifest is validated as downstream stages will read it (in the staging folder, beside its images)
    manifest, tmp = out_dir / "manifest.csv", staging / "manifest.csv"
    write_manifest(rows, tmp)
    try:
        final, _report = read_manifest(tmp)
    except ManifestError as exc:  # named as the file it would become, not the staged one
        raise ManifestError(f"the built manifest does not validate: {str(exc).replace(str(tmp), str(manifest))}"
                            ) from None
    # data.heldout once more on what was built: skipped photos can leave a held-out disease, or every other one, empty
    _check_heldout(heldout, set(final["disease"]) - {"healthy"}, " after the skipped images")
    summary = {
        "config": opts, "size": size, "detector": detector_name, "listed": n_listed, "rows": len(final),
        "skipped": len(skipped), "converted_to_rgb": converted, "faces_not_found": int(no_face),
        "upscaled": len(upscaled),
        "splits": dict(Counter(final["split"])), "diseases": dict(Counter(final["disease"])),
        # graded rows only: a disease_faces row's stage 2 is a placeholder (stage_known false), not a grade
        "stages": {str(k): int(v) for k, v in sorted(Counter(final["stage"][stage_known(final)]).items())},
        "stage_unknown": int((~stage_known(final)).sum()),
    }
    write_json_atomic(staging / "dataset.json", summary)
    # moved in with the manifest last, so it only names files that exist; the old set's manifest goes first
    move_in(staging, out_dir, SET_FILES, last="manifest.csv")
    return BuildResult(manifest=manifest, rows=len(final), skipped=skipped, summary=summary)
