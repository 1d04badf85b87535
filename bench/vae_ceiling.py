"""The VAE ceiling of a tiny-VAE config: how much disease signal survives encode -> decode, read by the evaluator.

    python bench/vae_ceiling.py                                     # the default VAE (trained once, cached)
    python bench/vae_ceiling.py model.tiny.latent_channels=8        # a variant (trained once, cached like the default)
    python bench/vae_ceiling.py 'model.tiny.vae_block_out_channels=[32,64,128]' model.tiny.norm_num_groups=32
    python bench/vae_ceiling.py --every 800 model.vae_train.steps=2400   # the curve of a longer VAE while it trains
    python bench/vae_ceiling.py --every 2000 num_threads=1 model.tiny.latent_channels=8   # two such runs side by side

The VAE is cached under the key the train job uses, so `python -m kgface.train` with the same overrides finds it (with
--every too: the readings leave the weights as they are; a VAE already cached gives its final reading alone).

Round-trips the real test images of stages 2-3 + healthy through the VAE and prints PSNR and the default evaluator's
top-1 on the originals and on the round trips. The second number is what survives of real faces; a generator that
draws more typical faces than real ones can read above it (docs/training.md), one that copies real faces cannot. Any `python -m kgface.train` override applies (model.tiny.*, model.vae_train.*, data.*, evaluator.*).
"""
from __future__ import annotations

import argparse
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--every", type=int, default=0,
                    help="print PSNR and ceiling every N steps while the VAE trains (then cached as usual)")
    args = ap.parse_intermixed_args(argv)  # overrides may follow the options too (docs quote them so)

    import pandas as pd
    from omegaconf import OmegaConf

    from kgface.config import compose, heldout_diseases
    from kgface.data.build import phantom_dataset
    from kgface.data.manifest import read_manifest
    from kgface.dataset import panel_profiles
    from kgface.diffusion.vae import cached_vae, psnr, roundtrip
    from kgface.evaluation import fit_evaluator
    from kgface.evaluation.inputs import blur_images, load_images
    from kgface.evaluation.metrics import accuracy
    from kgface.evaluation.validity import BLUR_CHECK_SIGMA
    from kgface.runtime import make_cache

    cfg = compose("train", ["progress=false", *args.overrides])
    if cfg.data.name != "phantom":  # the faces come from phantom_dataset: another data= was read as phantom keys
        raise SystemExit(f"data={cfg.data.name}: this script reads phantom data only (data=phantom, data.*)")
    from kgface.config import container
    from kgface.evaluation.clip_model import check_evaluator_keys

    check_evaluator_keys(container(cfg.evaluator))  # a typo'd key would refit a CLIP that reads the defaults
    if int(cfg.get("num_threads") or 0) > 0:   # as train.py: one thread per job when two share the cores
        import torch

        torch.set_num_threads(int(cfg.num_threads))
    cache = make_cache(cfg)
    vae_train = OmegaConf.to_container(cfg.model.vae_train, resolve=True) if cfg.model.vae_train is not None else None
    profiles = panel_profiles(cfg, cache)
    manifest = phantom_dataset(cfg, profiles, cache, progress=False) / "manifest.csv"
    ev = fit_evaluator(cfg.evaluator, manifest, profiles, cache, progress=True)
    df = read_manifest(manifest)[0]
    test = df[(df["split"] == "test") & ((df["stage"] >= 2) | (df["disease"] == "healthy"))].reset_index(drop=True)
    images = load_images(list(test["abspath"]))
    before = ev.score(images)["pred_disease"]
    real = accuracy(test["disease"], before)
    soft = accuracy(test["disease"], ev.score(blur_images(images, BLUR_CHECK_SIGMA))["pred_disease"])
    print(f"evaluator top-1 on the test faces blurred by {BLUR_CHECK_SIGMA} px: {soft:.3f} (sharp: {real:.3f})")
    t = time.time()

    def report(step, vae):
        rt = roundtrip(vae, images)
        top1 = accuracy(test["disease"], ev.score(rt)["pred_disease"])
        print(f"step {step} ({time.time() - t:.0f} s)  n {len(test)}  PSNR {psnr(rt, images):.2f} dB  "
              f"evaluator top-1: real {real:.3f}, after the VAE {top1:.3f}", flush=True)

    vae, info, _ = cached_vae(manifest, OmegaConf.to_container(cfg.model.tiny, resolve=True), vae_train, cache,
                              progress=not args.every, every=args.every, on_checkpoint=report if args.every else None,
                              heldout=heldout_diseases(cfg))
    print(f"VAE ready in {time.time() - t:.0f} s ({info})")
    rt = roundtrip(vae, images)
    after = ev.score(rt)["pred_disease"]
    ceiling = accuracy(test["disease"], after)
    print(f"n {len(test)}  PSNR {psnr(rt, images):.2f} dB  evaluator top-1: real {real:.3f}, after the VAE {ceiling:.3f}")
    held = test["heldout"].astype(str).str.lower().eq("true").to_numpy() if "heldout" in test else None
    if held is not None and held.any():  # the rows of generation.seen_top1 / heldout_top1 / seen_disease_top1
        sick = (test["disease"] != "healthy").to_numpy()
        for name, rows in (("seen", ~held), ("held-out", held), ("seen diseases (no healthy)", ~held & sick)):
            print(f"  {name}: n {int(rows.sum())}  real {accuracy(test['disease'][rows], before[rows]):.3f}, "
                  f"after the VAE {accuracy(test['disease'][rows], after[rows]):.3f}")
    truth = test["disease"].to_numpy()
    per = pd.DataFrame({"disease": truth, "real": truth == before.to_numpy(),
                        "after": truth == after.to_numpy()}).groupby("disease").mean()
    print("per disease (real -> after the VAE):",
          ", ".join(f"{d} {r.real:.2f}->{r.after:.2f}" for d, r in per.sort_values("after").iterrows()))
    # what a round trip turns each class into: the misreads a generator inherits from its VAE
    wrong = after.to_numpy() != truth
    for disease in per.sort_values("after").index:
        read = pd.Series(after.to_numpy()[wrong & (truth == disease)]).value_counts()
        if len(read):
            print(f"  {disease} after the VAE read as: " + ", ".join(f"{k} {v}" for k, v in read.head(3).items()))


if __name__ == "__main__":
    main()
