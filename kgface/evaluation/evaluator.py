"""The evaluator: frozen CLIP image features and the heads that read them.

`fit_evaluator(cfg, manifest_path, profiles, cache)` trains (or loads from the cache) an evaluator on the `train`
split of a real manifest (phantom or user photos, every disease including the generator's held-out ones; never
generated images) and calibrates it on `val`. `Evaluator.score(images | DataFrame | manifest path)` returns one row per
image: the calibrated disease probabilities and top-3, the zero-shot disease and presence, the continuous severity and
stage (CORAL), and the per-phenotype presence scores with the detected set.

Saved as `evaluator.json` (config, classes, phenotype ids, training log) + `probes.safetensors` (+ `clip.safetensors`
for the tiny CLIP; a pretrained open_clip model is re-read from `evaluator.pretrained`). No pickle. The disease probe
learns from healthy faces and stages >= `probe.min_stage` only (stage 0 looks healthy by construction). The tiny CLIP
is also cached on its own (`evaluator-clip`), so a head setting refits the heads without retraining it.

A dataset folder may also hold `phenotype_atlas.csv` (same columns; written by `data=phantom` with `data.atlas.faces`
> 0): faces labelled with phenotypes only, no disease. When present, the tiny CLIP and the phenotype heads also train
on them (never the disease probe or the stage head), so a phenotype head sees its phenotype without its disease.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ..cache import Cache, atomic_folder, file_sha256, stable_hash, write_json_atomic
from ..data.manifest import ATLAS_FILE, read_manifest, stage_known
from ..errors import UserError
from ..kg import FacialProfile
from ..prompts import caption, healthy_prompts, phenotype_caption, zero_shot_prompts
from .clip_model import (ImageEncoder, build_clip, encode_texts, gaussian_blur_float, registered_config_name,
                         train_blur, train_clip)
from .probes import CoralHead, LinearProbe, PhenotypeHeads, Standardizer
from .towers import vision_tower

log = logging.getLogger(__name__)

FORMAT = "kgface.evaluator/1"
HEALTHY = "healthy"


class EvaluatorInputError(UserError):
    """Images or labels the evaluator cannot use: missing files, mixed sizes, empty sets, unknown labels."""


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def manifest_hash(path: str | os.PathLike) -> str:
    """SHA-256 of the manifest file's content (the evaluator's cache key for its data)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        raise EvaluatorInputError(f"{path}: manifest not found") from None


TRAINED_ON_FILE = "trained_on.txt"


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


def load_images(paths: Sequence[str], size: int | Sequence[int] | None = None) -> torch.Tensor:
    """uint8 NCHW RGB images; every image must exist and share one size (the first one's, or `size`: an int for a
    square, or (height, width) as a tensor's shape[-2:])."""
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
        if want is not None and img.size != tuple(want):
            raise EvaluatorInputError(f"{p}: image is {img.size[0]}x{img.size[1]}, expected {want[0]}x{want[1]} "
                                      "(all images of a set must share one size: resize this one or leave it out)")
        first = first or img.size
        out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(out)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images as uint8 0-255: uint8 passes through, float is read as 0-1 (what a VAE round trip gives)."""
    return images if images.dtype == torch.uint8 else (images.clamp(0, 1) * 255).round().to(torch.uint8)


def blur_sigmas(probe_cfg: dict | None, image_shape=None) -> list[float]:
    """evaluator.probe.blur as a list of sigmas (px), checked before anything trains: numbers > 0 whose kernel
    (2*ceil(3 sigma)+1, reflect-padded) fits inside images of `image_shape` (H, W) when given."""
    import math

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


def image_caption(profile: FacialProfile, stage: int | None, phenotypes: dict) -> str:
    """Training caption of a real image: disease, stage and the phenotypes it shows (all drawn ones; a photo with
    unknown phenotypes gets the template's phenotypes of that stage). stage None: a photo whose stage is not known
    (the manifest's stage_known=False) is captioned without one."""
    stage = None if stage is None else int(stage)
    if phenotypes:
        return caption(profile, stage, {h: 1.0 for h, v in phenotypes.items() if float(v) > 0})
    return caption(profile, stage)


@dataclass
class ScoredSet:
    """A scored image set: per-image predictions, the CLIP features, the images (uint8 NCHW)."""

    table: pd.DataFrame
    features: np.ndarray
    images: torch.Tensor | None = None


@dataclass
class Evaluator:
    cfg: dict
    model: torch.nn.Module
    tokenizer: Callable
    image_size: int
    classes: list[str]
    phenotypes: list[str]
    names: dict[str, str]
    scale: Standardizer
    probe: LinearProbe
    coral: CoralHead
    heads: PhenotypeHeads
    zs_text: torch.Tensor
    info: dict = field(default_factory=dict)
    # content digests of every image that trained or calibrated it (train, val, atlas): a real set scored later
    # must not contain them (check_unseen); None for an evaluator saved before the list was kept
    trained_on: list[str] | None = None

    @property
    def encoder(self) -> ImageEncoder:
        return ImageEncoder(self.model, self.image_size)

    @property
    def threshold(self) -> float:
        return float(self.cfg.get("phenotype_threshold", 0.5))

    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.encoder(images).numpy()

    def check_labels(self, diseases: Sequence[str], what: str = "set", paths: Sequence[str] | None = None,
                     column: str = "disease") -> None:
        """Refuse labels outside the evaluator's classes; with `paths` (one per label) the first such row is named."""
        labels = [str(d) for d in diseases]
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            first = ""
            if paths is not None:
                i = next(k for k, d in enumerate(labels) if d not in self.classes)
                first = f" (first: {list(paths)[i]}, column {column})"
            raise EvaluatorInputError(f"the {what} has labels unknown to the evaluator: {', '.join(unknown[:5])}"
                                      f"{first}; it knows {', '.join(self.classes)}: retrain it on data with these "
                                      "diseases")

    def check_unseen(self, df: pd.DataFrame, what: str = "real set") -> None:
        """Refuse a real set whose test rows are images this evaluator learned from (their scores would be inflated
        and copies of them would pass the memorisation audit), e.g. another split of its data. A test image with a
        byte-identical copy among the set's own train/val rows is the data's duplicate, not a re-split, and is let
        through (a train run's own evaluation reads it too). No-op for an evaluator saved without its list."""
        if self.trained_on is None or "split" not in df or not len(df):
            return
        seen = set(self.trained_on) - {image_digest(p) for p in df["abspath"][df["split"].isin(["train", "val"])]}
        hits = [p for p in df["abspath"][df["split"] == "test"] if image_digest(p) in seen]
        if hits:
            raise EvaluatorInputError(f"{what}: {len(hits)} of its {int((df['split'] == 'test').sum())} test images "
                                      "trained this evaluator "
                                      f"(e.g. {hits[0]}); score the test split of the data it was trained on, or "
                                      "evaluate without run= to train an evaluator on this set's own train split")

    def score_set(self, source, keep_images: bool = False) -> ScoredSet:
        """Score images (uint8 NCHW tensor), a manifest DataFrame or a manifest path."""
        if isinstance(source, torch.Tensor):
            images, table = source, pd.DataFrame(index=range(len(source)))
            if len(images) == 0:
                raise EvaluatorInputError("no images to score (empty set)")
        else:
            df = as_frame(source)
            if len(df) == 0:
                raise EvaluatorInputError("no images to score (empty manifest)")
            images, table = load_images(list(df["abspath"])), df.reset_index(drop=True).copy()
        feats = self.features(images)
        return ScoredSet(self.predict(feats, table), feats, images if keep_images else None)

    def score(self, source) -> pd.DataFrame:
        """One row per image (the manifest's columns, if any, then the scores): pred_disease, pred_prob, top3,
        p_<class>, zs_disease, zs_presence, severity_pred (continuous, 0..3), stage_pred, ph_<HPO id>, detected (list of HPO ids)."""
        return self.score_set(source).table

    def predict(self, feats: np.ndarray, table: pd.DataFrame | None = None) -> pd.DataFrame:
        base = table.reset_index(drop=True) if table is not None else pd.DataFrame(index=range(len(feats)))
        x = self.scale(feats)
        probs = self.probe.proba(x)
        order = np.argsort(-probs, 1, kind="stable")  # a tie goes to the first class, the same in every run
        cls = np.asarray(self.classes)
        cols: dict = {"pred_disease": cls[order[:, 0]], "pred_prob": probs[np.arange(len(probs)), order[:, 0]],
                      "top3": [list(cls[o[:3]]) for o in order]}
        cols.update({f"p_{c}": probs[:, k] for k, c in enumerate(self.classes)})
        zs = torch.softmax(100.0 * torch.as_tensor(feats, dtype=torch.float32) @ self.zs_text.t(), -1).numpy()
        cols["zs_disease"] = cls[zs.argmax(1)]
        cols["zs_presence"] = (1.0 - zs[:, self.classes.index(HEALTHY)] if HEALTHY in self.classes
                               else np.full(len(feats), np.nan))
        cols["severity_pred"] = self.coral.severity(x)
        cols["stage_pred"] = self.coral.stage(x)
        ph = self.heads.proba(x)
        cols.update({f"ph_{h}": ph[:, k] for k, h in enumerate(self.phenotypes)})
        voc = np.asarray(self.phenotypes)
        cols["detected"] = [list(voc[row >= self.threshold]) for row in ph]
        scores = pd.DataFrame(cols)
        return pd.concat([base.drop(columns=[c for c in scores.columns if c in base.columns]), scores], axis=1)

    # --- persistence -------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        state = {**self.scale.state("scale"), **self.probe.state("probe"), **self.coral.state("coral"),
                 **self.heads.state("heads"), "zs_text": self.zs_text}
        with atomic_folder(folder) as tmp:  # the files of one evaluator or of the previous, never a mix
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "probes.safetensors"))
            if self.cfg["name"] == "tiny_clip":
                save_file({k: v.contiguous() for k, v in self.model.state_dict().items()},
                          str(tmp / "clip.safetensors"))
            if self.trained_on is not None:
                (tmp / TRAINED_ON_FILE).write_text("".join(d + "\n" for d in self.trained_on), encoding="utf-8")
            write_json_atomic(tmp / "evaluator.json", {
                "format": FORMAT, "config": self.cfg, "image_size": self.image_size, "classes": self.classes,
                "phenotypes": self.phenotypes, "names": self.names, "info": self.info})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, pretrained_sha256: str | None = None,
             model_config: str | None = None) -> "Evaluator":
        """`pretrained_sha256`, `model_config`: the weights file's digest and the name register_config_file gave
        evaluator.model when the caller has just computed them (fit_evaluator's cache key): no file is read twice."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path = folder / "evaluator.json"
        if not meta_path.is_file():
            raise EvaluatorInputError(f"{folder}: no evaluator.json (not a saved evaluator)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EvaluatorInputError(f"{meta_path}: not valid JSON ({exc.msg}, line {exc.lineno}); the evaluator "
                                      "folder is damaged: train it again or point to another") from None
        if meta.get("format") != FORMAT:
            raise EvaluatorInputError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT}")
        cfg = meta["config"]
        fitted_on = meta.get("info", {}).get("pretrained_sha256")
        if cfg["name"] != "tiny_clip" and fitted_on and (
                pretrained_sha256 or _file_sha256(Path(str(cfg["pretrained"])).expanduser())) != fitted_on:
            # the heads were fitted on another model's features
            raise EvaluatorInputError(f"{meta_path}: evaluator.pretrained={cfg['pretrained']} is not the weights "
                                      "file its heads were fitted on (its bytes changed); fit the evaluator again")
        registered = registered_config_name(cfg, model_config)
        if meta.get("info", {}).get("model_config") and registered != meta["info"]["model_config"]:
            raise EvaluatorInputError(f"{meta_path}: evaluator.model={cfg['model']} (or its text model's files) is not "
                                      "the config its heads were fitted on (it changed); fit the evaluator again")
        model, tokenizer, image_size = build_clip(cfg, load_pretrained=cfg["name"] != "tiny_clip",
                                                  registered=registered)
        if cfg["name"] == "tiny_clip":
            model.load_state_dict(load_file(str(folder / "clip.safetensors")))
        model.eval()
        st = load_file(str(folder / "probes.safetensors"))
        listed = folder / TRAINED_ON_FILE  # absent in evaluators saved before it
        trained_on = listed.read_text(encoding="utf-8").split() if listed.is_file() else None
        return cls(cfg=cfg, model=model, tokenizer=tokenizer, image_size=int(meta["image_size"]),
                   classes=list(meta["classes"]), phenotypes=list(meta["phenotypes"]), names=dict(meta["names"]),
                   scale=Standardizer.from_state(st, "scale"), probe=LinearProbe.from_state(st, "probe"),
                   coral=CoralHead.from_state(st, "coral"), heads=PhenotypeHeads.from_state(st, "heads"),
                   zs_text=st["zs_text"], info=meta.get("info", {}), trained_on=trained_on)


def _profile_map(profiles, diseases: Sequence[str]) -> dict[str, FacialProfile]:
    by_id = {p.disease_id: p for p in (profiles.values() if isinstance(profiles, dict) else profiles)}
    missing = sorted(set(diseases) - set(by_id))
    if missing:
        raise EvaluatorInputError(f"no KG profile for {', '.join(missing[:5])}: add them to the panel "
                                  "(kg.panel / data.diseases) or drop their rows")
    return by_id


def _phenotype_map(profiles) -> dict:
    """HPO id -> the profiles' Phenotype (its visual wording names the phenotype in atlas captions)."""
    out = {}
    for prof in (profiles.values() if isinstance(profiles, dict) else profiles):
        for ph in prof.phenotypes:
            out.setdefault(ph.hpo_id, ph)
    return out


def pair_presence(feats: np.ndarray, zs_text: torch.Tensor, classes: Sequence[str]) -> np.ndarray:
    """[N, C] zero-shot presence of each class's disease against health alone: a softmax over two prompt
    embeddings, the disease's and the healthy one's (the sigmoid of their logit gap at CLIP's scale 100). Unlike
    zs_presence (1 - P(healthy) over every class), a face that looks like some other disease does not count as
    showing this one. The healthy column is 0.5; without a healthy class every entry is NaN."""
    feats = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    if HEALTHY not in classes:
        return np.full((len(feats), len(classes)), np.nan)
    logits = 100.0 * feats @ zs_text.float().t()
    return torch.sigmoid(logits - logits[:, list(classes).index(HEALTHY)].unsqueeze(1)).numpy()


def zero_shot_text(model, tokenizer, profiles: dict[str, FacialProfile], classes: list[str]) -> torch.Tensor:
    """[C, D] normalised mean text embedding of each class's zero-shot prompt ensemble."""
    rows = []
    for c in classes:
        prompts = healthy_prompts() if c == HEALTHY else zero_shot_prompts(profiles[c])
        rows.append(torch.nn.functional.normalize(encode_texts(model, tokenizer, prompts).mean(0), dim=-1))
    return torch.stack(rows)


def min_stage_of(probe_cfg: dict | None) -> int:
    """`probe.min_stage` of an evaluator config's `probe` section (0 when unset)."""
    return int((probe_cfg or {}).get("min_stage") or 0)


def probe_rows(df: pd.DataFrame, probe_cfg: dict | None) -> pd.Series:
    """Rows the disease probe learns from: healthy ones and those at stage >= probe.min_stage."""
    return (df["disease"] == HEALTHY) | (df["stage"] >= min_stage_of(probe_cfg))


def train_evaluator(cfg, df: pd.DataFrame, profiles, progress: bool = True,
                    atlas: pd.DataFrame | None = None, clip: tuple[dict, dict] | None = None,
                    pretrained_sha256: str | None = None, model_config: str | None = None) -> Evaluator:
    """Train an evaluator on df's `train` split (calibrated on `val`); no caching (see fit_evaluator). `atlas`:
    phenotype-only faces for the CLIP and the phenotype heads (see the module docstring). `clip`: (state dict,
    training log) of a tiny CLIP already trained on this data with this config: only the heads are fitted.
    `pretrained_sha256`, `model_config`: the evaluator.pretrained file's digest and the name register_config_file
    gave evaluator.model, when the caller has them (fit_evaluator's cache key): their files are read once."""
    import time

    c = _plain(cfg)
    train = df[df["split"] == "train"].reset_index(drop=True)
    val = df[df["split"] == "val"].reset_index(drop=True)
    if len(train) == 0:
        raise EvaluatorInputError("the manifest has no 'train' rows to fit the evaluator on")
    heads_on = str(c.get("phenotype_heads", "all"))
    if heads_on not in ("all", "atlas"):
        raise EvaluatorInputError(f"evaluator.phenotype_heads={heads_on!r}: use 'all' or 'atlas'")
    if heads_on == "atlas" and (atlas is None or not len(atlas)):
        raise EvaluatorInputError(f"evaluator.phenotype_heads=atlas needs {ATLAS_FILE} beside the manifest "
                                  "(data.atlas.faces > 0 on data=phantom); or set evaluator.phenotype_heads=all")
    classes = sorted(train["disease"].unique(), key=lambda d: (d == HEALTHY, d))
    if len(classes) < 2:
        raise EvaluatorInputError(f"the evaluator needs at least 2 classes in the train split, got {classes}")
    p = c.get("probe") or {}
    sigmas = blur_sigmas(p)  # a bad setting fails here, before the CLIP trains
    if c["name"] == "tiny_clip" and clip is None:
        train_blur(c.get("train"), int(c["image_size"]))
    unseen = sorted(set(classes) - set(train["disease"][probe_rows(train, p)]))
    if unseen:
        raise EvaluatorInputError(f"no train image of {', '.join(unseen[:5])} at stage >= evaluator.probe.min_stage="
                                  f"{min_stage_of(p)}: lower it or add images of later stages")
    if len(val):
        val = val[val["disease"].isin(classes)].reset_index(drop=True)
    by_id = _profile_map(profiles, classes)
    start = time.time()
    torch.manual_seed(int(c.get("seed", 0)))
    model_config = registered_config_name(c, model_config)
    model, tokenizer, image_size = build_clip(c, registered=model_config)
    images = load_images(list(train["abspath"]))
    blur_sigmas(p, images.shape[-2:])  # ... and one too wide for these images
    atlas = atlas.reset_index(drop=True) if atlas is not None and len(atlas) else None
    atlas_images = load_images(list(atlas["abspath"]), size=images.shape[-2:]) if atlas is not None else None
    info = {"train_images": len(train), "val_images": len(val), "manifest_rows": len(df),
            "atlas_images": 0 if atlas is None else len(atlas)}
    if c["name"] != "tiny_clip":  # the model is re-read from this file on load: it must be the same file
        info["pretrained_sha256"] = pretrained_sha256 or _file_sha256(Path(str(c["pretrained"])).expanduser())
        if model_config:  # ... and built from this config file: it must say the same
            info["model_config"] = model_config
    # phenotypes: those drawn in the train split or the atlas (the atlas draws only the panel's phenotypes)
    pheno_rows = list(train["phenotypes"]) + ([] if atlas is None else list(atlas["phenotypes"]))
    labelled_rows = np.concatenate([labelled_phenotypes(train), np.ones(0 if atlas is None else len(atlas), bool)])
    info["unlabelled_phenotype_rows"] = int((~labelled_rows).sum())
    vocab = drawn_phenotypes(pheno_rows)
    if c["name"] == "tiny_clip":
        known = stage_known(train)
        captions = [image_caption(by_id[r.disease], r.stage if k else None, r.phenotypes)
                    for r, k in zip(train.itertuples(), known)]
        labels = list(train["disease"])
        stages = np.where(known, train["stage"].to_numpy(dtype=float), np.nan)  # NaN: no stage target
        clip_images = images
        if atlas is not None:
            named = _phenotype_map(profiles)
            unknown = sorted({h for ph in atlas["phenotypes"] for h in ph if h not in named})
            if unknown:  # its caption would drop them (a face with none left would read as healthy)
                raise EvaluatorInputError(f"{ATLAS_FILE}: {', '.join(unknown[:5])} in no profile of the panel; "
                                          "add their diseases to kg.panel or drop the rows")
            captions += [phenotype_caption([named[h] for h, v in sorted(ph.items()) if float(v) > 0])
                         for ph in atlas["phenotypes"]]
            labels += [None] * len(atlas)      # no disease: left out of the disease and stage heads
            stages = np.concatenate([stages, np.full(len(atlas), np.nan)])
            clip_images = torch.cat([images, atlas_images])
        if clip is not None:
            model.load_state_dict(clip[0])
            model.eval()
            info["clip"] = dict(clip[1])
        else:
            presence = presence_matrix(pheno_rows, vocab)
            presence[~labelled_rows] = np.nan  # not labelled: out of the presence loss
            info["clip"] = train_clip(model, tokenizer, clip_images, captions, c, progress=progress, labels=labels,
                                      presence=presence, stages=stages)
    encoder = ImageEncoder(model, image_size)
    f_train = encoder(images).numpy()
    scale = Standardizer.fit(f_train)
    # probe.blur (Gaussian sigmas, px): every head also learns from a blurred copy of each face it learns from, so
    # softness is not read as a disease (heads fitted on sharp faces alone read soft healthy faces as pallor or
    # macules: docs/evaluation.md)
    info["blur_sigmas"] = sigmas

    def features(imgs: torch.Tensor, feats: np.ndarray | None = None) -> list[torch.Tensor]:
        """Standardised features of the faces, then of each blurred copy."""
        return [scale(encoder(imgs).numpy() if feats is None else feats)] + \
            [scale(encoder(blur_images(imgs, v)).numpy()) for v in sigmas]

    def rows(feats: list[torch.Tensor], mask: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(np.asarray(mask, bool).copy())
        return torch.cat([f[m] for f in feats])

    xs = features(images, f_train)
    copies = len(xs)
    index = {d: i for i, d in enumerate(classes)}
    # the disease probe learns from faces that can show their disease: below probe.min_stage a label contradicts the
    # look (stage 0 is healthy-looking by construction), and such faces teach the probe to call healthy faces sick
    shows = probe_rows(train, p).to_numpy()
    probe = LinearProbe.fit(rows(xs, shows), [index[d] for d in train["disease"][shows]] * copies,
                            len(classes), l2=float(p.get("l2", 1e-2)))
    info["probe_images"] = int(shows.sum())
    known = stage_known(train)  # the stage head learns only observed stages
    if not known.any():
        raise EvaluatorInputError("no train image has a known stage (stage_known=False on every row): the stage "
                                  "head has nothing to learn; grade some photos (data.stages=...) or use a graded set")
    coral = CoralHead.fit(rows(xs, known), np.tile(train["stage"].to_numpy()[known], copies),
                          l2=float(p.get("l2", 1e-2)))
    info["stage_images"] = int(known.sum())
    known_stages = sorted({int(s) for s in train["stage"].to_numpy()[known]})
    if len(known_stages) < 2:  # e.g. data=disease_faces without data.stages: only healthy rows have a known stage
        info["stage_head"] = (f"fitted on one known stage ({known_stages[0]}): it cannot read severity; every stage "
                              "number of this evaluator is meaningless (grade some photos with data.stages)")
        log.warning("evaluator: %s", info["stage_head"])
    if atlas is not None:
        xs_atlas = features(atlas_images)
        if heads_on == "atlas":  # the heads never see a disease image: they cannot read a disease for a phenotype
            xs, pheno_rows = xs_atlas, list(atlas["phenotypes"])
            labelled_rows = np.ones(len(atlas), bool)
            vocab = drawn_phenotypes(pheno_rows)
        else:
            xs = [torch.cat([a, b]) for a, b in zip(xs, xs_atlas)]
    # photos without phenotype labels teach the heads nothing
    x, pheno_rows = rows(xs, labelled_rows), [ph for ph, k in zip(pheno_rows, labelled_rows) if k] * copies
    y = presence_matrix(pheno_rows, vocab)
    heads = PhenotypeHeads.fit(x, y, l2=float(p.get("l2", 1e-2))) if vocab else PhenotypeHeads(
        torch.zeros(0, x.shape[1]), torch.zeros(0))
    val = val[probe_rows(val, p).to_numpy()].reset_index(drop=True) if len(val) else val
    if len(val):  # calibrated on the faces it learned from
        f_val = encoder(load_images(list(val["abspath"]), size=images.shape[-2:])).numpy()
        info["temperature"] = probe.calibrate(scale(f_val), [index[d] for d in val["disease"]])
    info["fit_seconds"] = round(time.time() - start, 1)
    zs = zero_shot_text(model, tokenizer, by_id, classes)
    return Evaluator(cfg=c, model=model, tokenizer=tokenizer, image_size=image_size, classes=classes,
                     phenotypes=vocab, names={d: by_id[d].name for d in classes}, scale=scale, probe=probe,
                     coral=coral, heads=heads, zs_text=zs, info=info,
                     trained_on=learned_digests(df, atlas))


EVALUATOR_VERSION = 2  # bump when the heads or the scoring change, so cached evaluators rebuild
CLIP_VERSION = 1  # bump when the tiny CLIP's training or its captions change: both cache entries rebuild
CLIP_KEYS = ("name", "image_size", "embed_dim", "vision", "text", "train", "seed")  # the config that shapes the CLIP


def fit_evaluator(cfg_evaluator, manifest_path: str | os.PathLike, profiles, cache: Cache | None = None,
                  progress: bool = True) -> Evaluator:
    """The evaluator for this config and this manifest: loaded from the cache, else trained and cached.

    The cache key covers the evaluator config, the manifest file's content hash and the profiles (captions and
    zero-shot prompts come from them).
    """
    c = _plain(cfg_evaluator)
    df = read_manifest(manifest_path)[0]
    check_real(df, str(manifest_path))
    atlas_path = Path(manifest_path).parent / ATLAS_FILE
    atlas = read_manifest(atlas_path)[0] if atlas_path.is_file() else None
    if atlas is not None and (atlas["split"] != "train").any():  # atlas faces only ever train the instrument
        raise EvaluatorInputError(f"{atlas_path}: every row must have split 'train' (the atlas only trains the "
                                  "evaluator); move val/test faces to manifest.csv or drop them")
    if cache is None:
        return train_evaluator(c, df, profiles, progress=progress, atlas=atlas)
    plist = list(profiles.values()) if isinstance(profiles, dict) else list(profiles)
    used = sorted(set(df["disease"]))
    if atlas is not None:  # atlas captions may name a phenotype through any profile of the panel
        used = sorted({p.disease_id for p in plist})
    from ..data.fingerprint import images_digest

    keyed = c
    if not (c.get("probe") or {}).get("blur", True):  # probe.blur=[] fits what evaluators fitted before it existed
        keyed = {**c, "probe": {k: v for k, v in c["probe"].items() if k != "blur"}}
    if isinstance(c.get("train"), dict) and not c["train"].get("blur_share", True):  # ... as train.blur_share=0
        keyed = {**keyed, "train": {k: v for k, v in c["train"].items() if k not in ("blur_share", "blur_sigma")}}
    if isinstance(c.get("vision"), dict):  # tower open_clip keys as before the key; the CNN reads width alone
        unused = ("tower",) if vision_tower(c) == "open_clip" else ("layers", "patch_size", "head_width")
        keyed = {**keyed, "vision": {k: v for k, v in c["vision"].items() if k not in unused}}
    # the manifest's bytes name the images; their own bytes say what they are (a re-render keeps the manifest)
    spec = {"version": EVALUATOR_VERSION, "evaluator": keyed, "manifest_sha256": manifest_hash(manifest_path),
            "images": images_digest(manifest_path, df["abspath"]),
            "profiles": stable_hash([p.to_dict() for p in plist if p.disease_id in used])}
    if c["name"] != "tiny_clip" and c.get("pretrained"):  # new weights under the same path must refit the heads
        spec["pretrained_sha256"] = _file_sha256(Path(str(c["pretrained"])).expanduser())
    model_config = registered_config_name(c)
    if model_config:  # an edited config file is another model
        spec["model_config"] = model_config
    train_rows = df[df["split"] == "train"]
    unlabelled = int((~labelled_phenotypes(train_rows)).sum())
    if unlabelled and (atlas is not None or any(map(bool, train_rows["phenotypes"]))):
        # left out of the phenotype terms since 2026-12-02 (earlier entries trained on them as negatives); without
        # any phenotype label there are no heads and no presence term, and nothing changed
        spec["unlabelled_phenotype_rows"] = unlabelled
    if atlas is not None:
        spec["atlas_sha256"] = manifest_hash(atlas_path)
        spec["atlas_images"] = images_digest(atlas_path, atlas["abspath"])
    entry = cache.entry("evaluator", {**spec, "version": [EVALUATOR_VERSION, CLIP_VERSION]})
    if entry.exists():
        log.info("evaluator from the cache: %s", entry.path)
        ev = Evaluator.load(entry.path, pretrained_sha256=spec.get("pretrained_sha256"),
                            model_config=spec.get("model_config"))
        if ev.trained_on is None:  # an entry cached before the list was kept: the key says it is this data
            ev.trained_on = learned_digests(df, atlas)
        return ev
    # the tiny CLIP (minutes to an hour) has its own entry, keyed by what shapes it, so changing a head setting
    # (probe, phenotype_heads, threshold) refits the heads in seconds on the cached CLIP
    clip_entry, clip = None, None
    if c["name"] == "tiny_clip":
        clip_entry = cache.entry("evaluator-clip", {**spec, "version": CLIP_VERSION,
                                                    "evaluator": {k: keyed.get(k) for k in CLIP_KEYS}})
        if clip_entry.exists():
            from safetensors.torch import load_file

            log.info("evaluator CLIP from the cache: %s", clip_entry.path)
            clip = (load_file(str(clip_entry.path / "clip.safetensors")),
                    json.loads((clip_entry.path / "clip.json").read_text(encoding="utf-8")))
    ev = train_evaluator(c, df, profiles, progress=progress, atlas=atlas, clip=clip,
                         pretrained_sha256=spec.get("pretrained_sha256"),  # the key's digests: one read of the files
                         model_config=spec.get("model_config"))
    if clip_entry is not None and clip is None:
        from safetensors.torch import save_file

        with clip_entry.build() as tmp:
            save_file({k: v.contiguous() for k, v in ev.model.state_dict().items()}, str(tmp / "clip.safetensors"))
            write_json_atomic(tmp / "clip.json", ev.info["clip"])
    with entry.build() as tmp:
        ev.save(tmp)
    ev.info["cache_entry"] = str(entry.path)
    return ev


def _file_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:  # missing, a folder, unreadable
        raise EvaluatorInputError(f"evaluator.pretrained={path}: not a readable weights file ({exc.strerror}); "
                                  "give a local open_clip weights file") from None


def load_evaluator(path: str | os.PathLike) -> Evaluator:
    """A saved evaluator: its folder, or a train run folder holding it under `evaluator/`, or a baselines run's
    generator subfolder (`run=OUT/kg`: the evaluator of OUT, which judged every conditioning)."""
    p = Path(path)
    if not p.exists():
        raise EvaluatorInputError(f"run={path}: folder not found")
    from ..run_files import is_baselines_generator

    parent = [p.parent / "evaluator"] if is_baselines_generator(p) else []
    for cand in (p, p / "evaluator", *parent):
        if (cand / "evaluator.json").is_file():
            return Evaluator.load(cand)
    raise EvaluatorInputError(f"run={path}: no evaluator.json there, in its evaluator/ folder or (for a baselines "
                              "generator folder) in ../evaluator; pass the train run (trained with evaluate=true)")
