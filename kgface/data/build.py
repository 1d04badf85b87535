"""Build (or reuse from the cache) the dataset a config names, as a folder holding manifest.csv and its images."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..cache import Cache, file_fingerprint, remove_path, write_json_atomic
from ..config import disease_list
from ..errors import UserError
from ..kg import FacialProfile
from ..resources import kg_data_dir
from .manifest import ATLAS_FILE, write_manifest
from .phantom.dataset import (OTHER_KEYS, PhantomConfig, atlas_settings, build_atlas, build_phantom, contact_sheet,
                              isolated_effects)
from .phantom.effects import load_phantom_effects

# bump when drawing changes, so cached phantom datasets rebuild. 2: acne lesions only on individuals who show an acne
# term (renderer 1 drew them on every stage 1-3 face of a disease with acne in its profile: 1,200 of the benchmark's
# faces, 462 Cushing and 738 acromegaly, showed lesions their labels did not name)
# 3: labels hold only what a face shows (no hair terms on bald heads, no two terms that cancel or hide each other,
# one intensity per drawn effect, acne terms at s / 3), no natural blue irides, and every diseased individual shows
# something by stage 3 (renderer 2 labelled 153 of the benchmark's healthy-looking faces stage 1-3)
RENDERER_VERSION = 3


def drawing_rules(profiles: list[FacialProfile]) -> dict:
    """What the renderer reads beside the profiles and its effects table: each disease's stage scale (which stage
    shows signs, lesion ranges), the onset ages and the acne lesion model. Part of the dataset's cache key, so an
    edit to any of them rebuilds the images instead of reusing stale ones."""
    from dataclasses import asdict

    from ..prompts.wording import stage_levels
    from .phantom import acne
    from .phantom.dataset import ONSET_AGE

    return {"stages": {p.disease_id: [asdict(level) for level in stage_levels(p.disease_id)] for p in profiles},
            "onset_age": ONSET_AGE,
            "acne": [acne.GRADE_UPPER, acne.LESION_CAP, acne._ANCHOR_S, acne._ANCHOR_N, acne.TYPE_MIN_GRADE,
                     acne.TYPE_MIX, acne.AREAS, acne.AREA_WEIGHTS]}


def _data_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.data, resolve=True)


def phantom_config(data: dict) -> PhantomConfig:
    """The validated PhantomConfig of a data=phantom node (plain dict): a key it does not read, or a value it cannot
    honour, is a one-line error naming the data.* key (kgface.train's preflight calls it before the run folder is
    reset, phantom_dataset again)."""
    unknown_keys = sorted(set(data) - set(PhantomConfig.__dataclass_fields__) - set(OTHER_KEYS))
    if unknown_keys:  # +data.per_clas=10 built the default per_class in silence (and keyed another cache entry)
        raise UserError(f"data={data.get('name')}: unknown settings {['data.' + k for k in unknown_keys]}; those of "
                        f"data=phantom are {sorted([*PhantomConfig.__dataclass_fields__, *OTHER_KEYS])}")
    return PhantomConfig.from_dict(data)


def phantom_dataset(cfg: DictConfig, profiles: list[FacialProfile], cache: Cache, progress: bool = True) -> Path:
    """The cached phantom dataset folder for this config and these profiles (built on first use)."""
    data = _data_dict(cfg)
    heldout = disease_list(data.get("heldout"), "data.heldout", allow_empty=True) or []
    ids = {p.disease_id for p in profiles}
    unknown = [h for h in heldout if h not in ids]
    if unknown:
        raise UserError(f"data.heldout names {unknown}, which are not in the disease panel "
                        f"({', '.join(sorted(ids))}); fix data.heldout or kg.panel")
    sick = ids - {"healthy"}
    if "healthy" in heldout or (heldout and sick <= set(heldout)):  # as real data refuses it (kgface.train)
        raise UserError(f"data.heldout={sorted(heldout)}: name diseases of the panel ({', '.join(sorted(sick))}), not "
                        "healthy, and leave at least one for the generator to train on")
    pcfg = phantom_config(data)  # a setting it cannot honour fails even when a cached entry exists
    faces, per_face, intensity = atlas_settings(data.get("atlas"))
    effects_path = kg_data_dir() / "phantom_effects.csv"
    spec = {"data": data, "renderer": RENDERER_VERSION, "effects": file_fingerprint(effects_path),
            "profiles": [p.to_dict() for p in profiles], "drawing": drawing_rules(profiles)}
    entry = cache.entry("dataset-phantom", spec)
    if entry.exists():
        return entry.path
    table = load_phantom_effects(effects_path)
    with entry.build() as tmp:
        rows, stats = build_phantom(profiles, pcfg, table, tmp, heldout, progress=progress)
        write_manifest(rows, tmp / "manifest.csv")
        atlas_rows = build_atlas(profiles, pcfg, table, tmp, faces, per_face, intensity, progress=progress)
        if atlas_rows:  # read by the evaluator (ATLAS_FILE) and, with trainer.atlas_share > 0, the generator
            write_manifest(atlas_rows, tmp / ATLAS_FILE)
            stats["atlas_images"] = len(atlas_rows)
        write_json_atomic(tmp / "dataset.json", {"config": data, **stats})
        names = {p.disease_id: p.name for p in profiles}
        contact_sheet(rows, tmp, names, stages=pcfg.stages).save(tmp / "contact_sheet.png")
    return entry.path


def isolated_effect_images(cfg: DictConfig, hpo_ids, identity_ids, per_term: int = 12):
    """uint8 [N, 3, H, W] images and their labels (an HPO id, or None for the bare face): each phenotype alone at
    full intensity on `data=phantom` identities (`isolated_effects`)."""
    import numpy as np
    import torch

    pcfg = PhantomConfig.from_dict(_data_dict(cfg))
    images, labels = isolated_effects(pcfg, load_phantom_effects(kg_data_dir() / "phantom_effects.csv"), hpo_ids,
                                      identity_ids, per_term)
    arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), labels


def effect_footprints(cfg: DictConfig, hpo_ids, identity_ids=range(100, 112), level: int = 16) -> dict:
    """How much of the face each phenotype changes, drawn alone at full intensity on `identity_ids`:
    {hpo: {"mean_abs": mean |pixel difference| (0-255) against the bare face over all pixels and channels,
    "pixels": pixels (of H x W) where some channel differs by >= `level`, mean over the identities}}. A phenotype
    that moves a handful of pixels is one a 64-px instrument has to learn from many faces (docs/evaluation.md)."""
    import numpy as np

    from .phantom.dataset import shown_identities

    identity_ids = list(identity_ids)
    images, labels = isolated_effect_images(cfg, list(hpo_ids), identity_ids, per_term=len(identity_ids))
    x, lab = images.numpy().astype(np.int16), np.array([h or "" for h in labels])
    bare = x[lab == ""]  # one bare face per identity, in identity_ids' order
    pcfg, table = PhantomConfig.from_dict(_data_dict(cfg)), load_phantom_effects(kg_data_dir() / "phantom_effects.csv")
    out = {}
    for h in hpo_ids:
        if not (lab == h).any():  # no renderer effect (or no identity it can show on): nothing drawn for it
            continue
        # each face against its own identity's bare face (a hair term skips bald identities)
        shown = set(shown_identities(pcfg, table, h, identity_ids, len(identity_ids)))
        diff = np.abs(x[lab == h] - bare[[k for k, i in enumerate(identity_ids) if i in shown]])
        out[h] = {"mean_abs": float(diff.mean()), "pixels": float((diff.max(axis=1) >= level).sum(axis=(1, 2)).mean())}
    return out


def materialise(src: Path, out: Path) -> None:
    """Give OUT its own copy of a cached dataset: copies, not hard links (an image edited in place in OUT, e.g. by
    `cp` over it, changed the cache entry's file too, and every later run of that config trained on it under the old
    labels; 44 MB for the default set, 172 MB for the benchmark's)."""
    out.mkdir(parents=True, exist_ok=True)
    # the old manifest goes before its images do: until the new one is in, OUT holds no manifest to trust; a real
    # build's skipped.csv would describe a dataset that is no longer there
    for name in ("manifest.csv", "skipped.csv"):
        (out / name).unlink(missing_ok=True)
    staging = out / ".images.tmp"
    if staging.exists():
        shutil.rmtree(staging)

    shutil.copytree(src / "images", staging, copy_function=shutil.copy2)
    remove_path(out / "images")  # a folder, or a link to one (rmtree refuses links)
    os.replace(staging, out / "images")
    names = ["dataset.json", "contact_sheet.png", ATLAS_FILE, "manifest.csv"]
    if not (src / ATLAS_FILE).is_file():
        (out / ATLAS_FILE).unlink(missing_ok=True)  # a stale atlas of an earlier build would be read
    for name in [n for n in names if (src / n).is_file()]:  # manifest last: it marks completeness
        tmp = out / f".{name}.tmp"
        shutil.copy2(src / name, tmp)
        os.replace(tmp, out / name)


def dataset_stats(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
