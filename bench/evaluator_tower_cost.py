"""Cost of the evaluator's image towers: the tiny CLIP's training step and its image features, per tower.

    python bench/evaluator_tower_cost.py [--steps 20] [--rounds 3] [--threads 2] [--batch 64]
                                         [--towers open_clip:16 cnn:32 cnn:16]

Each variant is `conf/evaluator/tiny_clip.yaml` with `vision.tower` and `vision.width` set (`open_clip:16`:
open_clip's ModifiedResNet at width 16, the config's tower; `cnn:16` the full-resolution CNN of towers.py at the
same width; `cnn:32` the same, twice as wide, as the config's comment advises). Training:
`train_clip` itself (augmentation, contrastive loss, auxiliary heads, AdamW) for --steps steps on random 64-px faces
with labelled captions; features: `ImageEncoder` over 512 faces. The variants alternate
in every round so load from other processes hits all alike; the report gives each variant's median seconds per step
and per 1,000 faces, and its ratio to the first variant, measured in this run.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from kgface.evaluation.clip_model import ImageEncoder, build_clip, count_parameters, train_clip

CONFIG = Path(__file__).resolve().parents[1] / "conf/evaluator/tiny_clip.yaml"


def variant(base, spec: str):
    tower, width = spec.split(":")
    return OmegaConf.merge(base, {"vision": {"tower": tower, "width": int(width)}})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="training steps per round and variant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--faces", type=int, default=512, help="random faces to train on and to encode")
    ap.add_argument("--towers", nargs="+", default=["open_clip:16", "cnn:32", "cnn:16"],
                    help="TOWER:WIDTH; the first is the baseline of the ratios")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:  # a ratio of nothing: a ZeroDivisionError or an empty median
        ap.error("--steps, --rounds must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = OmegaConf.load(CONFIG)
    base.train.steps = args.steps
    base.train.batch_size = args.batch
    size = int(base.image_size)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.faces, 3, size, size), dtype=torch.uint8, generator=gen)
    diseases = [f"disease {k}" for k in range(13)]
    labels = [diseases[i % len(diseases)] for i in range(args.faces)]
    stages = np.array([i % 4 for i in range(args.faces)], dtype=np.float32)
    captions = [f"a face with {lab} at stage {int(s)}" for lab, s in zip(labels, stages)]
    presence = (np.random.default_rng(0).random((args.faces, 95)) < 0.2).astype(np.float32)

    train_s = {spec: [] for spec in args.towers}
    feat_s = {spec: [] for spec in args.towers}
    params = {}
    for r in range(args.rounds + 1):  # round 0 warms allocators and kernels, not counted
        # the order alternates between rounds, so no variant always runs first (or after the same one)
        for spec in (args.towers if r % 2 == 0 else args.towers[::-1]):
            cfg = variant(base, spec)
            model, tok, image_size = build_clip(cfg)
            params[spec] = count_parameters(model.visual)
            # the loop's own clock (train_clip starts it after tokenising and building the optimizer); in ms since
            # 2026-12-06: it was rounded to 0.1 s, too coarse for a ratio over 20 steps
            fit = train_clip(model, tok, images, captions, cfg, progress=False, labels=labels, presence=presence,
                             stages=stages)["seconds"]
            enc = ImageEncoder(model, image_size)
            t0 = time.perf_counter()
            enc(images)
            feats = time.perf_counter() - t0
            if r:
                train_s[spec].append(fit / args.steps)
                feat_s[spec].append(feats / args.faces * 1000)

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; batch {args.batch}, {args.steps} steps x {args.rounds} rounds; medians")
    first = args.towers[0]
    t_base, f_base = statistics.median(train_s[first]), statistics.median(feat_s[first])
    print(f"{'tower:width':<14}{'image params':>14}{'s/step':>9}{'ratio':>8}{'s/1k faces':>12}{'ratio':>8}")
    for spec in args.towers:
        t, f = statistics.median(train_s[spec]), statistics.median(feat_s[spec])
        print(f"{spec:<14}{params[spec]:>14,}{t:>9.3f}{t / t_base:>7.2f}x{f:>12.2f}{f / f_base:>7.2f}x")


if __name__ == "__main__":
    main()
