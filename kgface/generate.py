"""`python -m kgface.generate run=RUN_DIR mode=... hydra.run.dir=OUT` — pictures from a trained run (docs/generation.md).

Modes:
- `sample`: diseases x stages x seeds (stage may be continuous: a severity in [0, 3]).
- `transform`: input image(s) (IMAGE | DIR | MANIFEST.csv) -> the same face with `target` (a disease or `healthy`) at
  `stage`: SDEdit (the input's latent pushed `strength` up the noise ladder, then denoised with the KG condition).
  `mask=` / `keep=` restrict the change: the output is composited in pixel space, mask*generated + (1-mask)*input, so
  pixels outside the mask are the input's exactly. `inversion=true` starts from the input's deterministic DDIM
  inversion (under `source_disease` / `source_stage`) instead of random noise. Every output gets pixel-space SSIM /
  PSNR to its input (`identity_ssim`, `identity_psnr`) and, when the run has an evaluator, the cosine of the
  evaluator's image features (`identity_similarity`); generation.json holds the means, or says why there is none.
- `progression`: one identity through stages 0..3 (or `frames=N` severities) with shared noise, so only the disease
  changes; `input=` starts from a photo. A strip PNG and an animated GIF per identity.
- `compose`: diseases the run never trained on (by KG id) or a custom phenotype set with intensities.
Any mode: `identity_adapter=CKPT identity_image=FACE|input|EMBEDS` stacks a user's IP-Adapter with the KG adapter
(kgface.diffusion.adapter.stack_ip_adapter), so outputs keep the reference's identity; `identity_scale` weighs it.
Outputs: OUT/images/*.png, OUT/manifest.csv (dataset format + request columns), OUT/grid.png, OUT/generation.json.
Everything is validated before anything is generated, written to a staging folder and moved in at the end.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .cache import move_in, staging_folder
from .config import as_eta, as_list, as_number, entry
from .errors import UserError
from .sheets import to_pil

if TYPE_CHECKING:
    from .diffusion.requests import Identity, Item

log = logging.getLogger("kgface.generate")


def identity_scores(items: list[Item], images: torch.Tensor, evaluator=None) -> dict:
    """Per output with a source: identity_ssim / identity_psnr (pixels) and, with an evaluator, identity_similarity
    (cosine of its L2-normalised CLIP image features, source vs output), into each item's row; returns the means."""
    from .diffusion.editing import psnr, ssim
    from .evaluation.metrics import identity_similarity

    idx = [i for i, it in enumerate(items) if it.source is not None]
    if not idx:
        return {}
    for i in idx:
        items[i].row["identity_ssim"] = round(ssim(items[i].source, images[i]), 4)
        items[i].row["identity_psnr"] = round(psnr(items[i].source, images[i]), 2)
    # an output identical to its input (a mask that keeps every pixel) has an infinite PSNR: it is counted apart,
    # since one such output made the mean inf and generation.json invalid JSON ("Infinity")
    finite = [items[i].row["identity_psnr"] for i in idx if math.isfinite(items[i].row["identity_psnr"])]
    means = {"images": len(idx),
             "identity_ssim": round(sum(items[i].row["identity_ssim"] for i in idx) / len(idx), 4),
             "identity_psnr": round(sum(finite) / len(finite), 2) if finite else None}
    if len(finite) < len(idx):
        means["identity_unchanged"] = len(idx) - len(finite)  # pixel-identical to the input: left out of the PSNR
    if evaluator is not None:
        src = evaluator.features(torch.stack([items[i].source for i in idx]))
        out = evaluator.features(images[idx])
        for k, i in enumerate(idx):
            items[i].row["identity_similarity"] = round(identity_similarity(src[k:k + 1], out[k:k + 1]), 4)
        means["identity_similarity"] = round(identity_similarity(src, out), 4)
    return means


# ----------------------------------------------------------------------------------------------------- writing
def save_grid(images: torch.Tensor, items: list[Item], path: Path, title: str = "") -> None:
    """One row per group (disease, input or identity), its images left to right, labelled by severity and seed; a
    row of edits of an input (transform, progression with input=) starts with that input, so the change shows."""
    from .sheets import labelled_sheet

    groups = list(dict.fromkeys(it.group for it in items))
    idx = [[i for i, it in enumerate(items) if it.group == g] for g in groups]
    rows, captions = [], []
    for g, ix in zip(groups, idx):
        # the input leads the row only when the whole row edits that one input (a manifest's row is an identity,
        # which may hold several photos)
        inputs = {items[i].extra.get("input", items[i].source_name) for i in ix}
        source = items[ix[0]].source
        lead = [source] if source is not None and len(inputs) == 1 else []
        rows.append((f"{g}\n{items[ix[0]].row.get('name', '')[:28]}", lead + [images[i] for i in ix]))
        captions.append(["input"] * len(lead) + [f"s{items[i].row['severity']:g} seed{items[i].row['seed']}"
                                                  for i in ix])
    labelled_sheet(rows, title=title, captions=captions, cell=max(images.shape[-1], 48), label_width=180).save(path)


def save_strip(images: list[torch.Tensor], labels: list[str], png: Path, gif: Path) -> None:
    from PIL import Image, ImageDraw

    size = images[0].shape[-1]
    cell = max(size, 64)
    frames = [to_pil(im).resize((cell, cell)) for im in images]
    strip = Image.new("RGB", (cell * len(frames), cell + 14), "white")
    draw = ImageDraw.Draw(strip)
    for k, (f, lab) in enumerate(zip(frames, labels)):
        strip.paste(f, (k * cell, 0))
        draw.text((k * cell + 2, cell + 1), lab, fill="black")
    strip.save(png)
    frames[0].save(gif, save_all=True, append_images=frames[1:] + frames[-2:0:-1], duration=400, loop=0)


# What a set writes into OUT: replaced as a whole on every call (anything else in OUT, e.g. Hydra's .hydra/, stays)
SET_FILES = ("manifest.csv", "images", "sources", "strips", "grid.png", "generation.json")


def write_outputs(out_dir: Path, cfg: DictConfig, items: list[Item], images: torch.Tensor, summary: dict) -> Path:
    """Write into a staging folder, then move it in: OUT never holds a half-written set."""
    from .data.manifest import write_manifest
    from .diffusion.requests import NAME_LIMIT, file_safe

    with staging_folder(out_dir, ".generate-") as staging:
        (staging / "images").mkdir()
        rows, sources = [], {}
        for i, (it, img) in enumerate(zip(items, images)):
            tag = file_safe(it.row["disease"], NAME_LIMIT)  # an RDF disease's id may be a whole IRI, slashes and all
            # the photo's own name too: a backslash (a zip made on Windows) made a path read_manifest refuses
            src = f"_{file_safe(it.source_name, NAME_LIMIT)}" if it.source_name else ""
            rel = f"images/{i:04d}_{tag}_s{it.row['severity']:g}_seed{it.row['seed']}{src}.png"
            to_pil(img).save(staging / rel)
            row = dict(it.row, path=rel, **it.extra)
            if it.source is not None:
                key = it.extra.get("input", it.source_name)
                if key not in sources:
                    sources[key] = f"sources/{len(sources):04d}_{file_safe(it.source_name, NAME_LIMIT)}.png"
                    (staging / "sources").mkdir(exist_ok=True)
                    to_pil(it.source).save(staging / sources[key])
                row["source_image"] = sources[key]
            rows.append(row)
        if cfg.mode == "progression":
            (staging / "strips").mkdir()
            for g in dict.fromkeys(it.group for it in items):
                idx = [i for i, it in enumerate(items) if it.group == g]
                save_strip([images[i] for i in idx], [f"s{items[i].row['severity']:g}" for i in idx],
                           staging / "strips" / f"{g}.png", staging / "strips" / f"{g}.gif")
        if cfg.grid:
            save_grid(images, items, staging / "grid.png", f"{cfg.mode}: {summary['run']}")
        (staging / "generation.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        # move in, then the manifest last (atomically), so it only names files that exist. An earlier set in a reused
        # OUT goes as a whole first, its manifest before anything: no old manifest describes the new images, and no
        # old image, strip or grid this call does not draw stays beside the new set
        move_in(staging, out_dir, SET_FILES)
        return write_manifest(rows, out_dir / "manifest.csv")


def check_output_folder(cfg: DictConfig, out_dir: Path) -> None:
    """The set replaces SET_FILES in OUT: never in a train run (OUT or a folder above it holds one), another job's
    output, or where this call's own inputs lie."""
    from .run_files import check_output_dir, check_replaced_entries

    check_output_dir(out_dir, "the set", ("metrics.json", "dataset.json", "trial.csv"))  # an earlier set is replaced
    inputs = [("identity_image", cfg.get("identity_image")), ("mask", cfg.get("mask"))]
    if cfg.get("input") not in (None, "") and cfg.get("mode") in ("transform", "progression"):  # others ignore it
        from .diffusion.editing import input_files

        inputs += [("input", cfg.input)] + [("input", p) for p, _ in input_files(cfg.input)]
    # mask= may be region names, which lie nowhere
    check_replaced_entries(out_dir, "the set", SET_FILES, ("generation.json",), tuple(inputs))


# ----------------------------------------------------------------------------------------------------- identity
def _existing(cfg: DictConfig, key: str, what: str) -> Path:
    path = Path(str(cfg[key])).expanduser()
    if not path.exists():
        raise UserError(f"{key}={path} does not exist ({what})")
    return path


def check_identity(cfg: DictConfig):
    """Validate the identity_* keys before anything loads; returns (checkpoint, encoder folder or None, reference:
    a PIL image, precomputed embeddings, 'input', or None when no identity adapter is asked for)."""
    if cfg.identity_adapter in (None, ""):
        for key in ("identity_image", "identity_encoder"):  # read only with the adapter: a set one did nothing
            if cfg.get(key) not in (None, ""):
                raise UserError(f"{key}= needs identity_adapter=CHECKPOINT.safetensors (the IP-Adapter it feeds)")
        if as_number(cfg.identity_scale, "identity_scale") != 1.0:
            raise UserError(f"identity_scale={cfg.identity_scale} needs identity_adapter=CHECKPOINT.safetensors (the "
                            "identity branch it weighs)")
        return None
    ckpt = _existing(cfg, "identity_adapter", "an IP-Adapter checkpoint, .safetensors")
    if cfg.identity_image in (None, ""):
        raise UserError("identity_adapter= needs identity_image=FACE (an image), identity_image=input (each input is "
                        "its own reference) or identity_image=EMBEDS.safetensors (precomputed image_embeds)")
    if not as_number(cfg.identity_scale, "identity_scale") >= 0:  # nan passed float() and drew NaN faces
        raise UserError(f"identity_scale={cfg.identity_scale}: the identity branch's weight is >= 0 (0 = KG only)")
    ref = str(cfg.identity_image)
    if ref == "input":
        if not (cfg.mode in ("transform", "progression") and cfg.input):
            raise UserError("identity_image=input needs input images (mode=transform, or mode=progression with "
                            "input=)")
        reference = "input"
    else:
        path = _existing(cfg, "identity_image", "the reference face: an image or image_embeds .safetensors")
        if path.suffix == ".safetensors":
            from .diffusion.adapter import read_identity_embeds

            if cfg.identity_encoder not in (None, ""):  # checked nowhere else: a typo passed
                raise UserError("identity_encoder= is not read with precomputed identity_image=EMBEDS.safetensors; "
                                "leave it out")
            return ckpt, None, read_identity_embeds(path)  # no image encoder needed
        from .data.images import load_rgb

        reference = load_rgb(path)  # unreadable: ImageError (one line)
    if cfg.identity_encoder not in (None, ""):
        encoder = _existing(cfg, "identity_encoder", "the IP-Adapter's CLIP vision model folder")
    else:
        encoder = ckpt.parent / "image_encoder"
        if not encoder.is_dir():
            raise UserError(f"identity_encoder= is not set and {encoder} does not exist; give the CLIP vision model "
                            "folder of the IP-Adapter (h94/IP-Adapter: models/image_encoder)")
    return ckpt, encoder, reference


def stack_identity(checked, unet, scale: float) -> Identity:
    """Stack the checked identity adapter on the run's UNet and set a fixed reference now."""
    from .diffusion.adapter import (identity_image_embeds, load_identity_encoder, set_identity_embeds,
                                    stack_ip_adapter)
    from .diffusion.requests import Identity

    ckpt, encoder_dir, reference = checked
    adapter = stack_ip_adapter(unet, ckpt, scale=scale)
    encoder = processor = None
    if encoder_dir is not None:
        encoder, processor = load_identity_encoder(encoder_dir)
    if isinstance(reference, torch.Tensor):
        set_identity_embeds(adapter, reference)
        return Identity(adapter, "embeddings")
    if reference != "input":
        set_identity_embeds(adapter, identity_image_embeds(encoder, processor, [reference],
                                                           adapter.wants_hidden_states))
        return Identity(adapter, "image", encoder, processor)
    return Identity(adapter, "input", encoder, processor)


# ----------------------------------------------------------------------------------------------------- entry
# keys a mode does not read: set away from conf/generate.yaml's value, they would have been ignored in silence
# (mode=transform input=x.png disease=ORPHA:870 drew the default target, healthy)
IGNORED_BY_MODE = {
    "sample": ("input", "strength", "frames", "target", "stage", "phenotypes", "inversion", "source_disease",
               "source_stage"),
    "compose": ("input", "strength", "frames", "target", "stage", "inversion", "source_disease", "source_stage"),
    "transform": ("diseases", "disease", "stages", "frames", "lesions", "phenotypes"),
    "progression": ("target", "stage", "phenotypes"),
}
# pairs of which only one may be set: the first would win over the second
EXCLUSIVE = (("lesions", "stages"), ("frames", "stages"), ("frames", "lesions"))


def check_mode_keys(cfg: DictConfig) -> None:
    from .resources import conf_dir

    defaults = OmegaConf.load(conf_dir() / "generate.yaml")

    def is_set(key: str) -> bool:
        value, default = cfg.get(key), defaults.get(key)
        plain = lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v  # noqa: E731
        return plain(value) != plain(default)

    ignored = [k for k in IGNORED_BY_MODE.get(cfg.mode, ()) if is_set(k)]
    # keys a mode reads only beside another: a progression drawn from noise (no input=) samples the full ladder,
    # and the source of a transform is read only by the inversion
    if cfg.mode == "progression" and not cfg.get("input") and is_set("strength"):
        ignored.append("strength")
    if cfg.mode in ("transform", "progression") and not cfg.get("inversion"):
        ignored += [k for k in ("source_disease", "source_stage") if is_set(k)]
    to_healthy = cfg.mode == "transform" and str(cfg.get("target")).lower() == "healthy"
    if to_healthy and is_set("stage") and as_number(cfg.get("stage"), "stage") != 0:
        # healthy is drawn at stage 0 only; the default stage (3) is let pass
        raise UserError(f"stage={cfg.get('stage')} with target=healthy: a healthy face is drawn at stage 0; leave "
                        "stage out")
    if to_healthy and cfg.get("inversion") and not is_set("source_disease"):
        # inverted under the default source, healthy, and redrawn as healthy: the disease stays in the output
        raise UserError("inversion=true with target=healthy needs source_disease= (and source_stage=): the disease "
                        "and stage the input shows; under the default, healthy, the input would be inverted and "
                        "redrawn as healthy and keep its disease")
    if ignored:
        raise UserError(f"mode={cfg.mode} does not read {', '.join(f'{k}={cfg.get(k)}' for k in ignored)}; leave "
                        f"{'it' if len(ignored) == 1 else 'them'} out, or use the mode that reads "
                        f"{'it' if len(ignored) == 1 else 'them'} (docs/generation.md)")
    for first, second in EXCLUSIVE:  # (a mode that reads neither of a pair refused both above)
        if is_set(first) and is_set(second):
            raise UserError(f"{first}={cfg.get(first)} and {second}={cfg.get(second)}: give one ({first} would "
                            f"replace {second})")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from .diffusion.adapter import adapter_scale_or_none
    from .diffusion.editing import edit_mask
    from .diffusion.generator import Generator
    from .diffusion.phenotype_sets import observed_phenotypes_of
    from .diffusion.requests import (MODES, Profiles, check_distinct, check_inversion_seeds, generate,
                                     parse_phenotypes, plan)
    from .diffusion.run_loading import check_precision_device, heldout_of, load_run, run_config
    from .run_files import find_evaluator
    from .runtime import apply_num_threads, check_run_kg, make_cache, torch_device

    t0 = time.perf_counter()
    apply_num_threads(cfg)
    if cfg.mode not in MODES:
        raise UserError(f"mode={cfg.mode} is unknown; use one of {', '.join(MODES)}")
    if cfg.mode == "compose" and cfg.phenotypes is not None:
        parse_phenotypes(cfg.phenotypes)  # fail on a mis-parsed override before loading anything
    if (cfg.mask is not None or cfg.keep is not None) and not (cfg.mode in ("transform", "progression") and cfg.input):
        raise UserError("mask= / keep= need an input image (mode=transform, or mode=progression with input=)")
    if OmegaConf.is_missing(cfg, "run") or cfg.run in (None, ""):
        raise UserError("run= is required: a kgface.train output directory (python -m kgface.generate run=RUN_DIR)")
    check_output_folder(cfg, out_dir)
    if not 0.0 < as_number(cfg.strength, "strength") <= 1.0:
        raise UserError(f"strength={cfg.strength} must lie in (0, 1]")
    batch = as_number(cfg.batch_size, "batch_size")
    if not (batch >= 1 and batch == int(batch)):  # 2.9 became 2
        raise UserError(f"batch_size={cfg.batch_size}: a whole number >= 1")
    # ints as given (a float holds 53 bits: 2^62 - 1 rounded up to 2^62); torch's generators take 64, eta adds 2^62
    seeds = [s if isinstance(s, int) and not isinstance(s, bool) else as_number(s, "seeds")
             for s in as_list(cfg.seeds, "seeds")]
    if cfg.seeds is not None and not seeds:  # an empty list drew seed 0 and recorded it as asked
        raise UserError("seeds=[]: give at least one seed, e.g. seeds=[0]")
    if any(s != int(s) or not 0 <= int(s) < 2 ** 62 for s in seeds):
        raise UserError(f"seeds={cfg.seeds}: seeds are integers in [0, 2^62)")
    if cfg.get("evaluator_dir") not in (None, "", False) and not (cfg.mode in ("transform", "progression")
                                                                  and cfg.input):
        raise UserError("evaluator_dir= scores how far outputs keep their input's identity: it needs input images "
                        "(mode=transform, or mode=progression with input=); leave it out")
    if cfg.frames is not None and (as_number(cfg.frames, "frames") != int(cfg.frames) or int(cfg.frames) < 2):
        raise UserError(f"frames={cfg.frames}: a progression ramp needs an integer number of frames >= 2")
    if cfg.inversion and not (cfg.mode in ("transform", "progression") and cfg.input):
        raise UserError("inversion=true needs input images (mode=transform, or mode=progression with input=)")
    # sampler settings given on the command line are checked before the run loads (an SD run takes a while)
    if cfg.guidance is not None:
        as_number(cfg.guidance, "guidance")
    eta = None if cfg.get("eta") is None else as_eta(cfg.eta, "eta")
    steps = None if cfg.steps is None else as_number(cfg.steps, "steps")
    if steps is not None and (steps != int(steps) or steps < 1):
        raise UserError(f"steps={steps:g}: DDIM steps are an integer >= 1 (at most the model's noise ladder)")
    from .diffusion.sampling import SPACINGS, strength_steps

    spacing = None if cfg.get("spacing") is None else str(cfg.spacing)
    if spacing is not None and spacing not in SPACINGS:
        raise UserError(f"spacing={spacing}: use one of {', '.join(SPACINGS)} (the DDIM ladder; null = the run's)")
    check_mode_keys(cfg)  # after the checks of the values themselves, which say more
    checked_identity = check_identity(cfg)
    cache = make_cache(cfg)
    device = torch_device(cfg.get("device"))
    run_dir = Path(str(cfg.run)).expanduser()
    trained_with = run_config(run_dir)
    check_run_kg(cfg, trained_with)  # before the model loads (an SD run takes minutes), as is this:
    if cfg.inversion and not observed_phenotypes_of(trained_with):  # (a run that draws sets: checked below)
        check_inversion_seeds(seeds, eta if eta is not None else float(trained_with.model.sample.get("eta", 0.0)))
    backbone, conditioner, run_profiles, run_cfg = load_run(run_dir, cache=cache, adapter_scale=cfg.adapter_scale,
                                                           dtype=cfg.get("dtype"))
    backbone.unet.to(device)  # the text encoder stays on the CPU: its states are cached per prompt and moved
    backbone.vae.to(device)
    conditioner.to(device)
    check_precision_device(backbone, device)
    age = -1
    if cfg.age is not None:
        from .diffusion.training_data import AGE_INDEX

        if not getattr(conditioner.encoder, "age_groups", 0):
            raise UserError(f"age={cfg.age}: run={cfg.run} was not trained with ages")
        if str(cfg.age) not in AGE_INDEX:
            raise UserError(f"age={cfg.age} is unknown; use one of {', '.join(AGE_INDEX)}")
        age = AGE_INDEX[str(cfg.age)]

    profiles = Profiles(cfg, run_profiles, cache)
    trained = {p.disease_id for p in conditioner.profiles}
    # `diseases=null` means every profile the run can draw: a class run cannot draw the diseases it held out
    drawable = [p for p in run_profiles if p.disease_id in trained] if conditioner.mode == "class" else run_profiles
    items, intensities = plan(cfg, profiles, drawable, backbone.image_size, age)
    if age >= 0:  # the manifest's own column: a drawn set says which age it was asked for
        for it in items:
            it.row["age_group"] = str(cfg.age)
    heldout = heldout_of(run_dir)
    inversion = None
    if cfg.inversion:
        s = as_number(cfg.source_stage, "source_stage")
        if not 0.0 <= s <= 3.0:
            raise UserError(f"source_stage={cfg.source_stage}: the input's stage must lie in [0, 3]")
        source = profiles.get(cfg.source_disease, "source_disease")
        if source.healthy and s != 0:  # healthy at severity 2 is a condition no run trained on
            raise UserError(f"source_stage={cfg.source_stage} with source_disease={cfg.source_disease}: a healthy "
                            "input has stage 0; set source_disease to the disease it shows, or source_stage=0")
        to_healthy = cfg.mode == "transform" and profiles.get(cfg.target, "target").healthy  # however spelled
        if to_healthy and source.healthy:
            # inverted and redrawn as healthy, the input keeps its disease
            raise UserError(f"inversion=true with source_disease={cfg.source_disease} and target={cfg.target}: set "
                            "source_disease (and source_stage) to the disease and stage the input shows")
        from .prompts.wording import stage_levels

        if to_healthy and s == 0 and not stage_levels(source.disease_id)[0].signs:
            # stage 0 shows no sign here (acne's grade 0 does: a few lesions): inverted under it, the disease stays
            raise UserError(f"inversion=true with source_disease={cfg.source_disease} at source_stage=0 and target="
                            f"{cfg.target}: stage 0 shows no sign, so the inversion keeps the disease; set "
                            "source_stage to the stage the input shows (1-3)")
        inversion = (source, s)
    if conditioner.mode == "class":
        asked = {it.row["disease"]: it.row["name"] for it in items}
        if inversion:
            asked[inversion[0].disease_id] = inversion[0].name
        unseen = sorted(set(asked) - trained)
        if unseen:
            named = [f"{d} ({asked[d]}{', held out in training' if d in heldout else ''})" for d in unseen]
            raise UserError(f"run={cfg.run} uses conditioning=class, which cannot draw diseases it never saw: "
                            f"{', '.join(named)}; use a conditioning=kg, text or kg_text run for them")
    # a custom set is encoded as its profile (frequency = the given intensity), the route every kgface run trained:
    # no training path builds intensity-weighted graphs, so the encoder's intensity weight-kind embedding keeps its
    # random start and a set encoded through it would be off the trained distribution (docs/encoder.md)
    for it in items:
        it.row["trained"] = it.row["disease"] in trained
        it.row["heldout"] = it.row["disease"] in heldout
    mask = edit_mask(cfg.mask, cfg.keep, backbone.image_size)
    evaluator, evaluator_note = (find_evaluator(cfg, run_dir)
                                 if any(it.source is not None for it in items) else (None, ""))
    identity = None
    if checked_identity is not None:
        identity = stack_identity(checked_identity, backbone.unet, float(cfg.identity_scale))
        ref = "input" if identity.reference == "input" else str(cfg.identity_image)
        for it in items:
            it.row["identity_reference"] = it.extra.get("input", "") if ref == "input" else ref

    guidance = as_number(cfg.guidance if cfg.guidance is not None else run_cfg.model.sample.guidance, "guidance")
    steps = as_number(steps if steps is not None else run_cfg.model.sample.steps, "steps")
    n_train = int(backbone.scheduler.config.num_train_timesteps)
    if steps != int(steps) or not 1 <= steps <= n_train:
        raise UserError(f"steps={steps:g}: DDIM steps are an integer in [1, {n_train}] (the model's noise ladder)")
    steps = int(steps)
    eta = eta if eta is not None else float(run_cfg.model.sample.get("eta", 0.0))
    gen = Generator(backbone, conditioner, guidance=guidance, steps=steps, spacing=spacing, eta=eta)
    check_distinct(gen, items, inversion, str(cfg.run))
    drawn = gen.requested_phenotypes([it.request for it in items])
    for it, ids in zip(items, drawn or []):  # a run trained on observed phenotype sets draws one per image
        it.row["requested_phenotypes"] = json.dumps(ids)
    log.info("%s: %d images from %s (guidance %g, %d %s steps)", cfg.mode, len(items), cfg.run, guidance, steps,
             gen.spacing)
    images = generate(gen, items, int(cfg.batch_size), float(cfg.strength), mask, progress=bool(cfg.progress),
                      identity=identity, inversion=inversion)
    scores = identity_scores(items, images, evaluator)
    if scores:
        scores["evaluator"] = evaluator_note if evaluator is not None else None
        if evaluator is None:
            scores["identity_similarity"] = None
            scores["note"] = evaluator_note
    summary = {"run": str(cfg.run), "mode": cfg.mode, "conditioning": conditioner.mode, "images": len(items),
               "guidance": guidance, "steps": steps, "spacing": gen.spacing, "eta": eta,
               # the KG branch's weight (0: the base model alone): a set drawn at another scale must say so
               "adapter_scale": adapter_scale_or_none(backbone.unet),
               # SDEdit's strength where an input was edited; a set drawn from noise walks the whole ladder
               "strength": float(cfg.strength) if any(it.source is not None for it in items) else None,
               # the steps it walked: max(1, round(steps * strength)) (diffusers floors: 0.25 of 10 walks 2 here,
               # 0.35 of 10 walks 4, and any strength walks at least one)
               "strength_steps": (strength_steps(steps, float(cfg.strength))
                                  if any(it.source is not None for it in items) else None),
               "age": None if cfg.age is None else str(cfg.age),
               "dtype": str(run_cfg.model.get("dtype", "fp32")),  # the base's precision: bf16 moves pixels slightly
               "mask": OmegaConf.to_container(cfg.mask) if isinstance(cfg.mask, ListConfig) else cfg.mask,
               "keep": OmegaConf.to_container(cfg.keep) if isinstance(cfg.keep, ListConfig) else cfg.keep,
               "inversion": ({"source_disease": inversion[0].disease_id, "source_stage": inversion[1]}
                             if inversion else False),
               "identity_adapter": ({"checkpoint": str(checked_identity[0]), "reference": identity.reference,
                                     "image": str(cfg.identity_image), "scale": float(cfg.identity_scale),
                                     "encoder": str(checked_identity[1]) if checked_identity[1] else None}
                                    if identity else None),
               "identity": scores or "no input images: nothing to compare (identity scores are for transform and "
                                     "progression with input=)",
               "seconds": round(time.perf_counter() - t0, 1)}
    manifest = write_outputs(out_dir, cfg, items, images, summary)
    print(f"{len(items)} images in {time.perf_counter() - t0:.0f} s: {manifest}")
    return {**summary, "manifest": str(manifest)}


main = entry("generate")(run)

if __name__ == "__main__":
    main()
