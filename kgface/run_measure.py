"""What a `kgface.train` run does with each trained generator besides saving it: draw its samples (diseases x
stages, held-out diseases unless conditioning=class, transformations of test identities) and measure them with the
run's evaluator (`draw_and_measure`), the conditioning controls (token swap, adapter at scale 0), the phenotype heads
against each phenotype drawn alone, and the validation grids drawn during training.

Glue between the generator (kgface.diffusion) and the instrument (kgface.evaluation), which never import each other.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .errors import UserError

log = logging.getLogger(__name__)


def transform_seed(cfg) -> int:
    """The first seed of a run's transformations of test faces (samples: cfg.seed + 1000; these 5,000 further on),
    so that bench/transform_strength.py can redraw exactly the run's own."""
    return int(cfg.seed) + 1000 + 5000


def draw_and_measure(cfg, gen, profiles, drawable, manifest: Path, heldout: set[str], names: dict, out_dir: Path,
                     evaluator, measure_real: bool, mode: str, trained_on_atlas: bool = False,
                     seed_order: list[str] | None = None, label: str | None = None) -> dict:
    """samples/ (grid + transformations + manifest.csv) and, with an evaluator, evaluation/ (metrics, figures).
    trained_on_atlas: the memorisation audit also looks for copies of the phenotype atlas's faces. seed_order: the
    disease ids that fix each disease's noise in the grid (`grid_requests`; default: drawable's order). label: the
    conditioning the report names (kg_shuffled draws as kg: `mode` is what the controls need)."""
    from .data.manifest import read_manifest
    from .diffusion.samples import sample_grid, save_grid, save_pairs, transform_set, write_set

    unread = []
    if evaluator is not None:  # real photos (data=disease_faces, a manifest) may show fewer diseases than the KG
        # panel: the evaluator reads only those it saw real faces of, so the measured set draws only them
        known = set(evaluator.classes)
        unread = [p for p in drawable if p.disease_id not in known]
        if len(unread) == len(drawable):
            raise UserError(f"the evaluator knows none of the diseases this run draws (it knows "
                            f"{', '.join(evaluator.classes)}); train on real faces of the panel's diseases")
        if unread:
            log.warning("samples: %d panel diseases have no real faces the evaluator learned (%s); drawn and measured: "
                        "%s (kgface.generate draws the others)", len(unread),
                        ", ".join(p.disease_id for p in unread[:6]) + (", ..." if len(unread) > 6 else ""),
                        ", ".join(p.disease_id for p in drawable if p.disease_id in known))
            drawable = [p for p in drawable if p.disease_id in known]
    stages = list(cfg.samples.stages)
    per_cell = int(cfg.samples.per_cell)
    seed = int(cfg.seed) + 1000
    images, rows = sample_grid(gen, drawable, stages, per_cell, seed, seed_order=seed_order)
    save_grid(images, rows, names, out_dir / "samples" / "grid.png", [f"stage {s}" for s in stages] * per_cell)
    real_df = read_manifest(manifest)[0]
    n_ids = int(cfg.samples.get("transform_identities", 0))
    if n_ids > 0:
        test = real_df[real_df["split"] == "test"]
        t_images, t_rows = transform_set(gen, drawable, test, n_ids, float(cfg.samples.transform_strength),
                                         transform_seed(cfg), seed_order=seed_order)
        if t_rows:
            save_pairs([r["source_image"] for r in t_rows], t_images, t_rows, names,
                       out_dir / "samples" / "transforms.png")
            images, rows = torch.cat([images, t_images]), rows + t_rows
    gen_manifest = write_set(images, rows, out_dir / "samples", heldout)
    out = {"samples": {"images": len(rows), "manifest": "samples/manifest.csv"}}
    if unread:  # why the seen counts are small: stated beside them, not only in the log
        out["samples"]["not_measured"] = sorted(p.disease_id for p in unread)
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
    from .evaluation.metrics import rounded  # as evaluate_sets rounds its own (NaN -> null too)

    if measure_real and cfg.data.name == "phantom":
        metrics.setdefault("evaluator", {}).update(rounded(isolated_effects_check(cfg, evaluator, real_df)))
    controls = conditioning_controls(cfg, gen, drawable, evaluator, heldout, mode, seed_order=seed_order)
    if controls:
        metrics["controls"] = rounded(controls)
    if not measure_real:  # the instrument's numbers belong to the first generator's evaluation only
        metrics.pop("evaluator", None)
        metrics.pop("vae_ceiling_top1", None)
        metrics.pop("vae_ceiling_top1_ci95", None)
    label = label or mode
    notes = [f"conditioning={label}; evaluator {evaluator.cfg['name']} trained on the real train split "
             "(held-out diseases included, never generated images)",
             "top-1 headline = stages 2-3, healthy and ungraded faces; stage 0 is healthy-looking by construction"]
    if "kid_clip" in metrics:
        notes.append("FID/KID on the evaluator's CLIP image features (InceptionV3 weights cannot be downloaded here)")
    if unread:
        notes.append("not drawn or measured: panel diseases without real faces the evaluator learned ("
                     + ", ".join(out["samples"]["not_measured"]) + ")")
    extra = []
    # once per run (the instrument's section: the first generator's evaluation); profile.learned= can name the file
    if measure_real and evaluator.phenotypes and "real" in scored and cfg.get("learned_profiles", True):
        from .evaluation.learned_profiles import learn_and_write, val_rates_table

        learned_notes, extra = learn_and_write(evaluator, scored["real"].table, profiles, out_dir / "evaluation",
                                               str(manifest), val_rates_table(evaluator, manifest))
        notes += learned_notes
    write_report(out_dir / "evaluation", metrics, scored, evaluator, profiles, notes=notes,
                 title=f"kgface evaluation ({label})", extra_figures=extra)
    out.update(metrics)
    return out


def isolated_effects_check(cfg, evaluator, real_df, per_term: int = 12, faces: int = 40) -> dict:
    """data=phantom: each phenotype head against its phenotype drawn alone at full intensity on healthy test
    identities (`phenotype_auroc_isolated`); the test split's AUROC can be high for a head that reads the disease."""
    from .data.build import isolated_effect_images
    from .data.phantom.dataset import identity_number
    from .evaluation.inputs import HEALTHY
    from .evaluation.validity import auroc_summary, isolated_auroc

    test = real_df[(real_df["split"] == "test") & (real_df["disease"] == HEALTHY)]
    ids = [identity_number(x) for x in test["identity"]][:faces]
    if not ids:
        return {}
    images, labels = isolated_effect_images(cfg, evaluator.phenotypes, ids, per_term)
    auc = isolated_auroc(evaluator, images, labels)
    return {"phenotype_auroc_isolated": auc, "phenotype_auroc_isolated_summary": auroc_summary(auc)}


@torch.no_grad()
def conditioning_controls(cfg, gen, drawable, evaluator, heldout: set[str], mode: str,
                          seed_order: list[str] | None = None) -> dict:
    """Does the image follow the condition? Every sick profile at stage 3 with `samples.control_seeds` seeds, drawn
    again (a) with the next disease's tokens and (b) with the adapter at scale 0; the share of images whose measured
    disease changes (token conditionings only; with kg_text the swap changes the prompt too, and scale 0 takes away
    the KG tokens alone, leaving the prompt). `*_chance` is the share that would change if the two
    predictions were independent draws from their own label distributions: a control near it means the condition
    moves the image as much as a fresh face would, well below it means the image hardly depends on the condition.
    seed_order: as the grid's, each disease's noise fixed by its place there, so that a baselines run's conditionings
    draw one disease from the same noises even where one of them cannot draw some others (class tokens)."""
    if mode == "text":
        return {}
    import numpy as np

    from .diffusion.adapter import get_adapter_scale, set_adapter_scale
    from .diffusion.generator import Request

    sick = [p for p in drawable if not p.healthy]
    k = int(cfg.samples.get("control_seeds", 1))
    if len(sick) < 2 or k < 1:  # samples.control_seeds=0 leaves the controls out (preflight says so)
        return {}
    from .diffusion.samples import seed_order_of

    seed = int(cfg.seed) + 9000
    order = seed_order_of([p.disease_id for p in sick], seed_order)
    place = [order.index(p.disease_id) for p in sick]
    idx = [(i, j) for j in range(k) for i in range(len(sick))]
    reqs = [Request(sick[i], 3.0, seed + j * len(order) + place[i]) for i, j in idx]
    swapped = [Request(sick[(i + 1) % len(sick)], 3.0, seed + j * len(order) + place[i]) for i, j in idx]
    base = evaluator.score(gen.sample(reqs))["pred_disease"].to_numpy()
    swap = evaluator.score(gen.sample(swapped))["pred_disease"].to_numpy()
    before = get_adapter_scale(gen.backbone.unet)  # the generator's own (a reused one's need not be the config's)
    set_adapter_scale(gen.backbone.unet, 0.0)
    try:
        off = evaluator.score(gen.sample(reqs))["pred_disease"].to_numpy()
    finally:
        set_adapter_scale(gen.backbone.unet, before)
    target = np.array([r.profile.disease_id for r in reqs])
    return {"n": len(reqs), "seeds_per_disease": k,
            "token_swap_changed": float((swap != base).mean()), "token_swap_chance": chance_changed(base, swap),
            "token_swap_follows_tokens": float((swap == [r.profile.disease_id for r in swapped]).mean()),
            "scale0_changed": float((off != base).mean()), "scale0_chance": chance_changed(base, off),
            "top1": float((base == target).mean()), "scale0_top1": float((off == target).mean())}


def chance_changed(a, b) -> float:
    """1 - sum_k P_a(k) P_b(k): how often two independent draws from a's and b's label frequencies differ."""
    import pandas as pd

    la, lb = pd.Series(a).value_counts(normalize=True), pd.Series(b).value_counts(normalize=True)
    return float(1.0 - (la * lb.reindex(la.index, fill_value=0.0)).sum())


def validation_grids(cfg, gen, drawable, names, out_dir: Path):
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
