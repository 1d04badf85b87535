"""Where is the stage ranking lost? Reads stages the way `generation.stage_spearman` does, split by stage.

    python bench/stage_reading.py experiment=benchmark --runs /work/runs/bench_s51 [--vae]

For real diseased test faces (and, with --vae, the same faces after the config's VAE round trip) and for each run's
own samples (`RUN/samples/manifest.csv`, diseased requests, transformations left out), all read by the config's
evaluator (trained or loaded from the cache as `python -m kgface.train` does), prints:
- Spearman(stage, measured severity), and its ceiling for these stage counts: a continuous reading (no two faces
  tied) that orders the stages perfectly still separates faces the truth ties, so four equal stages cap it at
  sqrt(15/16) = 0.968;
- the mean per-disease Spearman (is the loss in one shared severity scale, or within diseases?) and the lowest;
- AUROC of severity between adjacent stages (0 vs 1, 1 vs 2, 2 vs 3) and the mean severity per stage;
- the share of stage-0 faces read as healthy (stage 0 is healthy-looking by construction) and as their disease, and
  the classes the others are read as.
Figures in docs/training.md ("Where the stage ranking is lost") came from this script.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def tied_ceiling(stages) -> float:
    """The largest Spearman a reading without ties can reach against these (tied) stages: that of a perfect order
    (a reading tied exactly as the stages are would reach 1, which a continuous severity never is)."""
    import numpy as np

    from kgface.evaluation.metrics import spearman

    s = np.sort(np.asarray(stages, float))
    return spearman(s, np.arange(len(s), dtype=float))


def stage_lines(name: str, stages, severity, diseases, predicted) -> list[str]:
    """The printed reading of one set: Spearman and its ceiling, adjacent-stage AUROCs and means, stage 0's reads."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from kgface.evaluation.metrics import spearman
    from kgface.prompts.wording import stage_of

    s, v, d, p = (np.asarray(a) for a in (stages, severity, diseases, predicted))
    # the Spearman over the requested severity itself (as generation.stage_spearman), the bins as stage_of cuts
    # them (2.5 is stage 3; numpy's rounding made it 2)
    raw = s.astype(float)
    s = np.array([stage_of(x) for x in raw], dtype=int)
    within = {k: spearman(raw[d == k], v[d == k]) for k in sorted(set(d))}
    worst = min((k for k in within if within[k] == within[k]), key=within.get, default=None)
    adjacent = []
    for a in range(3):
        m = (s == a) | (s == a + 1)
        ok = len(set(s[m])) == 2
        adjacent.append(f"{a}v{a + 1} {roc_auc_score(s[m] == a + 1, v[m]):.3f}" if ok else f"{a}v{a + 1} -")
    means = " / ".join(f"{v[s == a].mean():.2f}" if (s == a).any() else "-" for a in range(4))
    zero = s == 0
    others = Counter(q for q, k in zip(p[zero], d[zero]) if q not in ("healthy", k)).most_common(3)
    return [f"{name}: n {len(s)}, Spearman {spearman(raw, v):.3f} (ceiling for these stages {tied_ceiling(raw):.3f}; "
            f"mean within a disease {np.nanmean(list(within.values())):.3f}"
            + (f", lowest {worst} {within[worst]:.3f})" if worst else ")"),
            f"  adjacent-stage AUROC: {', '.join(adjacent)}; mean severity by stage 0-3: {means}",
            f"  stage 0 read as healthy {np.mean(p[zero] == 'healthy'):.2f}, as its disease "
            f"{np.mean(p[zero] == d[zero]):.2f} (n {int(zero.sum())}; else most often as "
            f"{', '.join(f'{q} {c}' for q, c in others) or 'nothing else'})"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*", help="kgface.train overrides selecting the data and the evaluator")
    ap.add_argument("--runs", nargs="*", default=[], help="train runs whose samples/manifest.csv to read")
    ap.add_argument("--vae", action="store_true", help="also read the real faces after the config's VAE")
    args = ap.parse_intermixed_args(argv)  # overrides may follow the options too (docs quote them so)

    from kgface.config import compose, heldout_diseases
    from kgface.data.build import phantom_dataset
    from kgface.data.manifest import read_manifest, stage_known
    from kgface.dataset import panel_profiles
    from kgface.evaluation import fit_evaluator
    from kgface.evaluation.inputs import HEALTHY, load_images
    from kgface.runtime import make_cache

    cfg = compose("train", ["progress=false", *args.overrides])
    if cfg.data.name != "phantom":  # the faces come from phantom_dataset: another data= was read as phantom keys
        raise SystemExit(f"data={cfg.data.name}: this script reads phantom data only (data=phantom, data.*)")
    from kgface.config import container
    from kgface.evaluation.clip_model import check_evaluator_keys

    check_evaluator_keys(container(cfg.evaluator))  # a typo'd key would refit a CLIP that reads the defaults
    if int(cfg.get("num_threads") or 0) > 0:  # as train.py: one thread per job when two share the cores
        import torch

        torch.set_num_threads(int(cfg.num_threads))
    if args.vae and cfg.model.get("vae_train") is None:
        raise SystemExit("--vae reads the tiny VAE the train job trains (model=tiny); this config has none")
    cache = make_cache(cfg)
    profiles = panel_profiles(cfg, cache)
    manifest = phantom_dataset(cfg, profiles, cache, progress=False) / "manifest.csv"
    ev = fit_evaluator(cfg.evaluator, manifest, profiles, cache, progress=True)
    df = read_manifest(manifest)[0]
    # evaluator.real_stage_spearman_disease's rows: graded diseased test faces (a photo's placeholder stage is none)
    test = df[(df["split"] == "test") & (df["disease"] != HEALTHY) & stage_known(df)].reset_index(drop=True)
    images = load_images(list(test["abspath"]))
    t = ev.score(images)
    lines = stage_lines("real diseased test faces", test["stage"], t["severity_pred"], test["disease"],
                        t["pred_disease"])
    if args.vae:  # the train job's VAE, cached under its key (as bench/vae_ceiling.py)
        from omegaconf import OmegaConf

        from kgface.diffusion.vae import cached_vae, roundtrip

        vae, _, _ = cached_vae(manifest, OmegaConf.to_container(cfg.model.tiny, resolve=True),
                               OmegaConf.to_container(cfg.model.vae_train, resolve=True), cache, progress=True,
                               heldout=heldout_diseases(cfg))
        r = ev.score(roundtrip(vae, images))
        lines += stage_lines("... after the VAE", test["stage"], r["severity_pred"], test["disease"],
                             r["pred_disease"])
    for run in args.runs:
        g = read_manifest(Path(run) / "samples" / "manifest.csv")[0]
        g = g[(g["mode"] == "sample") & (g["requested_disease"] != HEALTHY)].reset_index(drop=True)
        s = ev.score(load_images(list(g["abspath"]), size=images.shape[-2:]))
        lines += stage_lines(f"{run}: samples", g["requested_stage"], s["severity_pred"], g["requested_disease"],
                             s["pred_disease"])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
