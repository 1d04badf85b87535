"""What the generator trains on: images of the manifest's train split (and the phenotype atlas) as VAE latents with
their condition (profile index, stage, severity, age group), in a LatentSet the loop draws from.

Disease faces are conditioned on their disease's profile, or with `trainer.observed_phenotypes` on that profile cut
down to the phenotypes the face shows (kgface.diffusion.phenotype_sets). With `trainer.atlas_share > 0` every
phenotype-atlas face (phantom data: 4-8 random phenotypes, no disease) becomes a profile of exactly the phenotypes it
shows, appended after the training profiles, and that share of the draws comes from these faces (docs/training.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.manifest import stage_known
from ..data.phantom.identity import AGE_GROUPS
from ..errors import UserError
from ..prompts.wording import stage_of
from .trainer import LatentSet

log = logging.getLogger(__name__)

AGE_INDEX = {group: i for i, group in enumerate(AGE_GROUPS)}  # age group -> the encoder's age index


def train_rows(manifest: Path, profiles, heldout: set[str]):
    """The manifest's train split of the generator's diseases (held-out ones excluded), labels checked."""
    import pandas as pd

    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    known = {p.disease_id for p in profiles}
    unknown = sorted(set(df["disease"]) - known - heldout)
    if unknown:
        raise UserError(f"{manifest}: labels {unknown} are not in the disease panel; add them to kg.panel "
                        "or map the dataset's classes to panel ids")
    df = df[(df["split"] == "train") & ~df["disease"].isin(heldout)]
    if df.empty:
        raise UserError(f"{manifest}: no training images for the generator's diseases")
    return df


def row_severities(df) -> torch.Tensor:
    """The severity each train row is conditioned on: an empty one reads as the stage (docs/data.md; kgface.data.real
    writes it empty for its photos), an ungraded row (stage_known=False) NaN, the unknown stage."""
    import pandas as pd

    unknown = torch.from_numpy(~stage_known(df))
    return torch.tensor(pd.to_numeric(df["severity"], errors="coerce").fillna(df["stage"].astype(float)).to_numpy(),
                        dtype=torch.float32).masked_fill(unknown, float("nan"))


def observed_training_sets(manifest: Path, profiles, heldout: set[str]) -> tuple[list[int], list]:
    """trainer.observed_phenotypes: (per train row, the index of its observed-set profile; those profiles)."""
    from .phenotype_sets import observed_profiles

    df = train_rows(manifest, profiles, heldout)
    return observed_profiles(manifest, df.to_dict("records"), profiles)


def latent_set(manifest: Path, profiles, backbone, heldout: set[str], atlas=None, atlas_share: float = 0.0,
               observed=None, marks: bool = False):
    """Encode the train split of the generator's diseases (held-out ones excluded) into a LatentSet.

    observed: `observed_training_sets`' result: each face is conditioned on its observed-set profile, which follow
    `profiles` in the conditioner's list. atlas: (rows, profiles) from `atlas_training_rows`, whose profiles come
    after those; its faces make up `atlas_share` of the draws (each part uniform within itself). marks: add each
    face's mark map (`mark_maps`; atlas faces get none) for trainer.mark_weight."""
    df = train_rows(manifest, profiles, heldout)
    unknown = torch.from_numpy(~stage_known(df))
    if unknown.any():  # not their placeholder stage, which would teach that stage every stage's look
        log.info("%d of %d train images have no known stage (stage_known=False): the generator trains them with "
                 "an unknown stage (a learned embedding; text prompts name the disease alone)",
                 int(unknown.sum()), len(df))
    index = {p.disease_id: i for i, p in enumerate(profiles)}
    if observed is not None:
        rows_index, observed_list = observed
        cls = torch.tensor(rows_index) + len(profiles)
    else:
        observed_list, cls = [], torch.tensor([index[d] for d in df["disease"]])
    maps = None
    if marks:  # before the encoding, so a set without twins fails fast; on the grid the VAE will encode to
        from PIL import Image

        width, height = Image.open(manifest.parent / df["path"].iloc[0]).size
        down = 2 ** (len(backbone.vae.config.block_out_channels) - 1)
        maps = mark_maps(manifest, df, (height // down, width // down))
    parts = {"latents": encode_images(manifest.parent, list(df["path"]), backbone.vae),
             "index": cls,
             # stage -1 / severity NaN: unknown (Conditioner.prompts and the stage embeddings read them so)
             "stage": torch.tensor(df["stage"].astype(int).to_numpy()).masked_fill(unknown, -1),
             "severity": row_severities(df),
             "age": torch.tensor([AGE_INDEX.get(a, -1) for a in df.get("age_group", [""] * len(df))])}
    if maps is not None:
        if maps.shape[-2:] != parts["latents"].shape[-2:]:
            raise UserError(f"{manifest}: mark maps {tuple(maps.shape[-2:])} do not match the latents "
                            f"{tuple(parts['latents'].shape[-2:])}; images of one size are needed for trainer.mark_weight")
        parts["marks"] = maps
    if not atlas or not atlas[0]:
        return LatentSet(**parts)
    rows, _ = atlas
    n, m, first = len(df), len(rows), len(profiles) + len(observed_list)
    extra = {"latents": encode_images(manifest.parent, [r["path"] for r in rows], backbone.vae),
             "index": torch.arange(first, first + m),
             "stage": torch.tensor([r["stage"] for r in rows]),
             "severity": torch.tensor([r["severity"] for r in rows], dtype=torch.float32),
             "age": torch.tensor([AGE_INDEX.get(r["age_group"], -1) for r in rows])}
    if maps is not None:  # an atlas face has no unmarked twin to tell its marks by
        extra["marks"] = torch.zeros(m, *parts["marks"].shape[1:])
    weights = torch.cat([torch.full((n,), (1.0 - atlas_share) / n), torch.full((m,), atlas_share / m)])
    return LatentSet(**{k: torch.cat([parts[k], extra[k]]) for k in parts}, weights=weights.double())


def mark_maps(manifest: Path, df, size: tuple[int, int]) -> torch.Tensor:
    """Where each train row's disease marks are, for trainer.mark_weight: [N, 1, h, w] in [0, 1] on the latent grid.

    A rendered face differs from the same identity's unmarked stage-0 render (same disease; phantom data renders
    every identity at stages 0-3 with one pose and lighting) only by its disease's marks, so |face - stage 0| (mean
    over colours), average-pooled to the latent grid and scaled to its maximum, says where they are. On the
    benchmark's stage-3 faces they cover ~5% of the pixels, which is all the weight a plain loss gives them.
    No map (zeros): healthy faces, stage 0, photos (source != phantom: no aligned twin), faces whose stage-0 twin
    shows marks itself (acne: stage 0 is mild acne) and differences below one grey level per latent cell."""
    import numpy as np
    from PIL import Image

    root = manifest.parent
    records = df.to_dict("records")
    twins, marked_base = {}, set()
    for r in records:
        if r.get("source") != "phantom" or int(r["stage"]) != 0:
            continue
        key = (r["identity"], r["disease"])
        if key in twins or key in marked_base:
            raise UserError(f"{manifest}: identity {key[0]} of {key[1]} has two stage-0 train faces; trainer."
                            "mark_weight pairs each face with one (rebuild the dataset, or set trainer.mark_weight=0)")
        unmarked = not json.loads(r.get("phenotypes") or "{}") and str(r.get("lesion_count", "")).strip() in ("", "0")
        if unmarked:
            twins[key] = r["path"]
        else:
            marked_base.add(key)
    out = torch.zeros(len(records), 1, *size)
    read = lambda p: torch.from_numpy(np.asarray(Image.open(root / p).convert("RGB"), dtype=np.float32))
    found = skipped = 0
    last = (None, None)  # (path, pixels) of the last twin read: an identity's stages follow each other in a manifest
    for i, r in enumerate(records):
        if r.get("source") != "phantom" or int(r["stage"]) == 0:
            continue
        twin = twins.get((r["identity"], r["disease"]))
        if twin is None:
            skipped += (r["identity"], r["disease"]) in marked_base
            continue
        if last[0] != twin:
            last = (twin, read(twin))
        face, plain = read(r["path"]), last[1]
        if face.shape != plain.shape:
            raise UserError(f"{manifest}: {r['path']} and its stage-0 twin {twin} differ in size; rebuild the dataset")
        diff = (face - plain).abs().mean(dim=-1)[None, None] / 255.0
        pooled = F.adaptive_avg_pool2d(diff, size)[0]
        if float(pooled.max()) >= 1.0 / 255.0:  # fainter than a grey level: nothing to weigh
            out[i] = pooled / pooled.max()
            found += 1
    if not found:
        raise UserError(f"trainer.mark_weight > 0 needs rendered faces with an unmarked stage-0 twin of the same "
                        f"identity (data=phantom); {manifest} has none in its train split: set trainer.mark_weight=0")
    log.info("mark maps: %d of %d train faces differ from their stage-0 twin (mean map %.3f); %d faces of diseases "
             "whose stage 0 is marked (acne) get none", found, len(records), float(out.mean()), skipped)
    return out


ENCODE_PIXELS = 64 * 64 * 64  # pixels per encoding batch: 64 images of 64 px, one of 512 px (the VAE's activations
#                               grow with the side squared: 64 SD images at 512 px would need ~9 GB for one layer)


def encode_device() -> torch.device:
    """Where the training set is encoded: the device the trainer's Accelerator will use (a GPU when there is one)."""
    from accelerate import PartialState

    return PartialState().device


def encode_images(root: Path, paths: list[str], vae, device=None) -> torch.Tensor:
    """Images (paths under root) -> scaled VAE latents (posterior means), on the CPU; encoded on `device` (default:
    encode_device()) in batches of ENCODE_PIXELS pixels, read from disk one batch at a time."""
    import numpy as np
    from PIL import Image

    from .vae import to_model

    device = torch.device(device) if device is not None else encode_device()
    vae.to(device)
    dtype = next(vae.parameters()).dtype
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), 64):
            imgs = torch.from_numpy(np.stack([np.asarray(Image.open(root / p).convert("RGB"))
                                              for p in paths[i:i + 64]])).permute(0, 3, 1, 2)
            step = max(1, ENCODE_PIXELS // (imgs.shape[2] * imgs.shape[3]))
            for j in range(0, len(imgs), step):
                x = to_model(imgs[j:j + step]).to(device, dtype)
                out.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(out) * vae.config.scaling_factor


ATLAS_NAME = "a combination of facial signs"  # the name of an atlas face's profile (read by the text baseline)


def atlas_training_rows(manifest: Path, profiles, data_cfg) -> tuple[list[dict], list]:
    """The phenotype atlas (phenotype_atlas.csv beside the manifest) as generator training rows: each face becomes a
    profile of exactly the phenotypes it shows at frequency 1 (every such face shows them), with a severity on the
    disease faces' scale. A phantom disease face shows a phenotype at intensity u * s / 3 (u ~ U(intensity_min, 1)),
    so an atlas face at intensities t reads as severity s = 3 * mean(t) / E[u], at most 3. The phenotypes' terms
    (names, definitions, ontology paths) come from the panel's profiles, held-out diseases' included: the generator
    then learns what each phenotype looks like in varied company, and draws an unseen disease from its parts."""
    import dataclasses

    import pandas as pd

    from ..data.manifest import ATLAS_FILE
    from ..kg import FacialProfile

    path = manifest.parent / ATLAS_FILE
    if not path.is_file():
        raise UserError(f"trainer.atlas_share > 0 needs the phenotype atlas ({path} is missing): set "
                        "data.atlas.faces > 0 (data=phantom) or trainer.atlas_share=0")
    terms = {}
    for prof in profiles:
        for p in prof.phenotypes:
            terms.setdefault(p.hpo_id, p)
    mean_u = (float(data_cfg.get("intensity_min", 0.7)) + 1.0) / 2.0
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    rows, atlas_profiles = [], []
    for k, r in enumerate(df.itertuples(index=False)):
        shown = json.loads(r.phenotypes or "{}")
        missing = sorted(set(shown) - set(terms))
        if not shown:
            raise UserError(f"{path}, row {k + 2}: an atlas face without phenotypes; rebuild the dataset")
        if missing:
            raise UserError(f"{path}, row {k + 2}: phenotypes {missing} are in no panel profile; rebuild the "
                            "dataset (python -m kgface.dataset) for this panel")
        # at least stage 1's bin: an atlas face shows its phenotypes, and its prompt's stage (1 at the least) and its
        # tokens' severity must name one stage (data.atlas.intensity below ~0.15 gave severity < 0.5, stage 0's)
        severity = min(3.0, max(0.5, 3.0 * sum(shown.values()) / len(shown) / mean_u))
        atlas_profiles.append(FacialProfile(
            disease_id=f"atlas-{k:05d}", name=ATLAS_NAME, kg=profiles[0].kg, query="phenotype atlas",
            phenotypes=[dataclasses.replace(terms[h], frequency=1.0, frequency_raw="", min_stage=0,
                                            provenance="phenotype atlas") for h in sorted(shown)]))
        rows.append({"path": r.path, "stage": stage_of(severity), "severity": severity,
                     "age_group": getattr(r, "age_group", "")})
    return rows, atlas_profiles
