"""What the evaluator reads: images, labels and the rows each head learns from; the content digests that key the
cache and list what an evaluator learned from; blurred copies of faces; the training caption of a real image.

Images are uint8 NCHW RGB tensors of one size; a set is a manifest (path or DataFrame, docs/data.md). Errors are
`EvaluatorInputError`: one line naming the file, row or key and what to do.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..data.manifest import read_manifest
from ..errors import UserError
from ..kg import HEALTHY, FacialProfile
from ..prompts import caption
from .clip_model import gaussian_blur_float

class EvaluatorInputError(UserError):
    """Images or labels the evaluator cannot use: missing files, mixed sizes, empty sets, unknown labels."""


def manifest_hash(path: str | os.PathLike) -> str:
    """SHA-256 of the manifest file's content (the evaluator's cache key for its data), but for a `heldout` column:
    which diseases the generator never trains on is not what the evaluator learns (it learns every disease), and
    data.heldout=[ORPHA:199] refitted the CLIP and heads (an hour on the benchmark) on the same faces and labels. A
    manifest without the column hashes its bytes, as before."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise EvaluatorInputError(f"{path}: manifest not found") from None
    header = raw.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
    if "heldout" not in [h.strip().strip('"') for h in header]:
        return hashlib.sha256(raw).hexdigest()
    df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False).drop(columns="heldout")
    return hashlib.sha256(df.to_csv(index=False).encode("utf-8")).hexdigest()


def image_digest(path: str | os.PathLike) -> str:
    """SHA-256 (16 hex) of an image file's bytes: the same picture under another name or folder is the same image."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        raise EvaluatorInputError(f"{path}: image file does not exist") from None


def learned_digests(df: pd.DataFrame, atlas: pd.DataFrame | None = None) -> list[str]:
    """Sorted content digests of the images an evaluator fitted on `df` learns from: train and val rows, the atlas."""
    paths = [*df["abspath"][df["split"].isin(["train", "val"])], *([] if atlas is None else atlas["abspath"])]
    return sorted({image_digest(p) for p in paths})


def set_name(df: pd.DataFrame, what: str) -> str:
    """A set as its errors name it: "real set (runs/x/manifest.csv)", or `what` alone for a frame built in code."""
    manifest = df.attrs.get("manifest")
    return f"{what} ({manifest})" if manifest else what


def split_counts(df: pd.DataFrame) -> str:
    """Rows per split as an error shows them ("train 40, val 8"), or "no rows"."""
    return ", ".join(f"{k} {v}" for k, v in df["split"].value_counts().items()) or "no rows"


def set_image_size(paths: Sequence[str]) -> tuple[int, int] | None:
    """(width, height) shared by every image of a set, read from their headers; None when they differ or one cannot
    be read (load_images then names the file when the set is read)."""
    sizes = set()
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.add(im.size)
        except OSError:
            return None
        if len(sizes) > 1:
            return None
    return next(iter(sizes), None)


def as_frame(source) -> pd.DataFrame:
    """A manifest path or an already-read manifest DataFrame, as a DataFrame."""
    if isinstance(source, pd.DataFrame):
        return source
    return read_manifest(source)[0]


def check_real(df: pd.DataFrame, what: str) -> None:
    """Generated images never train the evaluator, nor stand in as its real faces: a one-line error naming them."""
    if "source" not in df:
        return
    made = (df["source"].astype(str).str.strip().str.lower() == "generated").to_numpy()
    if made.any():
        first = df["path"].iloc[int(np.flatnonzero(made)[0])] if "path" in df else "?"
        raise EvaluatorInputError(f"{what}: {int(made.sum())} rows have source 'generated' (first: {first}); the "
                                  "evaluator learns from and compares with real images only: pass generated images "
                                  "as generated=")


def load_images(paths: Sequence[str], size: int | Sequence[int] | None = None, fit: bool = False) -> torch.Tensor:
    """uint8 NCHW RGB images; every image must exist and share one size (the first one's, or `size`: an int for a
    square, or (height, width) as a tensor's shape[-2:]). fit: an image of another size is centre-cropped to the
    size's aspect and resized to it instead of refused (pictures shown beside others: a source photo, a nearest
    training image)."""
    if len(paths) == 0:
        raise EvaluatorInputError("no images to score (empty set)")
    out, first = [], None
    for p in paths:
        try:
            with Image.open(p) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise EvaluatorInputError(f"{p}: image file does not exist") from None
        except OSError as exc:
            raise EvaluatorInputError(f"{p}: unreadable image ({exc})") from None
        want = first if size is None else (int(size), int(size)) if np.ndim(size) == 0 else (int(size[1]), int(size[0]))
        if want is not None and img.size != tuple(want) and fit:
            img = _fitted(img, tuple(want))
        if want is not None and img.size != tuple(want):
            raise EvaluatorInputError(f"{p}: image is {img.size[0]}x{img.size[1]}, expected {want[0]}x{want[1]} "
                                      "(all images of a set must share one size: resize this one or leave it out)")
        first = first or img.size
        out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(out)


def _fitted(img: Image.Image, want: tuple[int, int]) -> Image.Image:
    """`img` centre-cropped to the aspect of `want` (width, height) and resized to it."""
    w, h = img.size
    scale = min(w / want[0], h / want[1])
    cw, ch = round(want[0] * scale), round(want[1] * scale)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch)).resize(want, Image.LANCZOS)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images as uint8 0-255: uint8 passes through, float is read as 0-1 (what a VAE round trip gives)."""
    return images if images.dtype == torch.uint8 else (images.clamp(0, 1) * 255).round().to(torch.uint8)


def blur_sigmas(probe_cfg: dict | None, image_shape=None) -> list[float]:
    """evaluator.probe.blur as a list of sigmas (px), checked before anything trains: numbers > 0 whose kernel
    (2*ceil(3 sigma)+1, reflect-padded) fits inside images of `image_shape` (H, W) when given."""
    raw = (probe_cfg or {}).get("blur") or []
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise EvaluatorInputError(f"evaluator.probe.blur={raw!r}: give a list of Gaussian sigmas in px, e.g. "
                                  "[0.5,1.0] (or [] for none)")
    try:
        sigmas = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise EvaluatorInputError(f"evaluator.probe.blur={raw!r}: every sigma must be a number (px)") from None
    for v in sigmas:
        if not v > 0:
            raise EvaluatorInputError(f"evaluator.probe.blur: sigma {v} must be > 0 (px)")
        if image_shape is not None and math.ceil(3 * v) >= min(image_shape):
            raise EvaluatorInputError(f"evaluator.probe.blur: sigma {v} px is too wide for {tuple(image_shape)} "
                                      "images (3 sigma must stay inside the image); use a smaller sigma")
    return sigmas


def blur_images(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """NCHW images (uint8, or float 0-1) through a Gaussian blur of `sigma` px (kernel 2*ceil(3 sigma)+1), as uint8:
    a softer copy of the same face, as a VAE round trip or a soft photo gives. Blurred 64 at a time."""
    if sigma <= 0:
        raise EvaluatorInputError(f"blur sigma {sigma}: must be > 0 (evaluator.probe.blur lists sigmas in px)")
    images = to_uint8(images)
    return torch.cat([gaussian_blur_float(images[i:i + 64].float(), sigma).round().clamp(0, 255).to(torch.uint8)
                      for i in range(0, len(images), 64)])


def drawn_phenotypes(phenotypes: Sequence[dict]) -> list[str]:
    """The sorted HPO ids drawn (intensity > 0) in any of these images: the vocabulary of `presence_matrix`."""
    return sorted({h for ph in phenotypes for h, v in (ph or {}).items() if float(v) > 0})


def labelled_phenotypes(df: pd.DataFrame) -> np.ndarray:
    """Rows whose `phenotypes` say what the face shows: phantom renders (complete by construction, `{}` = none
    drawn), healthy faces, and rows with a non-empty labelling. A diseased photo's `{}` means "not labelled"
    (docs/data.md), not "shows none": training a head on it as a negative would teach it that the disease's look
    means the phenotype is absent."""
    source = df["source"].astype(str) if "source" in df else pd.Series("", index=df.index)
    return (source.str.startswith("phantom") | (df["disease"] == HEALTHY)
            | df["phenotypes"].map(bool)).to_numpy()


def presence_matrix(phenotypes: Sequence[dict], vocab: Sequence[str]) -> np.ndarray:
    """Rows of 0/1: phenotype drawn (intensity > 0) in the image."""
    index = {h: i for i, h in enumerate(vocab)}
    y = np.zeros((len(phenotypes), len(vocab)), dtype=np.float32)
    for r, ph in enumerate(phenotypes):
        for h, v in (ph or {}).items():
            if h in index and float(v) > 0:
                y[r, index[h]] = 1.0
    return y


def image_caption(profile: FacialProfile, stage: int | None, phenotypes: dict, labelled: bool) -> str:
    """Training caption of a real image: disease, stage and the phenotypes it shows. labelled (`labelled_phenotypes`
    of its row): `phenotypes` says what the face shows, all drawn ones and none if empty (a phantom face that drew
    none is not captioned with marks it lacks); an unlabelled photo gets the template's phenotypes of that stage.
    stage None: a photo whose stage is not known (the manifest's stage_known=False) is captioned without one."""
    stage = None if stage is None else int(stage)
    if labelled:
        return caption(profile, stage, {h: 1.0 for h, v in (phenotypes or {}).items() if float(v) > 0})
    return caption(profile, stage)


def min_stage_of(probe_cfg: dict | None) -> int:
    """`probe.min_stage` of an evaluator config's `probe` section (0 when unset): a whole stage 0-3 (2.5 was
    truncated to 2 and `true` read as 1, a different probe, in silence)."""
    from ..config import as_number

    value = (probe_cfg or {}).get("min_stage")
    if value is None:
        return 0
    n = as_number(value, "evaluator.probe.min_stage", "a whole stage from 0 to 3")
    if n != int(n) or not 0 <= n <= 3:
        raise EvaluatorInputError(f"evaluator.probe.min_stage={value}: a whole stage from 0 to 3 (the probe learns "
                                  "from healthy faces and those at this stage or later)")
    return int(n)


def probe_rows(df: pd.DataFrame, probe_cfg: dict | None) -> pd.Series:
    """Rows the disease probe learns from: healthy ones, those at stage >= probe.min_stage, and photos without a
    grade (a diagnosed patient's photo; its placeholder stage 2 dropped them all at min_stage=3, in silence)."""
    from ..data.manifest import stage_known

    ungraded = pd.Series(~stage_known(df), index=df.index)
    return (df["disease"] == HEALTHY) | (df["stage"] >= min_stage_of(probe_cfg)) | ungraded
