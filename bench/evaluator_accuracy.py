"""How well does an evaluator config read real phantoms? Trains one (or loads it from the cache) and prints its numbers.

    python bench/evaluator_accuracy.py                                  # the default evaluator on the default panel
    python bench/evaluator_accuracy.py evaluator.train.steps=1200 'evaluator.vision.layers=4'   # a variant
    python bench/evaluator_accuracy.py --perturbation                   # + the learned-profile perturbation check
    python bench/evaluator_accuracy.py experiment=benchmark --footprints fp.png  # + the heads failing alone, by size
    python bench/evaluator_accuracy.py experiment=benchmark --feature-probe 100  # + do the CLIP's features carry them?
    python bench/evaluator_accuracy.py experiment=benchmark evaluator.vision.tower=cnn \
        --generated RUN/samples/manifest.csv     # + a run's generated faces read by this instrument instead of its own
    python bench/evaluator_accuracy.py experiment=benchmark --vae       # + the VAE ceiling keys (the config's VAE)

Any `python -m kgface.train` override selects the data and the evaluator (data.per_class=..., evaluator.*=...). Prints
the instrument's keys of metrics.json (top-1 on stages 2-3 + healthy, per stage, stage MAE, per-phenotype AUROC,
identity AUROC, the oracle ceiling, each head against its phenotype drawn alone on healthy test faces) and, with
--perturbation, whether profiles learned from a panel rendered with flipped frequencies follow the rendered truth
(MAE vs perturbed < MAE vs KG) or echo the KG; with --footprints, how many pixels each phenotype drawn alone changes
beside its head's drawn-alone AUROC (a scatter plot, and the heads below 0.9 by name); with --feature-probe N, whether
a probe fitted on each phenotype drawn alone on N train identities reads it on N test identities where the head
does not (from the CLIP's image features, and from raw pixels for the failing heads); with --generated MANIFEST, a
generated set (a train run's samples/manifest.csv: samples and transformations) read by this instrument, to set beside
the numbers the run's own evaluator gave the same faces; with --vae, the train job's VAE-ceiling keys (the config's
VAE, trained once and cached as `python -m kgface.train` does: top-1, seen / held-out rows, stage Spearman and the
phenotype heads after the round trip). Figures in docs/evaluation.md came from this script.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*", help="kgface.train overrides (data.*, evaluator.*)")
    ap.add_argument("--perturbation", action="store_true")
    ap.add_argument("--per-class", type=int, default=40, help="individuals per disease in the perturbed panel")
    ap.add_argument("--footprints", metavar="PNG", help="plot each head's drawn-alone AUROC against its footprint")
    ap.add_argument("--feature-probe", type=int, metavar="N", help="probe each phenotype drawn alone on N identities")
    ap.add_argument("--generated", type=Path, metavar="MANIFEST", help="also read this generated set's faces")
    ap.add_argument("--vae", action="store_true", help="also read the real test faces after the config's VAE")
    args = ap.parse_intermixed_args(argv)  # overrides may follow the options too (docs quote them so)

    from kgface.config import compose, heldout_diseases
    from kgface.data.build import phantom_dataset
    from kgface.data.manifest import read_manifest, write_manifest
    from kgface.dataset import panel_profiles
    from kgface.evaluation import evaluate_sets, fit_evaluator
    from kgface.runtime import make_cache

    cfg = compose("train", ["progress=false", *args.overrides])
    if cfg.data.name != "phantom":  # the faces come from phantom_dataset: another data= was read as phantom keys
        raise SystemExit(f"data={cfg.data.name}: this script reads phantom data only (data=phantom, data.*)")
    from kgface.config import container
    from kgface.evaluation.clip_model import check_evaluator_keys

    check_evaluator_keys(container(cfg.evaluator))  # a typo'd key would refit a CLIP that reads the defaults
    if int(cfg.get("num_threads") or 0) > 0:  # num_threads=1: the one-thread timings docs/evaluation.md quotes
        import torch

        torch.set_num_threads(int(cfg.num_threads))
    cache = make_cache(cfg)
    profiles = panel_profiles(cfg, cache)
    manifest = phantom_dataset(cfg, profiles, cache, progress=False) / "manifest.csv"
    t = time.time()
    ev = fit_evaluator(cfg.evaluator, manifest, profiles, cache, progress=True)
    print(f"evaluator ready in {time.time() - t:.0f} s (training log: {ev.info.get('clip')})")
    df = read_manifest(manifest)[0]
    roundtrip, vae_keys = None, []
    if args.vae:  # the train job's VAE (cached under its key), as in bench/vae_ceiling.py
        from omegaconf import OmegaConf

        from kgface.diffusion.vae import cached_vae
        from kgface.diffusion.vae import roundtrip as vae_roundtrip

        vae_train = OmegaConf.to_container(cfg.model.vae_train, resolve=True)
        vae, _, _ = cached_vae(manifest, OmegaConf.to_container(cfg.model.tiny, resolve=True), vae_train, cache,
                               progress=True, heldout=heldout_diseases(cfg))
        roundtrip = lambda x: vae_roundtrip(vae, x)  # noqa: E731
        vae_keys = ["vae_ceiling_top1", "vae_ceiling_top1_seen_disease", "vae_ceiling_top1_heldout",
                "vae_ceiling_stage_spearman", "vae_ceiling_phenotype_auroc_summary"]
    # held-out diseases: the phantom manifest's own `heldout` column, as evaluate_sets reads it
    e = evaluate_sets(ev, df, None, profiles, roundtrip=roundtrip)["evaluator"]
    keys = ["real_top1", "real_top1_all", "per_stage_top1", "real_stage_mae", "real_stage_spearman", "oracle_top1",
            "identity_auroc", "zero_shot_top1", "phenotype_auroc_summary", "real_frequency_mae", "real_top1_blurred",
            "real_ece", *vae_keys]
    from kgface.run_measure import isolated_effects_check
    e.update(isolated_effects_check(cfg, ev, df))
    keys.append("phenotype_auroc_isolated_summary")
    print(json.dumps({k: e.get(k) for k in keys}, indent=1))
    if args.generated:  # judged against the requests, held-out rows from the manifest's own column
        g = evaluate_sets(ev, generated_df=args.generated, profiles=profiles)
        print("generated set", args.generated, json.dumps(
            {"generation": {k: g.get("generation", {}).get(k) for k in
                            ("seen_disease_top1", "seen_disease_n", "seen_top1", "healthy_top1",
                             "heldout_top1", "heldout_n", "per_stage_top1", "stage_spearman")},
             "transform": {k: g.get("transform", {}).get(k) for k in ("n", "target_top1", "identity_similarity")}},
            indent=1))
    names = {q.hpo_id: q.name for p in profiles for q in p.phenotypes}
    if args.footprints:
        footprint_report(cfg, e["phenotype_auroc_isolated"], names, Path(args.footprints))
    if args.feature_probe:
        feature_probe_report(cfg, ev, df, names, args.feature_probe)
    if not args.perturbation:
        return
    from kgface.data.phantom.dataset import PhantomConfig, build_phantom
    from kgface.data.phantom.effects import load_phantom_effects
    from kgface.evaluation.learned_profiles import detector_rates, perturb_profiles, perturbation_check
    from kgface.resources import kg_data_dir

    rates = detector_rates(ev, ev.score(df[df["split"] == "test"]))  # measured on the original panel
    sick = [p for p in profiles if not p.healthy]
    perturbed = perturb_profiles(sick, seed=1, low=0.0, high=1.0)
    pc = PhantomConfig(size=int(cfg.data.size), supersample=int(cfg.data.supersample), per_class=args.per_class,
                       healthy_per_class=args.per_class, identities=20 * args.per_class, stages=(3,),
                       split_fractions=(0.0, 0.0, 1.0), seed=5)
    with tempfile.TemporaryDirectory() as tmp:
        rows, _ = build_phantom(perturbed + [p for p in profiles if p.healthy], pc,
                                load_phantom_effects(kg_data_dir() / "phantom_effects.csv"), Path(tmp), heldout=[],
                                progress=False)
        write_manifest(rows, Path(tmp) / "manifest.csv")
        table = ev.score(read_manifest(Path(tmp) / "manifest.csv")[0])
    check = perturbation_check(ev, table, perturbed, sick, rates)
    print("perturbation check:", json.dumps({k: check[k] for k in ("vs_perturbed", "vs_kg", "detection")}))
    ok = check["vs_perturbed"].get("mae", 1) < check["vs_kg"].get("mae", 0)
    print("learned profiles follow the rendered frequencies" if ok else
          "learned profiles do NOT follow the rendered frequencies (they echo the KG)")
    # MAE favours any estimate shrunk towards the middle (the perturbed truth is 0/1, the KG mostly in between), so
    # the ordering by correlation is printed too: the direction is recovered when it is the perturbed truth's
    r_p, r_kg = check["vs_perturbed"].get("pearson"), check["vs_kg"].get("pearson")
    if r_p is not None and r_kg is not None:
        print(f"by correlation: learned vs rendered r = {r_p:.2f}, vs KG r = {r_kg:.2f} ("
              + ("follows the rendered frequencies" if r_p > max(r_kg, 0.0) else "does not follow them") + ")")


def footprint_report(cfg, iso: dict[str, float], names: dict[str, str], png: Path, at: float = 0.9) -> None:
    """Pixels each phenotype changes drawn alone (kgface.data.build.effect_footprints) against its head's AUROC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from kgface.data.build import effect_footprints

    fp = effect_footprints(cfg, sorted(iso))
    heads = sorted(iso, key=lambda h: fp[h]["pixels"])
    px = np.array([fp[h]["pixels"] for h in heads])
    auc = np.array([iso[h] for h in heads])
    low = auc < at
    print(f"{low.sum()} of {len(heads)} heads read their phenotype alone below {at}; pixels changed by >= 16 levels "
          f"(of {int(cfg.data.size) ** 2}): those heads median "
          f"{np.median(px[low]) if low.any() else float('nan'):.0f}, "
          f"max {px[low].max() if low.any() else float('nan'):.0f}; the others median {np.median(px[~low]):.0f}")
    for t in (10, 20, 40, 80):
        print(f"  heads changing < {t} px: {(px < t).sum()}, of them below {at}: {(low & (px < t)).sum()};"
              f" >= {t} px: {(px >= t).sum()}, below {at}: {(low & (px >= t)).sum()}")
    for h in [h for h in heads if iso[h] < at]:
        print(f"  {h} {names.get(h, '')[:36]:36s} {fp[h]['pixels']:6.1f} px  mean |diff| {fp[h]['mean_abs']:.3f}"
              f"  AUROC {iso[h]:.2f}")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.scatter(px[~low] + 0.5, auc[~low], s=14, c="tab:blue", label=f"AUROC >= {at}")
    ax.scatter(px[low] + 0.5, auc[low], s=14, c="tab:red", label=f"AUROC < {at}")
    ax.axhline(at, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel(f"pixels the phenotype changes by >= 16 levels, drawn alone (+0.5; of {int(cfg.data.size) ** 2})")
    ax.set_ylabel("its head's AUROC, drawn alone")
    ax.set_title(f"{len(heads)} phenotype heads: what a {int(cfg.data.size)}-px face shows of each")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.stem + ".tmp" + png.suffix)
    fig.savefig(tmp, format=png.suffix[1:] or "png")  # the name's format (no suffix: png), not the temp name's
    plt.close(fig)
    tmp.replace(png)
    print(f"wrote {png}")


def feature_probe_report(cfg, ev, df, names: dict[str, str], n: int, at: float = 0.9) -> None:
    """Is a head that misses its phenotype drawn alone limited by its training faces or by the CLIP's features? Per
    phenotype, a logistic regression fitted on the phenotype drawn alone vs the bare faces of n healthy train
    identities, read on n healthy test identities beside the head itself; for the failing heads also one on raw
    pixels (a linear reference: the faces differ in geometry, so a mark does not sit on the same pixels)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from kgface.data.build import isolated_effect_images
    from kgface.data.phantom.dataset import identity_number
    from kgface.evaluation import metrics as M
    from kgface.evaluation.inputs import HEALTHY
    from kgface.evaluation.validity import isolated_auroc

    sets = {}
    for split in ("train", "test"):
        rows = df[(df["split"] == split) & (df["disease"] == HEALTHY)]
        ids = list(dict.fromkeys(identity_number(x) for x in rows["identity"]))[:n]
        images, labels = isolated_effect_images(cfg, ev.phenotypes, ids, per_term=len(ids))
        lab = np.array(["" if x is None else x for x in labels])
        sets[split] = {"clip": ev.features(images), "pixels": images.float().flatten(1).numpy() / 255.0, "lab": lab}
        if split == "test":
            head = isolated_auroc(ev, images, labels, features=sets[split]["clip"])

    def probe(h: str, kind: str, scale: bool) -> float:
        xs = {}
        for split, d in sets.items():
            x, pos, bare = d[kind], d["lab"] == h, d["lab"] == ""
            xs[split] = (np.r_[x[pos], x[bare]], np.r_[np.ones(pos.sum()), np.zeros(bare.sum())])
        (xtr, ytr), (xte, yte) = xs["train"], xs["test"]
        if scale:
            sc = StandardScaler().fit(xtr)
            xtr, xte = sc.transform(xtr), sc.transform(xte)
        clf = LogisticRegression(C=1.0, max_iter=2000 if scale else 300).fit(xtr, ytr)
        return M.auroc(yte.astype(int), clf.decision_function(xte))

    feat = {h: probe(h, "clip", True) for h in ev.phenotypes}
    fail = sorted((h for h in ev.phenotypes if head.get(h, 1.0) < at), key=lambda h: head[h])
    pix = {h: probe(h, "pixels", False) for h in fail}
    print(f"feature probe ({n} train / {n} test identities): {sum(v >= at for v in feat.values())} of {len(feat)} "
          f">= {at} (median {np.median(list(feat.values())):.3f}); heads below {at}: {len(fail)}, of them the probe "
          f"on CLIP features reaches {at}: {sum(feat[h] >= at for h in fail)}, on raw pixels: "
          f"{sum(pix[h] >= at for h in fail)}")
    for h in fail:
        print(f"  {h} {names.get(h, '')[:36]:36s} head {head[h]:.3f}  CLIP-feature probe {feat[h]:.3f}"
              f"  pixel probe {pix[h]:.3f}")


if __name__ == "__main__":
    main()
