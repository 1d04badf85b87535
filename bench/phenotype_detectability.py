"""Can a phenotype drawn alone on a healthy phantom face be read at all? Detectors trained for exactly that question.

    python bench/phenotype_detectability.py single HP:0000508,HP:0000664     # one binary CNN per phenotype
    python bench/phenotype_detectability.py atlas --faces 8000 --steps 4000  # one multi-label tower on an atlas

`single`: for each phenotype a small CNN (BatchNorm, full-resolution first layers, global max pooling) learns
"drawn alone vs nothing drawn" from 400 + 400 faces of train identities and is scored on 100 + 100 faces of test
identities (AUROC; `auc_same_ids` pairs each bare test face with the same identity showing the phenotype).
`atlas`: one tower, open_clip's ModifiedResNet as in `evaluator=tiny_clip` (`--arch rn16`, width 16) or the CNN above
(`--arch cnn`, width 32, or `cnnN`, width N), learns all the panel's phenotypes at once from atlas faces (`--per-face`
random phenotypes each, `kgface.data.phantom.dataset.build_atlas`) and is scored like `phenotype_auroc_isolated` (each
phenotype alone on 12 test identities against 40 bare ones). The evaluator's heads are read the same way by
`bench/evaluator_accuracy.py`; docs/evaluation.md ("Each phenotype alone") has the numbers. One thread
(torch.set_num_threads(1)).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def cnn(outputs: int, width: int = 24) -> nn.Module:
    # the tower of `evaluator.vision.tower=cnn`, here with its own outputs instead of CLIP features
    from kgface.evaluation.towers import FullResolutionCNN

    return FullResolutionCNN(outputs, width)


def tower(arch: str, outputs: int, image_size: int) -> nn.Module:
    if arch.startswith("cnn"):  # cnn: width 32; cnnN: width N
        return cnn(outputs, int(arch[3:] or 32))
    from open_clip.modified_resnet import ModifiedResNet

    width = int(arch[2:])  # rn16: the default evaluator's ModifiedResNet([1, 1, 1, 1], width 16)
    return nn.Sequential(ModifiedResNet([1, 1, 1, 1], 128, heads=max(1, width // 2), image_size=image_size,
                                        width=width), nn.Linear(128, outputs))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, loss_fn, flip: bool = False) -> nn.Module:
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        xb = x[idx]
        if flip:
            xb = torch.where((torch.rand(len(idx), generator=gen) < 0.5).view(-1, 1, 1, 1), xb.flip(-1), xb)
        loss = loss_fn(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["single", "atlas"])
    ap.add_argument("terms", nargs="?", default="", help="single: comma-separated HPO ids")
    ap.add_argument("--faces", type=int, default=8000, help="atlas faces")
    ap.add_argument("--per-face", default="4,8", help="atlas: phenotypes per face, min,max")
    ap.add_argument("--steps", type=int, default=None, help="training steps (single 800, atlas 4000)")
    ap.add_argument("--arch", default="rn16",
                    help="atlas: rn16 (open_clip ModifiedResNet, width 16) | cnn (width 32) | cnnN (width N)")
    ap.add_argument("--out", default=None, help="write the per-phenotype AUROCs here (JSON)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from sklearn.metrics import roc_auc_score

    from kgface.cache import write_text_atomic
    from kgface.config import compose
    from kgface.data.build import _data_dict, isolated_effect_images
    from kgface.data.manifest import read_manifest, write_manifest
    from kgface.data.phantom.dataset import PhantomConfig, build_atlas, identity_split, shown_identities
    from kgface.data.phantom.effects import load_phantom_effects
    from kgface.dataset import panel_profiles
    from kgface.evaluation import load_images
    from kgface.evaluation.inputs import drawn_phenotypes, presence_matrix
    from kgface.resources import kg_data_dir
    from kgface.runtime import make_cache

    cfg = compose("train", ["progress=false"])
    pcfg = PhantomConfig.from_dict(_data_dict(cfg))
    table = load_phantom_effects(kg_data_dir() / "phantom_effects.csv")
    split = identity_split(pcfg)
    train_ids = [i for i, s in sorted(split.items()) if s == "train"]
    test_ids = [i for i, s in sorted(split.items()) if s == "test"]

    def alone_and_bare(h, ids):
        """(faces showing h alone, the same identities bare), floats in [0, 1]: every identity of `ids` h can show
        on (a hair term skips bald heads), so both may hold fewer than len(ids)."""
        images, labels = isolated_effect_images(cfg, [h], ids, per_term=len(ids))
        x, shown = images.float() / 255, np.array([lab == h for lab in labels])
        on = set(shown_identities(pcfg, table, h, ids, len(ids)))
        return x[shown], x[~shown][[k for k, i in enumerate(ids) if i in on]]

    start, out = time.time(), {}
    if args.mode == "single":
        rng = np.random.default_rng(0)
        for h in [t for t in args.terms.split(",") if t]:
            ids = [int(i) for i in rng.choice(train_ids, size=800, replace=False)]
            pos, neg = alone_and_bare(h, ids[:400])[0], alone_and_bare(h, ids[400:])[1]
            x, y = torch.cat([pos, neg]), torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
            torch.manual_seed(0)
            model = fit(cnn(1), x, y, args.steps or 800,
                        lambda o, t: F.binary_cross_entropy_with_logits(o.squeeze(-1), t), flip=True)
            shown, _ = alone_and_bare(h, test_ids[:100])
            same, bare = alone_and_bare(h, test_ids[100:200])
            with torch.no_grad():
                s_shown, s_bare, s_same = (model(v).squeeze(-1).numpy() for v in (shown, bare, same))
            labels = np.r_[np.ones(len(s_shown)), np.zeros(len(s_bare))]
            out[h] = {"auc": round(float(roc_auc_score(labels, np.r_[s_shown, s_bare])), 3),
                      "auc_same_ids": round(float(roc_auc_score(np.r_[np.ones(len(s_same)), np.zeros(len(s_bare))],
                                                                np.r_[s_same, s_bare])), 3)}
            print(h, out[h], f"{time.time() - start:.0f} s", flush=True)
    else:
        profiles = panel_profiles(cfg, make_cache(cfg))
        lo, hi = (int(v) for v in args.per_face.split(","))
        with tempfile.TemporaryDirectory() as tmp:
            rows = build_atlas(profiles, pcfg, table, Path(tmp), args.faces, (lo, hi), progress=False)
            write_manifest(rows, Path(tmp) / "atlas.csv")
            df = read_manifest(Path(tmp) / "atlas.csv")[0]
            x = load_images(list(df["abspath"])).float() / 255
        vocab = drawn_phenotypes(df["phenotypes"])
        y = torch.from_numpy(presence_matrix(list(df["phenotypes"]), vocab))
        torch.manual_seed(0)
        model = fit(tower(args.arch, len(vocab), pcfg.size), x, y, args.steps or 4000,
                    F.binary_cross_entropy_with_logits)
        # the evaluator's isolated-effect faces: each phenotype alone on 12 test identities, 40 bare ones
        images, labels = isolated_effect_images(cfg, vocab, test_ids[:40], 12)
        with torch.no_grad():
            scores = model(images.float() / 255).numpy()
        bare = np.array([lab is None for lab in labels])
        for j, h in enumerate(vocab):
            shown = np.array([lab == h for lab in labels])
            out[h] = float(roc_auc_score(np.r_[np.ones(shown.sum()), np.zeros(bare.sum())],
                                         np.r_[scores[shown, j], scores[bare, j]]))
        a = np.array(list(out.values()))
        print(json.dumps({"arch": args.arch, "faces": args.faces, "per_face": [lo, hi], "steps": args.steps or 4000,
                          "phenotypes": len(a), "median": round(float(np.median(a)), 3),
                          "min": round(float(a.min()), 3), "share_ge_0.9": round(float((a >= 0.9).mean()), 3),
                          "seconds": round(time.time() - start)}))
    if args.out:
        write_text_atomic(args.out, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
