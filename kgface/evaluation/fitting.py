"""Fitting the evaluator: the tiny CLIP (or a pretrained one's features) and the heads, trained and cached.

`fit_evaluator(cfg, manifest_path, profiles, cache)` trains (or loads from the cache) an evaluator on the `train`
split of a real manifest (phantom or user photos, every disease including the generator's held-out ones; never
generated images) and calibrates it on `val`. The disease probe learns from healthy faces, stages >=
`probe.min_stage` (stage 0 looks healthy by construction) and photos without a grade (inputs.probe_rows). The tiny
CLIP is also cached on its own (`evaluator-clip`), so a head setting refits the heads without retraining it.

A dataset folder may also hold `phenotype_atlas.csv` (same columns; written by `data=phantom` with `data.atlas.faces`
> 0): faces labelled with phenotypes only, no disease. When present, the tiny CLIP and the phenotype heads also train
on them (never the disease probe or the stage head), so a phenotype head sees its phenotype without its disease.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..cache import Cache, stable_hash, write_json_atomic
from ..data.manifest import ATLAS_FILE, read_manifest, stage_known
from ..kg import FacialProfile
from ..prompts import healthy_prompts, phenotype_caption, phenotype_prompts, zero_shot_prompts
from .clip_model import (ImageEncoder, build_clip, encode_texts, plain_config, registered_config_name, train_blur,
                         train_clip)
from .clip_state import CLIP_CHECKPOINT_EVERY
from .evaluator import Evaluator, weights_sha256
from .inputs import (HEALTHY, EvaluatorInputError, blur_images, blur_sigmas, check_real, drawn_phenotypes,
                     image_caption, labelled_phenotypes, learned_digests, load_images, manifest_hash, min_stage_of,
                     presence_matrix, probe_rows, split_counts)
from .probes import CoralHead, LinearProbe, PhenotypeHeads, Standardizer
from .towers import vision_tower

log = logging.getLogger(__name__)


def _profile_map(profiles, diseases: Sequence[str]) -> dict[str, FacialProfile]:
    by_id = {p.disease_id: p for p in (profiles.values() if isinstance(profiles, dict) else profiles)}
    missing = sorted(set(diseases) - set(by_id))
    if missing:
        raise EvaluatorInputError(f"no KG profile for {', '.join(missing[:5])}: add them to the panel "
                                  "(kg.panel / data.diseases) or drop their rows")
    return by_id


def _phenotype_map(profiles) -> dict:
    """HPO id -> the profiles' Phenotype (its visual wording names the phenotype in atlas captions)."""
    out = {}  # the first profile by id names a term (the cache key reads the profiles by id, not the caller's order)
    for prof in sorted(profiles.values() if isinstance(profiles, dict) else profiles, key=lambda p: p.disease_id):
        for ph in prof.phenotypes:
            out.setdefault(ph.hpo_id, ph)
    return out


PHENOTYPE_HEADS = ("all", "atlas", "zero_shot")  # evaluator.phenotype_heads: where the heads come from


def prompt_ensemble(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    """[D] normalised mean text embedding of a prompt ensemble."""
    return torch.nn.functional.normalize(encode_texts(model, tokenizer, prompts).mean(0), dim=-1)


def zero_shot_text(model, tokenizer, profiles: dict[str, FacialProfile], classes: list[str]) -> torch.Tensor:
    """[C, D] normalised mean text embedding of each class's zero-shot prompt ensemble."""
    return torch.stack([prompt_ensemble(model, tokenizer, healthy_prompts() if c == HEALTHY
                                        else zero_shot_prompts(profiles[c])) for c in classes])


def zero_shot_heads(model, tokenizer, phenotypes: list, scale: Standardizer) -> PhenotypeHeads:
    """Phenotype heads from the text tower alone (evaluator.phenotype_heads=zero_shot; no phenotype label needed):
    head p is the two-way softmax of the CLIP's logits for phenotype p's prompt ensemble against the healthy one,
    sigmoid(s * f.(t_p - t_0)) on unit image features f (s: the model's logit scale, at most 100). Written as a linear
    head on the standardised features the fitted heads read (f = x * std + mean), so scoring, saving and loading are
    theirs. Uncalibrated: 0.5 means "closer to the phenotype's prompts than to a healthy face's"."""
    if not phenotypes:
        return PhenotypeHeads(torch.zeros(0, len(scale.mean)), torch.zeros(0))
    with torch.no_grad():
        t0 = prompt_ensemble(model, tokenizer, healthy_prompts())
        tp = torch.stack([prompt_ensemble(model, tokenizer, phenotype_prompts(p)) for p in phenotypes])
        ls = getattr(model, "logit_scale", None)
        s = min(float(ls.exp()), 100.0) if isinstance(ls, torch.Tensor) else 100.0
        w = s * (tp - t0)
        return PhenotypeHeads((w * scale.std).float(), (w @ scale.mean).float())


def disease_classes(train: pd.DataFrame) -> list[str]:
    """The classes an evaluator fitted on these train rows knows: their diseases, healthy last."""
    return sorted(train["disease"].unique(), key=lambda d: (d == HEALTHY, d))


def train_evaluator(cfg, df: pd.DataFrame, profiles, progress: bool = True,
                    atlas: pd.DataFrame | None = None, clip: tuple[dict, dict] | None = None,
                    pretrained_sha256: str | None = None, model_config: str | None = None,
                    clip_state: tuple[Path, str] | None = None) -> Evaluator:
    """Train an evaluator on df's `train` split (calibrated on `val`); no caching (see fit_evaluator). `atlas`:
    phenotype-only faces for the CLIP and the phenotype heads (see the module docstring). `clip`: (state dict,
    training log) of a tiny CLIP already trained on this data with this config: only the heads are fitted.
    `pretrained_sha256`, `model_config`: the evaluator.pretrained file's digest and the name register_config_file
    gave evaluator.model, when the caller has them (fit_evaluator's cache key): their files are read once.
    `clip_state`: (folder, fingerprint) where the tiny CLIP's training state is saved as it trains and resumed
    from (fit_evaluator: beside the CLIP's cache entry)."""
    c = plain_config(cfg)
    train = df[df["split"] == "train"].reset_index(drop=True)
    val = df[df["split"] == "val"].reset_index(drop=True)
    where = df.attrs.get("manifest", "the manifest")  # errors name the file the frame was read from
    if len(train) == 0:
        raise EvaluatorInputError(f"{where}: no rows with split=train to fit the evaluator on ({split_counts(df)}); "
                                  "mark its training images split=train, or pass run=RUN_DIR to use a trained "
                                  "evaluator")
    heads_on = str(c.get("phenotype_heads", "all"))
    if heads_on not in PHENOTYPE_HEADS:
        raise EvaluatorInputError(f"evaluator.phenotype_heads={heads_on!r}: use 'all', 'atlas' or 'zero_shot'")
    if heads_on == "atlas" and (atlas is None or not len(atlas)):
        raise EvaluatorInputError(f"evaluator.phenotype_heads=atlas needs {ATLAS_FILE} beside the manifest "
                                  "(data.atlas.faces > 0 on data=phantom); or set evaluator.phenotype_heads=all")
    classes = disease_classes(train)
    if len(classes) < 2:
        raise EvaluatorInputError(f"{where}: its train split holds one class ({classes[0]}); "
                                  "the evaluator needs at least 2: add train rows of healthy faces or another disease")
    p = c.get("probe") or {}
    sigmas = blur_sigmas(p)  # a bad setting fails here, before the CLIP trains
    from ..config import as_number  # ... as do these two (read after it, the first as a bare ValueError)

    if as_number(p.get("l2", 1e-2), "evaluator.probe.l2", "the heads' L2, e.g. 1e-2") < 0:
        raise EvaluatorInputError(f"evaluator.probe.l2={p.get('l2')}: an L2 weight >= 0, e.g. 1e-2")
    threshold = as_number(c.get("phenotype_threshold", 0.5), "evaluator.phenotype_threshold", "in (0, 1], e.g. 0.5")
    if not 0.0 < threshold <= 1.0:  # `true` was read as 1.0 (nothing detected), 0 as every phenotype everywhere
        raise EvaluatorInputError(f"evaluator.phenotype_threshold={threshold:g}: a head probability in (0, 1], "
                                  "e.g. 0.5")
    if c["name"] == "tiny_clip" and clip is None:
        train_blur(c.get("train"), int(c["image_size"]))
    if not stage_known(train).any():  # data alone decides it: refused before the CLIP trains, not after
        raise EvaluatorInputError("no train image has a known stage (stage_known=False on every row): the stage "
                                  "head has nothing to learn; grade some photos (data.stages=...) or use a graded set")
    unseen = sorted(set(classes) - set(train["disease"][probe_rows(train, p)]))
    if unseen:
        raise EvaluatorInputError(f"no train image of {', '.join(unseen[:5])} at stage >= evaluator.probe.min_stage="
                                  f"{min_stage_of(p)}: lower it or add images of later stages")
    if len(val):
        stray = sorted(set(val["disease"]) - set(classes))
        if stray:  # calibration reads only classes the probe learned; their test rows are refused later, by name
            log.warning("%s: val rows of %s, a disease without train rows, are left out of calibration",
                        where, ", ".join(stray[:5]))
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
        info["pretrained_sha256"] = pretrained_sha256 or weights_sha256(Path(str(c["pretrained"])).expanduser())
        if model_config:  # ... and built from this config file: it must say the same
            info["model_config"] = model_config
    # phenotypes: those drawn in the train split or the atlas (the atlas draws only the panel's phenotypes)
    pheno_rows = list(train["phenotypes"]) + ([] if atlas is None else list(atlas["phenotypes"]))
    labelled_train = labelled_phenotypes(train)  # the heads' negatives and the CLIP's captions both read it
    labelled_rows = np.concatenate([labelled_train, np.ones(0 if atlas is None else len(atlas), bool)])
    info["unlabelled_phenotype_rows"] = int((~labelled_rows).sum())
    vocab = drawn_phenotypes(pheno_rows)
    if c["name"] == "tiny_clip":
        known = stage_known(train)
        captions = [image_caption(by_id[r.disease], r.stage if k else None, r.phenotypes, labelled)
                    for r, k, labelled in zip(train.itertuples(), known, labelled_train)]
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
            state = {} if clip_state is None else {"state_dir": clip_state[0], "fingerprint": clip_state[1],
                                                   "state_every": CLIP_CHECKPOINT_EVERY}
            info["clip"] = train_clip(model, tokenizer, clip_images, captions, c, progress=progress, labels=labels,
                                      presence=presence, stages=stages, **state)
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
    if heads_on == "zero_shot":  # every visible phenotype of the classes' profiles, labelled or not
        named = _phenotype_map([by_id[d] for d in classes])
        vocab = sorted(named)
        heads = zero_shot_heads(model, tokenizer, [named[h] for h in vocab], scale)
    else:
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
        if not vocab:
            log.info("evaluator: no phenotype labels to fit on, so no phenotype heads; "
                     "evaluator.phenotype_heads=zero_shot scores the profiles' phenotypes from the text tower")
    val = val[probe_rows(val, p).to_numpy()].reset_index(drop=True) if len(val) else val
    info["calibration_images"] = len(val)  # the val faces the temperature is fitted on (val_images: all of them)
    if len(val):  # calibrated on val faces of the kind it learned from
        f_val = encoder(load_images(list(val["abspath"]), size=images.shape[-2:])).numpy()
        info["temperature"] = probe.calibrate(scale(f_val), [index[d] for d in val["disease"]])
    else:  # its probabilities are the raw softmax: say so rather than pass them off as calibrated
        log.warning("evaluator: no 'val' rows of its classes (healthy or stage >= probe.min_stage): the disease "
                    "probe is not calibrated (give the manifest a val split)")
    info["fit_seconds"] = round(time.time() - start, 1)
    zs = zero_shot_text(model, tokenizer, by_id, classes)
    return Evaluator(cfg=c, model=model, tokenizer=tokenizer, image_size=image_size, classes=classes,
                     phenotypes=vocab, names={d: by_id[d].name for d in classes}, scale=scale, probe=probe,
                     coral=coral, heads=heads, zs_text=zs, info=info,
                     trained_on=learned_digests(df, atlas))


# bump when the heads or the scoring change, so cached evaluators rebuild. 3: the disease probe keeps ungraded
# photos (stage unknown) of diseases with probe.min_stage >= 3; per_stage_top1 gains its "healthy" cell
EVALUATOR_VERSION = 3
# bump when the tiny CLIP's training or its captions change: both cache entries rebuild. 2: a phantom face that drew
# no phenotype is captioned with none, not with its stage's template phenotypes (version 1: 105 of the benchmark's
# 8,400 diseased training faces of stages 1-3, 36 of the default's)
CLIP_VERSION = 2
CLIP_KEYS = ("name", "image_size", "embed_dim", "vision", "text", "train", "seed")  # the config that shapes the CLIP


def wording_digest(profiles) -> str:
    """Every form of caption and prompt the evaluator writes for these profiles, hashed: a change of wording (a
    stage renamed, a template rephrased, a prompt added) refits the CLIP and its heads instead of reusing one trained
    on the old sentences (CLIP_VERSION, bumped by hand, was the only guard)."""
    from ..prompts import caption

    texts = [healthy_prompts()]
    for p in profiles:
        every = {ph.hpo_id: 1.0 for ph in p.phenotypes}
        stages = [] if p.healthy else [t for s in range(4) for t in (caption(p, s), caption(p, s, every))]
        texts.append([caption(p), caption(p, None, every), *stages, *zero_shot_prompts(p),
                      *[phenotype_caption([ph]) for ph in p.phenotypes],
                      *[phenotype_prompts(ph) for ph in p.phenotypes]])
    return stable_hash(texts)


def clip_spec(spec: dict, keyed: dict) -> dict:
    """The tiny CLIP's cache key: the evaluator's data keys and the settings that shape the CLIP alone."""
    return {**spec, "version": CLIP_VERSION, "evaluator": {k: keyed.get(k) for k in CLIP_KEYS}}


def fit_evaluator(cfg_evaluator, manifest_path: str | os.PathLike, profiles, cache: Cache | None = None,
                  progress: bool = True) -> Evaluator:
    """The evaluator for this config and this manifest: loaded from the cache, else trained and cached.

    The cache key covers the evaluator config, the manifest file's content hash, the profiles and what the captions
    and zero-shot prompts say of them (`wording_digest`).
    """
    c = plain_config(cfg_evaluator)
    df = read_manifest(manifest_path)[0]
    check_real(df, str(manifest_path))
    atlas_path = Path(manifest_path).parent / ATLAS_FILE
    atlas = read_manifest(atlas_path)[0] if atlas_path.is_file() else None
    if atlas is not None:  # it trains the CLIP and the phenotype heads: never generated faces either
        check_real(atlas, str(atlas_path))
    if atlas is not None and (atlas["split"] != "train").any():  # atlas faces only ever train the instrument
        raise EvaluatorInputError(f"{atlas_path}: every row must have split 'train' (the atlas only trains the "
                                  "evaluator); move val/test faces to manifest.csv or drop them")
    if atlas is not None:  # an atlas built with other identities or split fractions renders test people
        tested = set(df.loc[df["split"] != "train", "identity"]) - {""}
        leaked = atlas.loc[atlas["identity"].isin(tested), "identity"]
        if len(leaked):
            raise EvaluatorInputError(
                f"{atlas_path}: {len(leaked)} rows show identity '{leaked.iloc[0]}', a val/test person of "
                f"{manifest_path}: the instrument would train on faces it is tested on; build the atlas with the "
                "manifest (one data config: seed, identities, split fractions) or drop those rows")
    if cache is None:
        return train_evaluator(c, df, profiles, progress=progress, atlas=atlas)
    # by id: kgface.train passes the panel's order, kgface.evaluate (no run=) the ids sorted; the same data and
    # profiles refitted the CLIP and heads (an hour on the benchmark) when the key hashed the caller's order
    plist = sorted(profiles.values() if isinstance(profiles, dict) else profiles, key=lambda p: p.disease_id)
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
            "profiles": stable_hash([p.to_dict() for p in plist if p.disease_id in used]),
            "wording": wording_digest([p for p in plist if p.disease_id in used])}
    if c["name"] != "tiny_clip" and c.get("pretrained"):  # new weights under the same path must refit the heads
        spec["pretrained_sha256"] = weights_sha256(Path(str(c["pretrained"])).expanduser())
        # ... and the same weights under another path need not: the file counts by its bytes alone
        spec["evaluator"] = {k: v for k, v in spec["evaluator"].items() if k != "pretrained"}
    model_config = registered_config_name(c)
    if model_config:  # an edited config file is another model; the same one elsewhere is not (its name hashes it)
        spec["model_config"] = model_config
        spec["evaluator"] = {k: v for k, v in spec["evaluator"].items() if k != "model"}
    elif c["name"] == "openclip":  # a built-in whose weights want another normalisation (keyed since 2026-12-07)
        from .clip_model import builtin_normalisation

        norm = builtin_normalisation(str(c.get("model") or ""))
        if norm is not None:
            spec["normalisation"] = norm
    train_rows = df[df["split"] == "train"]
    unlabelled = int((~labelled_phenotypes(train_rows)).sum())
    if unlabelled and (atlas is not None or any(map(bool, train_rows["phenotypes"]))):
        # left out of the phenotype terms since 2026-12-02 (earlier entries trained on them as negatives); without
        # any phenotype label there are no heads and no presence term, and nothing changed
        spec["unlabelled_phenotype_rows"] = unlabelled
    if atlas is not None:
        spec["atlas_sha256"] = manifest_hash(atlas_path)
        spec["atlas_images"] = images_digest(atlas_path, atlas["abspath"])
    heads_key = {}
    if str(c.get("phenotype_heads", "all")) == "zero_shot":  # the heads are these prompts' text embeddings (the
        # evaluator's entry only: the CLIP's is keyed by what shapes the CLIP)
        heads_key["zero_shot_prompts"] = stable_hash([healthy_prompts()] + [
            phenotype_prompts(ph) for p in plist if p.disease_id in used for ph in p.phenotypes])
    entry = cache.entry("evaluator", {**spec, **heads_key, "version": [EVALUATOR_VERSION, CLIP_VERSION]})
    if entry.exists():
        log.info("evaluator from the cache: %s", entry.path)
        ev = Evaluator.load(entry.path, pretrained_sha256=spec.get("pretrained_sha256"),
                            model_config=spec.get("model_config"),
                            paths={k: c.get(k) for k in ("pretrained", "model")})
        if ev.trained_on is None:  # an entry cached before the list was kept: the key says it is this data
            ev.trained_on = learned_digests(df, atlas)
        if c["name"] == "tiny_clip":  # a CLIP state a killed rival run left after another run finished this CLIP
            finished = cache.entry("evaluator-clip", clip_spec(spec, keyed), record=False)  # not used by this run
            if finished.exists():  # no run resumes it
                shutil.rmtree(finished.partial, ignore_errors=True)
        return ev
    # the tiny CLIP (minutes to an hour) has its own entry, keyed by what shapes it, so changing a head setting
    # (probe, phenotype_heads, threshold) refits the heads in seconds on the cached CLIP
    clip_entry, clip = None, None
    if c["name"] == "tiny_clip":
        clip_entry = cache.entry("evaluator-clip", clip_spec(spec, keyed))
        if clip_entry.exists():
            from safetensors.torch import load_file

            log.info("evaluator CLIP from the cache: %s", clip_entry.path)
            clip = (load_file(str(clip_entry.path / "clip.safetensors")),
                    json.loads((clip_entry.path / "clip.json").read_text(encoding="utf-8")))
    partial = None if clip_entry is None else clip_entry.partial
    ev = train_evaluator(c, df, profiles, progress=progress, atlas=atlas, clip=clip,
                         pretrained_sha256=spec.get("pretrained_sha256"),  # the key's digests: one read of the files
                         model_config=spec.get("model_config"),
                         clip_state=None if partial is None or clip is not None else (partial, clip_entry.key))
    if clip_entry is not None and clip is None:
        from safetensors.torch import save_file

        with clip_entry.build() as tmp:
            save_file({k: v.contiguous() for k, v in ev.model.state_dict().items()}, str(tmp / "clip.safetensors"))
            write_json_atomic(tmp / "clip.json", ev.info["clip"])
    if partial is not None:
        shutil.rmtree(partial, ignore_errors=True)  # the finished CLIP's state (or one a rival run left)
    with entry.build() as tmp:
        ev.save(tmp)
    ev.info["cache_entry"] = str(entry.path)
    return ev
