"""Does a trained generator draw the phenotypes it is asked for? Per phenotype, on random phenotype sets.

    python bench/phenotype_rendering.py RUN [RUN ...] [--evaluator EVAL_DIR] [-n 480] [--out DIR] [--paired HP:...]

A held-out disease can only be composed if the generator draws each requested phenotype, whatever company it comes
in. This asks each run for N faces of the phenotype atlas (phenotype_atlas.csv beside the run's manifest: train
identities with 4-8 random phenotypes, no disease; a run trained with `trainer.atlas_share > 0` has seen exactly
these sets, so for it this is the best case), each request an atlas face's set at its severity, and scores three
image sets with the evaluator's phenotype heads: the real atlas faces, the same faces after the run's VAE round
trip (what any generator on this VAE could reach), and the generated ones. Per phenotype head with >= 10 faces
showing it: AUROC of the head's score for "requested / shown" vs not. Printed: medians and shares >= 0.9 over all
heads and over the heads that read the VAE's faces at >= 0.8 (the fair comparison for a generator), those of
them that are the held-out diseases' phenotypes, and the worst-drawn of them. --out writes phenotype_rendering.json and a strip per
run (rows: real, VAE round trip, generated; same sets; named by the run's folder, numbered where two share a
name). The evaluator: EVAL_DIR, else the first run's own. Also
printed: Spearman of each head's generated and VAE AUROC with its phenotype's pixel footprint (mean |difference| of
the phenotype drawn alone at full intensity on 12 identities against the bare faces): is what the generator draws
simply what covers the most pixels? --paired HPO...: for each phenotype, the first 40 atlas sets that hold it are
drawn with and without it (same seeds): its head's mean score both ways and how often "with" scores higher.
Figures in docs/training.md came from this script (two threads, ~2 min a run for N = 480).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def aurocs(want: list[set], table, heads: list[str], min_pos: int = 10) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    out = {}
    for h in heads:
        y = np.array([h in w for w in want])
        if min_pos <= y.sum() <= len(y) - min_pos:
            out[h] = float(roc_auc_score(y, table[f"ph_{h}"]))
    return out


def summary(per: dict[str, dict[str, float]], heads: list[str]) -> dict:
    import numpy as np

    if not heads:
        return {"heads": 0}
    out = {"heads": len(heads)}
    for k in ("real", "vae", "generated"):
        vals = np.array([per[h][k] for h in heads])
        out[k] = {"median": round(float(np.median(vals)), 3), "share_ge_0.9": round(float((vals >= 0.9).mean()), 3)}
    return out


def footprints(cfg, heads: list[str]) -> dict[str, float]:
    """Mean |pixel difference| (0-255) of each phenotype drawn alone at full intensity against the bare face."""
    from kgface.data.build import effect_footprints

    return {h: v["mean_abs"] for h, v in effect_footprints(cfg, heads).items()}


def paired(gen, evaluator, rows, atlas_profiles, hpo: str, n: int = 40) -> dict:
    """Atlas sets holding `hpo`, drawn with and without it from the same seeds: the head's score both ways."""
    import dataclasses

    from kgface.diffusion.generator import Request

    idx = [i for i, p in enumerate(atlas_profiles) if hpo in {q.hpo_id for q in p.phenotypes}][:n]
    without = [dataclasses.replace(atlas_profiles[i], phenotypes=[q for q in atlas_profiles[i].phenotypes
                                                                  if q.hpo_id != hpo]) for i in idx]
    score = {}
    for name, profs in (("with", [atlas_profiles[i] for i in idx]), ("without", without)):
        reqs = [Request(p, float(rows[i]["severity"]), 500 + k) for k, (i, p) in enumerate(zip(idx, profs))]
        score[name] = evaluator.score(gen.sample(reqs, batch_size=48))[f"ph_{hpo}"].to_numpy()
    return {"n": len(idx), "with": float(score["with"].mean()), "without": float(score["without"].mean()),
            "with_higher": int((score["with"] > score["without"]).sum())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--evaluator", default=None, help="an evaluator folder or a run holding one (default: the first run's)")
    ap.add_argument("-n", type=int, default=480, help="atlas faces drawn (seeded)")
    ap.add_argument("--out", default=None, help="folder for phenotype_rendering.json and the strips")
    ap.add_argument("--paired", nargs="*", default=[], help="HPO ids for the with/without check")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import torchvision

    from kgface.cache import atomic_path, write_text_atomic
    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import heldout_of, load_run
    from kgface.data.manifest import ATLAS_FILE
    from kgface.diffusion.training_data import atlas_training_rows
    from kgface.run_files import run_data
    from kgface.evaluation import load_evaluator
    from kgface.evaluation.inputs import load_images

    torch.set_num_threads(2)
    evaluator = load_evaluator(args.evaluator or args.runs[0])
    results = {}
    runs = [Path(r) for r in args.runs]
    names = [r.name for r in runs]  # the strips' file names: two runs both called `run` would share one
    labels = names if len(set(names)) == len(names) else [f"{k}_{n}" for k, n in enumerate(names)]
    for run, label in zip(runs, labels):
        backbone, cond, profiles, cfg = load_run(run)
        data = run_data(run)  # a baselines generator folder (OUT/kg) reads its parent's
        if not data:
            raise SystemExit(f"{run}: no data.json here or in its parent; pass a kgface.train run folder")
        manifest = Path(data["manifest"])
        if not (manifest.parent / ATLAS_FILE).is_file():
            raise SystemExit(f"{run}: its data has no phenotype atlas ({manifest.parent / ATLAS_FILE}); this script "
                             "draws the atlas's phenotype sets: use a run with data.atlas.faces > 0 "
                             "(e.g. experiment=benchmark)")
        rows, atlas_profiles = atlas_training_rows(manifest, profiles, cfg.data)
        pick = np.random.default_rng(0).choice(len(rows), min(args.n, len(rows)), replace=False)
        want = [{p.hpo_id for p in atlas_profiles[i].phenotypes} for i in pick]
        sample = cfg.model.get("sample", {})
        gen = Generator(backbone, cond, guidance=float(sample.get("guidance", 3.0)), steps=int(sample.get("steps", 20)),
                        eta=float(sample.get("eta", 0.0)))  # the run's sampler
        real = load_images([str(manifest.parent / rows[i]["path"]) for i in pick])
        vae = torch.cat([gen.decode(gen.encode(real[i:i + 64])) for i in range(0, len(real), 64)])
        reqs = [Request(atlas_profiles[i], float(rows[i]["severity"]), 30000 + k) for k, i in enumerate(pick)]
        fake = gen.sample(reqs, batch_size=48)  # same seeds for every run: the same noise
        scored = {k: evaluator.score(x) for k, x in (("real", real), ("vae", vae), ("generated", fake))}
        by_set = {k: aurocs(want, t, evaluator.phenotypes) for k, t in scored.items()}
        per = {h: {k: by_set[k][h] for k in by_set} for h in by_set["real"]}
        held = {p.hpo_id for pr in profiles if pr.disease_id in heldout_of(run) for p in pr.phenotypes}
        fair = [h for h in per if per[h]["vae"] >= 0.8]
        term_names = {p.hpo_id: p.name for pr in profiles for p in pr.phenotypes}
        res = {"conditioning": cond.mode, "n": len(pick), "all": summary(per, list(per)),
               "vae_read_ge_0.8": summary(per, fair), "heldout_phenotypes": summary(per, [h for h in fair if h in held]),
               "per_phenotype": per}
        results[str(run)] = res
        print(f"\n== {run} ({cond.mode}; {len(pick)} atlas sets)")
        for key in ("all", "vae_read_ge_0.8", "heldout_phenotypes"):
            s = res[key]
            cells = "  ".join(f"{k} {s[k]['median']:.2f} ({100 * s[k]['share_ge_0.9']:.0f}% >= 0.9)"
                              for k in ("real", "vae", "generated") if k in s)
            print(f"{key:20s} heads {s['heads']:3d}  {cells}")
        from scipy.stats import spearmanr

        fp = footprints(cfg, list(per))
        res["footprint_spearman"] = {k: round(float(spearmanr([per[h][k] for h in per], [fp[h] for h in per])[0]), 3)
                                     for k in ("vae", "generated")}
        print(f"Spearman with the pixel footprint: VAE {res['footprint_spearman']['vae']:.2f}, "
              f"generated {res['footprint_spearman']['generated']:.2f}")
        print("worst drawn (of the heads the VAE lets through):")
        for h in sorted(fair, key=lambda h: per[h]["generated"])[:8]:
            print(f"  {h} {term_names.get(h, '')[:34]:34s} real {per[h]['real']:.2f}  vae {per[h]['vae']:.2f}  "
                  f"generated {per[h]['generated']:.2f}")
        for hpo in args.paired:
            res.setdefault("paired", {})[hpo] = r = paired(gen, evaluator, rows, atlas_profiles, hpo)
            print(f"paired {hpo} {term_names.get(hpo, '')[:30]}: head {r['with']:.2f} with, "
                  f"{r['without']:.2f} without; "
                  f"with higher in {r['with_higher']} of {r['n']}")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            strip = torch.cat([real[:12], vae[:12], fake[:12]]).float() / 255
            res["strip"] = f"phenotype_rendering_{label}.png"
            with atomic_path(out / res["strip"]) as tmp:
                torchvision.utils.save_image(strip, tmp, format="png", nrow=12, padding=1)
    if args.out:
        write_text_atomic(Path(args.out, "phenotype_rendering.json"), json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
