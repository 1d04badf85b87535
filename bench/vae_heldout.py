"""What the held-out diseases' VAE ceiling owes to the VAE having seen them: a run's VAE config trained on every
disease's train faces and on the generator's diseases alone (as kgface.train trains it since 2026-12-06), read by the
run's evaluator on the same real test faces (stages 2-3 and healthy, as `evaluator.vae_ceiling_top1`).

    python bench/vae_heldout.py RUN [--current-only]

RUN: a kgface.train output folder of a model=tiny run (config.yaml, data.json and evaluator/). Both VAEs come from
the cache when there, else train once and are cached under the keys kgface.train uses. --current-only reads the
VAE kgface.train uses now and skips the one that saw every disease (a benchmark VAE is ~25 min of training).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--current-only", action="store_true", help="skip the VAE trained on every disease")
    args = ap.parse_args(argv)

    from omegaconf import OmegaConf

    from kgface.config import container, heldout_diseases
    from kgface.data.manifest import read_manifest
    from kgface.diffusion.vae import cached_vae, roundtrip
    from kgface.evaluation import Evaluator
    from kgface.evaluation.inputs import load_images
    from kgface.runtime import make_cache

    cfg = OmegaConf.load(args.run / "config.yaml")
    manifest = Path(json.loads((args.run / "data.json").read_text())["manifest"])
    evaluator = Evaluator.load(args.run / "evaluator")
    df = read_manifest(manifest)[0]
    test = df[(df["split"] == "test") & ((df["disease"] == "healthy") | (df["stage"] >= 2))].reset_index(drop=True)
    images = load_images(list(test["abspath"]))
    held = heldout_diseases(cfg)
    mask = test["disease"].isin(held).to_numpy()
    cache = make_cache(cfg)
    variants = [("trained on every disease (before 2026-12-06)", frozenset()),
                ("trained on the generator's diseases (now)", held)]
    for name, leave_out in variants[1:] if args.current_only else variants:
        vae, info, entry = cached_vae(manifest, container(cfg.model.tiny), container(cfg.model.vae_train), cache,
                                      progress=False, heldout=leave_out)
        right = evaluator.score(roundtrip(vae, images))["pred_disease"].to_numpy() == test["disease"].to_numpy()
        print(f"VAE {name}: {info['train_images']} train faces, test PSNR {info['test_psnr_db']:.2f} dB; top-1 "
              f"after the round trip: all {right.mean():.3f} (n {len(right)}), held-out {right[mask].mean():.3f} "
              f"(n {int(mask.sum())}), seen {right[~mask].mean():.3f}  [{entry.name}]")


if __name__ == "__main__":
    main()
