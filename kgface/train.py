"""`python -m kgface.train` — the main job (Hydra overrides; `accelerate launch -m kgface.train ...` on GPUs).

The default run is the embedded benchmark, end to end on a 2-core CPU:
profiles -> descriptions -> phantom data -> VAE (cached) -> latents -> KG encoder + adapter + UNet training ->
samples (diseases x stages, held-out diseases too) -> evaluation (when the evaluator is available) -> report.
Everything lands under the Hydra run directory (layout in docs/training.md); later commands take it as `run=OUT`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .cache import save_figure_atomic, write_json_atomic
from .config import entry
from .errors import UserError
from .runtime import load_knowledge, load_profiles, make_cache, profile_source

def _container(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def build_conditioning(cfg: DictConfig, backbone, profiles, cache, mode: str | None = None, full_prompts=(),
                       descriptions=None):
    """The conditioner for `mode` (default cfg.conditioning) over the training profiles (encoder from cfg.encoder);
    full_prompts: indices of observed-set and phenotype-atlas profiles (their text prompts name every phenotype);
    descriptions: the stage sentences of the language layer (kgface.prompts) the other text prompts read."""
    from .diffusion.conditioning import KG_MODES, Conditioner
    from .diffusion.phenotype_sets import observed_phenotypes_of

    mode = mode or cfg.conditioning
    num_tokens = int(cfg.model.get("num_tokens", 8))
    encoder = builder = None
    if mode in KG_MODES:
        from .encoders import KGEncoder

        enc_cfg = {**_container(cfg.encoder), "num_tokens": num_tokens}
        torch.manual_seed(int(cfg.seed))
        encoder = KGEncoder.from_config(enc_cfg, out_dim=backbone.cross_attention_dim)
        builder = encoder.graph_builder(cache=cache)
    cond = Conditioner(mode, profiles, backbone, encoder, builder, num_tokens=num_tokens, full_prompts=full_prompts,
                       phenotype_draws=observed_phenotypes_of(cfg), descriptions=descriptions)
    if builder is not None:
        builder.warm(profiles)
    return cond


def atlas_share_of(cfg: DictConfig) -> float:
    """trainer.atlas_share as a number (null = 0)."""
    return float(cfg.trainer.get("atlas_share", 0.0) or 0.0)


def mark_weight_of(cfg: DictConfig) -> float:
    """trainer.mark_weight as a number (null = 0)."""
    return float(cfg.trainer.get("mark_weight", 0.0) or 0.0)


def preflight(cfg: DictConfig) -> None:
    """Check what needs no heavy work: conditioning names and the pretrained folder's layout."""
    from .diffusion.conditioning import MODES
    from .diffusion.phenotype_sets import observed_phenotypes_of

    modes = list(cfg.baselines) if cfg.get("baselines") else [cfg.conditioning]
    bad = [str(m) for m in modes if m not in (*MODES, CONTROL)]
    if bad:
        key = "baselines" if cfg.get("baselines") else "conditioning"
        raise UserError(f"{key}={bad[0]} is unknown; use one of {', '.join((*MODES, CONTROL))}")
    atlas_faces = 0
    if cfg.data.name == "phantom":
        from .data.phantom.dataset import atlas_settings

        atlas = cfg.data.get("atlas")
        atlas_faces = atlas_settings(OmegaConf.to_container(atlas, resolve=True) if OmegaConf.is_config(atlas)
                                     else atlas)[0]
    if cfg.get("evaluate", True) and str(cfg.evaluator.get("phenotype_heads")) == "atlas":
        if cfg.data.name != "phantom":  # a train run rebuilds real data into the run folder, without an atlas
            raise UserError(f"evaluator.phenotype_heads=atlas needs the phantom's phenotype atlas; with "
                            f"data={cfg.data.name} set evaluator.phenotype_heads=all")
        if not atlas_faces:
            raise UserError("evaluator.phenotype_heads=atlas needs a phenotype atlas: set data.atlas.faces > 0 "
                            "(experiment=benchmark: 8000) or evaluator.phenotype_heads=all")
    stages = list(cfg.samples.stages or [])
    if not stages or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= 3 for s in stages):
        # the samples' rows label each image by its stage: a 1.5 would be drawn at 1.5 and labelled 1
        raise UserError(f"samples.stages={stages}: whole stages in 0-3, e.g. [0,1,2,3] (continuous severities: "
                        f"python -m kgface.generate stages=...)")
    share = atlas_share_of(cfg)
    if not 0.0 <= share < 1.0:
        raise UserError(f"trainer.atlas_share={share}: use a share of the batches in [0, 1)")
    if share > 0 and (cfg.data.name != "phantom" or not atlas_faces):
        raise UserError(f"trainer.atlas_share={share} needs the phantom's phenotype atlas: set data.atlas.faces > 0 "
                        "with data=phantom, or trainer.atlas_share=0")
    marks = mark_weight_of(cfg)
    if not (math.isfinite(marks) and marks >= 0):
        raise UserError(f"trainer.mark_weight={marks}: use a weight >= 0 (0 = the plain loss; 10 weighs a face's "
                        "marks about as much as the rest of it)")
    if marks > 0 and cfg.data.name != "phantom":  # photos have no aligned unmarked twin to find their marks by
        raise UserError(f"trainer.mark_weight={marks} needs rendered faces with a stage-0 twin (data=phantom); with "
                        f"data={cfg.data.name} set trainer.mark_weight=0")
    if observed_phenotypes_of(cfg) and cfg.data.name != "phantom":
        # a real photo's `{}` means "not labelled", not "shows nothing": conditioning on it would be a wrong label
        raise UserError(f"trainer.observed_phenotypes=true needs per-image phenotype labels that are complete, as "
                        f"the phantom's are (data=phantom); with data={cfg.data.name} set it to false")
    if cfg.get("evaluate", True):  # dlib's models load here once (a second) and are reused by the evaluation
        from .evaluation.face_identity import load_face_identity

        load_face_identity(cfg.get("face_identity", "auto"))
    if cfg.model.name == "tiny":  # its VAE is trained here; a bad setting must not wait for the data
        from .diffusion.vae import VAE_DEFAULTS, adversarial_active, check_discriminator_size, check_vae_train

        vae_train = check_vae_train({**VAE_DEFAULTS, **_container(cfg.model.vae_train)})
        if adversarial_active(vae_train):
            size = int(cfg.model.tiny.get("image_size") or cfg.data.size)
            check_discriminator_size((size, size), vae_train["adv_weight"])
    import os

    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:  # refused again in the trainer; here before any data is built
        raise UserError(f"WORLD_SIZE={world}: kgface trains on one device per run for now; launch one process "
                        "(python -m kgface.train or accelerate launch --num_processes 1)")
    if cfg.model.name != "tiny":
        from .diffusion.models import check_pretrained_folder

        folder = check_pretrained_folder(cfg.model.get("pretrained"), cfg.model.name)
        # config.yaml records it absolute: kgface.generate / evaluate / trial load the run from any directory
        with open_dict(cfg):
            cfg.model.pretrained = os.path.abspath(folder)  # not resolve(): a symlinked folder keeps its path
        if str(cfg.model.get("dtype", "fp32")) != "fp32":
            # frozen bf16/fp16 weights would also make the LoRA and adapter weights half precision (AdamW's small
            # updates round away) and meet fp32 inputs: not supported; autocast gives the speed
            raise UserError(f"model.dtype={cfg.model.dtype}: training loads the weights in fp32; for bf16 speed "
                            "on a GPU set model.dtype=fp32 and trainer.mixed_precision=bf16")
    key = "model.tiny.image_size" if cfg.model.name == "tiny" else "model.resolution"
    resolution = (cfg.model.get("tiny") or {}).get("image_size") if cfg.model.name == "tiny" \
        else cfg.model.get("resolution")
    size = cfg.data.get("size")
    if resolution and size and int(resolution) != int(size):
        # training would see data.size latents while sampling draws the model's (SDXL's time ids too)
        raise UserError(f"data.size={size} but {key}={resolution}: the model trains on data.size images and samples "
                        f"at {key}; set both to the same side (e.g. data.size={resolution})")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from .data.build import phantom_dataset
    from .dataset import panel_profiles
    from .prompts import describe_profiles, save_descriptions

    preflight(cfg)  # settings that cannot work fail now, not after the data, VAE and evaluator are built
    t0 = time.perf_counter()
    if int(cfg.get("num_threads") or 0) > 0:
        torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    cache = make_cache(cfg)
    timings, metrics = {}, {}

    def lap(name):
        timings[name] = time.perf_counter() - t0 - sum(timings.values())

    # 1. knowledge -> profiles (the panel + healthy), descriptions
    profiles = panel_profiles(cfg, cache)
    write_json_atomic(out_dir / "profiles.json", {"schema": "kgface.profiles/1", "kg": cfg.kg.source,
                                                  "profiles": [p.to_dict() for p in profiles]})
    conditioned = profile_source(cfg, profiles)  # profile.source=learned|blend: frequencies learned from images
    if conditioned is not profiles and any(a.to_dict() != b.to_dict() for a, b in zip(conditioned, profiles)):
        write_json_atomic(out_dir / "conditioning_profiles.json", [p.to_dict() for p in conditioned])
    # the profiles the generator is conditioned on are the ones described: the text prompts read these sentences
    descriptions = describe_profiles(conditioned, _container(cfg.llm), cache)
    save_descriptions(out_dir / "descriptions.json", descriptions)
    lap("profiles_s")

    # 2. data
    if cfg.data.name == "phantom":
        manifest = phantom_dataset(cfg, profiles, cache, progress=cfg.progress) / "manifest.csv"
    else:  # real photos: preprocessed into the run directory (their labels must use the panel's KG ids)
        from .data.real import build_real_dataset

        manifest = build_real_dataset(cfg.data, out_dir / "data").manifest
    heldout = {str(h) for h in cfg.data.get("heldout") or []}
    # prompts_read_descriptions: this run's text prompts were trained on descriptions.json (runs before 2026-12-01
    # wrote the file but trained on the template's sentences; generation must then use the template too)
    write_json_atomic(out_dir / "data.json", {"manifest": str(manifest), "heldout": sorted(heldout),
                                              "prompts_read_descriptions": True})
    lap("data_s")

    # 3. VAE (tiny: trained once per dataset, cached)
    vae = None
    if cfg.model.name == "tiny":
        from .diffusion.vae import cached_vae

        vae, metrics["vae"], _ = cached_vae(manifest, _container(cfg.model.tiny), _container(cfg.model.vae_train),
                                            cache, progress=cfg.progress)
    lap("vae_s")

    # 4. the evaluator: trained on real images of every disease (held-out ones too), never on generated ones,
    #    before the generator; cached by data and config
    evaluator = None
    if cfg.evaluate:
        from .evaluation import fit_evaluator

        evaluator = fit_evaluator(cfg.evaluator, manifest, profiles, cache, progress=cfg.progress)
        evaluator.save(out_dir / "evaluator")
    lap("evaluator_s")

    # 5-7. the generator, once per conditioning: train, draw, evaluate
    modes = list(cfg.baselines) if cfg.get("baselines") else [cfg.conditioning]
    for k, mode in enumerate(modes):
        sub = out_dir if len(modes) == 1 else out_dir / mode
        t1 = time.perf_counter()
        result = train_generator(cfg, mode, conditioned, manifest, heldout, vae, cache, sub, evaluator,
                                 measure_real=k == 0, truth=profiles, descriptions=descriptions)
        if len(modes) == 1:
            metrics.update(result)
        else:
            for key in ("evaluator", "vae_ceiling_top1"):  # the instrument's own numbers, measured once
                if key in result:
                    metrics[key] = result.pop(key)
            metrics.setdefault("baselines", {})[mode] = result
        timings[f"generator_{mode}_s"] = time.perf_counter() - t1

    # 8. report
    metrics["timings"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["timings"]["total_s"] = round(time.perf_counter() - t0, 1)
    metrics["conditioning"] = modes[0] if len(modes) == 1 else modes
    _report(out_dir, metrics, modes)
    write_json_atomic(out_dir / "metrics.json", metrics)  # last, as in the evaluation report: a whole run has it
    cache.record(out_dir)
    print(f"done in {time.perf_counter() - t0:.0f} s: {out_dir / 'report.md'}")
    return metrics


def train_generator(cfg: DictConfig, mode: str, profiles, manifest: Path, heldout: set[str], vae, cache,
                    out_dir: Path, evaluator=None, measure_real: bool = True, truth=None, descriptions=None) -> dict:
    """Train one generator (conditioning `mode`) on `profiles`, save it, draw its samples and transformations into
    out_dir, and (with an evaluator) measure them against `truth` (the KG profiles; default `profiles`).
    `descriptions` ({disease_id: StageDescriptions}, the run's descriptions.json): the stage sentences the text
    prompts of conditioning=text|kg_text read (None: the template's)."""
    from .diffusion.adapter import save_kg_adapter
    from .diffusion.backbones import build_backbone, save_model_folder
    from .diffusion.generator import Generator
    from .diffusion.trainer import train
    from .diffusion.phenotype_sets import observed_phenotypes_of
    from .diffusion.training_data import atlas_training_rows, latent_set, observed_training_sets

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg.seed))
    truth = truth or profiles
    if mode == CONTROL:  # the KG encoder sees every disease with another disease's phenotypes
        profiles, mode = shuffled_edges(profiles, int(cfg.seed)), "kg"
        write_json_atomic(out_dir / "shuffled_profiles.json", [p.to_dict() for p in profiles])
    backbone = build_backbone(_container(cfg.model), vae=vae, num_tokens=int(cfg.model.get("num_tokens", 8)),
                              with_adapter=mode != "text")
    train_profiles = [p for p in profiles if p.disease_id not in heldout]
    share = atlas_share_of(cfg)  # checked in preflight
    # class tokens cannot learn from phenotype-only faces (no class): that baseline trains without the atlas
    atlas = atlas_training_rows(manifest, profiles, cfg.data) if share > 0 and mode != "class" else None
    atlas_profiles = atlas[1] if atlas else []
    # each face conditioned on the phenotypes it shows (class tokens index diseases: that baseline ignores it); the
    # sets come from the images' labels, so the kg_shuffled control trains on true sets and draws from shuffled ones
    observed = observed_training_sets(manifest, [p for p in truth if p.disease_id not in heldout], heldout) \
        if observed_phenotypes_of(cfg) and mode != "class" else None
    extra = (observed[1] if observed else []) + atlas_profiles
    conditioner = build_conditioning(cfg, backbone, train_profiles + extra, cache, mode,
                                     full_prompts=range(len(train_profiles), len(train_profiles) + len(extra)),
                                     descriptions=descriptions)
    data = latent_set(manifest, train_profiles, backbone, heldout, atlas, share, observed,
                      marks=mark_weight_of(cfg) > 0)
    gen = Generator(backbone, conditioner, guidance=float(cfg.model.sample.guidance),
                    steps=int(cfg.model.sample.steps))
    names = {p.disease_id: p.name + (" (held out)" if p.disease_id in heldout else "") for p in profiles}
    drawable = profiles if mode != "class" else train_profiles  # class tokens cannot draw an unseen disease
    on_validate = _validation_grids(cfg, gen, drawable, names, out_dir)
    result = train(backbone, conditioner, data, {**_container(cfg.trainer), "seed": int(cfg.seed)}, out_dir,
                   progress=cfg.progress, on_validate=on_validate)
    if result["ema"] is not None:
        result["ema"].copy_to()  # the final weights are the EMA weights (checkpoints keep the raw ones)
    recent = result["losses"][-50:]
    metrics = {"train": {"steps": result["steps"], "final_loss": sum(recent) / max(1, len(recent)),
                         "seconds": round(result["seconds"], 1),
                         "train_images": len(data) - (len(atlas[0]) if atlas else 0),
                         "atlas_images": len(atlas[0]) if atlas else 0, "atlas_share": share if atlas else 0.0,
                         "observed_phenotype_sets": len(observed[1]) if observed else 0,
                         "mark_weight": mark_weight_of(cfg),
                         "marked_faces": int((data.marks.flatten(1).amax(1) > 0).sum()) if data.marks is not None
                         else 0}}

    # save: model/, adapter, encoder/ (or the class tokens)
    save_model_folder(backbone, out_dir / "model")
    if mode != "text":
        save_kg_adapter(backbone.unet, out_dir)
    if conditioner.uses_kg:
        conditioner.encoder.save_pretrained(out_dir / "encoder")
    elif mode == "class":
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in conditioner.class_tokens.state_dict().items()},
                  str(out_dir / "class_tokens.safetensors"))
    write_json_atomic(out_dir / "losses.json", result["losses"])
    _plot_loss(result["losses"], out_dir / "loss.png")

    # samples: every disease (held-out ones too, except under class conditioning) x stage; transformations
    metrics.update(draw_and_measure(cfg, gen, truth, drawable, manifest, heldout, names, out_dir, evaluator,
                                    measure_real, mode, trained_on_atlas=bool(atlas)))
    return metrics


CONTROL = "kg_shuffled"  # a baselines entry: KG conditioning trained and drawn on shuffled disease-phenotype edges


def shuffled_edges(profiles, seed: int):
    """Control: every disease keeps its id and name but gets another disease's visible phenotypes (a seeded
    derangement over the diseases, held-out ones included). Seen diseases stay learnable (their tokens are still
    distinct); what should collapse is drawing a held-out disease from its phenotypes. With
    trainer.observed_phenotypes the control trains on the images' true phenotype sets, as kg does, and draws each
    request's set from the shuffled profile: then the seen diseases should collapse too, and its profile match
    compares each image with the (shuffled) set it was asked for."""
    import dataclasses
    import random

    sick = [p for p in profiles if not p.healthy]
    order = list(range(len(sick)))
    rng = random.Random(seed)
    while len(order) > 1 and any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    moved = {p.disease_id: dataclasses.replace(p, phenotypes=list(sick[j].phenotypes)) for p, j in zip(sick, order)}
    return [moved.get(p.disease_id, p) for p in profiles]


def draw_and_measure(cfg, gen, profiles, drawable, manifest: Path, heldout: set[str], names: dict, out_dir: Path,
                     evaluator, measure_real: bool, mode: str, trained_on_atlas: bool = False) -> dict:
    """samples/ (grid + transformations + manifest.csv) and, with an evaluator, evaluation/ (metrics, figures).
    trained_on_atlas: the memorisation audit also looks for copies of the phenotype atlas's faces."""
    from .data.manifest import read_manifest
    from .diffusion.samples import sample_grid, save_grid, save_pairs, transform_set, write_set

    stages = list(cfg.samples.stages)
    per_cell = int(cfg.samples.per_cell)
    seed = int(cfg.seed) + 1000
    images, rows = sample_grid(gen, drawable, stages, per_cell, seed)
    save_grid(images, rows, names, out_dir / "samples" / "grid.png", [f"stage {s}" for s in stages] * per_cell)
    real_df = read_manifest(manifest)[0]
    n_ids = int(cfg.samples.get("transform_identities", 0))
    if n_ids > 0:
        test = real_df[real_df["split"] == "test"]
        t_images, t_rows = transform_set(gen, drawable, test, n_ids, float(cfg.samples.transform_strength),
                                         seed + 5000)
        if t_rows:
            save_pairs([r["source_image"] for r in t_rows], t_images, t_rows, names,
                       out_dir / "samples" / "transforms.png")
            images, rows = torch.cat([images, t_images]), rows + t_rows
    gen_manifest = write_set(images, rows, out_dir / "samples", heldout)
    out = {"samples": {"images": len(rows), "manifest": "samples/manifest.csv"}}
    if evaluator is None:
        return out

    from .data.manifest import ATLAS_FILE
    from .diffusion.vae import roundtrip
    from .evaluation import evaluate_sets, write_report
    from .evaluation.face_identity import load_face_identity

    vae = gen.backbone.vae
    metrics, scored = evaluate_sets(evaluator, real_df, gen_manifest,
                                    profiles, roundtrip=(lambda x: roundtrip(vae, x)) if measure_real else None,
                                    return_scored=True, heldout=heldout,
                                    audit_extra=manifest.parent / ATLAS_FILE if trained_on_atlas else None,
                                    face_identity=load_face_identity(cfg.get("face_identity", "auto")),
                                    identity_pairs=measure_real)
    if measure_real and cfg.data.name == "phantom":
        metrics.setdefault("evaluator", {}).update(isolated_effects_check(cfg, evaluator, real_df))
    controls = _controls(cfg, gen, drawable, evaluator, heldout, mode)
    if controls:
        metrics["controls"] = controls
    if not measure_real:  # the instrument's numbers belong to the first generator's evaluation only
        metrics.pop("evaluator", None)
        metrics.pop("vae_ceiling_top1", None)
    notes = [f"conditioning={mode}; evaluator {evaluator.cfg['name']} trained on the real train split "
             "(held-out diseases included, never generated images)",
             "top-1 headline = stages 2-3 plus healthy; stage 0 is healthy-looking by construction",
             "FID/KID on the evaluator's CLIP image features (InceptionV3 weights cannot be downloaded here)"]
    write_report(out_dir / "evaluation", metrics, scored, evaluator, profiles, notes=notes,
                 title=f"kgface evaluation ({mode})")
    out.update(metrics)
    return out


def isolated_effects_check(cfg, evaluator, real_df, per_term: int = 12, faces: int = 40) -> dict:
    """data=phantom: each phenotype head against its phenotype drawn alone at full intensity on healthy test
    identities (`phenotype_auroc_isolated`); the test split's AUROC can be high for a head that reads the disease."""
    from .data.build import isolated_effect_images
    from .data.phantom.dataset import identity_number
    from .evaluation.evaluator import HEALTHY
    from .evaluation.sets import auroc_summary, isolated_auroc

    test = real_df[(real_df["split"] == "test") & (real_df["disease"] == HEALTHY)]
    ids = [identity_number(x) for x in test["identity"]][:faces]
    if not ids:
        return {}
    images, labels = isolated_effect_images(cfg, evaluator.phenotypes, ids, per_term)
    auc = isolated_auroc(evaluator, images, labels)
    return {"phenotype_auroc_isolated": auc, "phenotype_auroc_isolated_summary": auroc_summary(auc)}


@torch.no_grad()
def _controls(cfg, gen, drawable, evaluator, heldout: set[str], mode: str) -> dict:
    """Does the image follow the condition? Every sick profile at stage 3 with `samples.control_seeds` seeds, drawn
    again (a) with the next disease's tokens and (b) with the adapter at scale 0; the share of images whose measured
    disease changes (token conditionings only; with kg_text the swap changes the prompt too, and scale 0 takes away
    the KG tokens alone, leaving the prompt). `*_chance` is the share that would change if the two
    predictions were independent draws from their own label distributions: a control near it means the condition
    moves the image as much as a fresh face would, well below it means the image hardly depends on the condition."""
    if mode == "text":
        return {}
    import numpy as np

    from .diffusion.adapter import set_adapter_scale
    from .diffusion.generator import Request

    sick = [p for p in drawable if not p.healthy]
    if len(sick) < 2:
        return {}
    seed = int(cfg.seed) + 9000
    k = max(1, int(cfg.samples.get("control_seeds", 1)))
    idx = [(i, j) for j in range(k) for i in range(len(sick))]
    reqs = [Request(sick[i], 3.0, seed + j * len(sick) + i) for i, j in idx]
    swapped = [Request(sick[(i + 1) % len(sick)], 3.0, seed + j * len(sick) + i) for i, j in idx]
    base = evaluator.score(gen.sample(reqs))["pred_disease"].to_numpy()
    swap = evaluator.score(gen.sample(swapped))["pred_disease"].to_numpy()
    set_adapter_scale(gen.backbone.unet, 0.0)
    try:
        off = evaluator.score(gen.sample(reqs))["pred_disease"].to_numpy()
    finally:
        set_adapter_scale(gen.backbone.unet, float(cfg.model.get("adapter_scale", 1.0)))
    target = np.array([r.profile.disease_id for r in reqs])
    return {"n": len(reqs), "seeds_per_disease": k,
            "token_swap_changed": float((swap != base).mean()), "token_swap_chance": _chance_changed(base, swap),
            "token_swap_follows_tokens": float((swap == [r.profile.disease_id for r in swapped]).mean()),
            "scale0_changed": float((off != base).mean()), "scale0_chance": _chance_changed(base, off),
            "top1": float((base == target).mean()), "scale0_top1": float((off == target).mean())}


def _chance_changed(a, b) -> float:
    """1 - sum_k P_a(k) P_b(k): how often two independent draws from a's and b's label frequencies differ."""
    import pandas as pd

    la, lb = pd.Series(a).value_counts(normalize=True), pd.Series(b).value_counts(normalize=True)
    return float(1.0 - (la * lb.reindex(la.index, fill_value=0.0)).sum())


def _validation_grids(cfg, gen, drawable, names, out_dir: Path):
    """trainer.val_every > 0: a small diseases x stages grid every N steps, samples/val/, on one noise for every
    disease: rows that stay one face whatever the disease say the generator does not read its tokens yet."""
    if not int(cfg.trainer.get("val_every") or 0):
        return None
    from .diffusion.samples import sample_grid, save_grid

    stages = list(cfg.samples.stages)

    def on_validate(step: int) -> None:
        was = gen.backbone.unet.training
        gen.backbone.unet.eval()
        gen.conditioner.eval()  # the encoder's running statistics, not the grid's batch
        images, rows = sample_grid(gen, drawable, stages, 1, int(cfg.seed) + 1000, shared_noise=True)
        save_grid(images, rows, names, out_dir / "samples" / "val" / f"step-{step:07d}.png",
                  [f"stage {s}" for s in stages])
        gen.backbone.unet.train(was)
        gen.conditioner.train(was)

    return on_validate


def _plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3))
    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid") if len(losses) >= k else losses
    ax.plot(smooth)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (smoothed)")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


HEADLINE = [  # (metrics.json key, what it measures, target on experiment=benchmark)
    ("evaluator.real_top1", "evaluator top-1 on real test images (stages 2-3 + healthy)", ">= 0.95"),
    ("evaluator.oracle_top1", "the same probe on the renderer's true phenotype vectors (separability ceiling)", ""),
    ("evaluator.phenotype_auroc_summary.median", "phenotype heads, median AUROC on the test split", ""),
    ("evaluator.vae_ceiling_phenotype_auroc_summary.median",
     "... after a VAE round trip (what a generator's faces can show at most)", ""),
    ("evaluator.phenotype_auroc_isolated_summary.median",
     "phenotype heads, median AUROC with each phenotype drawn alone on a healthy face (target: each >= 0.9)", ""),
    ("vae_ceiling_top1", "evaluator top-1 of real faces after a VAE round trip (the VAE's limit for faces as "
     "varied as real ones; more typical generated faces can read higher)", ""),
    ("evaluator.real_stage_mae", "evaluator stage MAE on real test images", ""),
    ("evaluator.real_stage_spearman_disease", "stage vs measured severity, real diseased test images", ""),
    ("evaluator.vae_ceiling_stage_spearman",
     "... after a VAE round trip (generation.stage_spearman's limit for faces as varied as real ones)", ""),
    ("generation.seen_top1", "generated, diseases the generator trained on", ">= 0.90"),
    ("generation.heldout_top1", "generated, held-out diseases (composed from their phenotypes)", ">= 0.60"),
    ("generation.stage_spearman", "requested stage vs measured severity", ">= 0.9"),
    ("generation.profile_match_f1", "detected vs expected phenotypes", ""),
    ("evaluator.real_profile_match_f1_template",
     "... real stage 2-3 faces vs the template's phenotypes (the reference for a template-conditioned generator)", ""),
    ("evaluator.real_profile_match_f1", "... real stage 2-3 faces vs their own phenotypes (not an upper bound)", ""),
    ("generation.frequency_mae", "generated phenotype frequencies vs the KG's", ""),
    ("transform.target_top1", "healthy->disease / disease->healthy transformations reach the target", ""),
    ("transform.identity_similarity", "evaluator feature cosine, source vs transformed", ""),
    ("transform.identity_distance_dlib", "dlib face-embedding distance, source vs transformed (face_identity)", ""),
    ("evaluator.identity_dlib.same_mean_distance", "dlib distance between two real faces of one identity", ""),
    ("evaluator.identity_dlib.different_mean_distance", "dlib distance between real faces of two identities", ""),
    ("evaluator.identity_auroc", "evaluator feature cosine separates same / different identity (all real test faces)",
     ""),
    ("evaluator.identity_dlib.clip_auroc", "... on dlib's real pairs", ""),
    ("evaluator.identity_dlib.auroc", "dlib distance separates same / different identity (the same real pairs)", ""),
    ("tstr_top1", "probe trained on generated images, tested on real ones (every disease's real rows)", ""),
    ("tstr_top1_seen", "... on the real rows of the diseases not held out", ""),
    ("kid_clip", "KID on evaluator CLIP features (lead with KID at small n)", ""),
    ("fid_clip", "FID on evaluator CLIP features", ""),
    ("memorisation_rate", "generated images closer to a training image than real near-duplicates", ""),
    ("controls.token_swap_changed", "measured disease changes when another disease's tokens are swapped in", ""),
    ("controls.token_swap_chance", "... would change if the two images were independent draws", ""),
    ("controls.scale0_changed", "measured disease changes with the adapter at scale 0", ""),
    ("controls.scale0_chance", "... would change if the two images were independent draws", ""),
]


def _get(metrics: dict, dotted: str):
    node = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(v) -> str:
    if isinstance(v, float) and v != 0 and abs(v) < 0.01:  # a KID of 4e-5 must not read 0.000
        return f"{v:.3g}"
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _report(out_dir: Path, metrics: dict, modes: list[str]) -> None:
    """report.md: headline numbers (per conditioning after baselines), pictures, then every number."""
    subs = {m: ("" if len(modes) == 1 else f"{m}/") for m in modes}
    per_mode = {m: (metrics if len(modes) == 1 else {**metrics, **metrics["baselines"][m]}) for m in modes}
    lines = ["# kgface training run", "",
             f"Conditioning: {', '.join(f'`{m}`' for m in modes)}. Layout and keys: docs/training.md.", "",
             "## Headline numbers", "", "| metric | " + " | ".join(modes) + " | target | what it measures |",
             "|---|" + "---|" * len(modes) + "---|---|"]
    for key, what, target in HEADLINE:
        vals = [_get(per_mode[m], key) for m in modes]
        if all(v is None for v in vals):
            continue
        lines.append(f"| `{key}` | " + " | ".join(_fmt(v) for v in vals) + f" | {target} | {what} |")
    lines += ["", f"Wall time: {_fmt(_get(metrics, 'timings.total_s'))} s "
              f"({', '.join(f'{k} {v}' for k, v in metrics.get('timings', {}).items() if k != 'total_s')}).", ""]
    for m in modes:
        p = subs[m]
        lines += [f"## Samples ({m}): diseases x stages; held-out diseases were never trained on", "",
                  f"![samples {m}]({p}samples/grid.png)", ""]
        if (out_dir / p / "samples" / "transforms.png").exists():
            lines += [f"Transformations of test identities (top: real input; bottom: output):", "",
                      f"![transforms {m}]({p}samples/transforms.png)", ""]
        lines += [f"![loss {m}]({p}loss.png)", ""]
        ev = out_dir / p / "evaluation"
        if ev.is_dir():
            lines += [f"Evaluation figures and every number: [{p}evaluation/report.md]({p}evaluation/report.md)", ""]
            for png in sorted(ev.glob("*.png")):
                lines += [f"![{png.stem}]({p}evaluation/{png.name})", ""]
    lines += ["## All numbers", "", "```json", json.dumps(metrics, indent=2), "```", ""]
    from .cache import write_text_atomic

    write_text_atomic(out_dir / "report.md", "\n".join(lines))


main = entry("train")(run)

if __name__ == "__main__":
    main()
