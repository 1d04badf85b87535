"""How far the held-out target could go: the limits that are not the generator, for each disease a run held out.

    python bench/heldout_ceiling.py RUN [--evaluator EVAL_DIR]

Prints, for the real test faces of stages 2-3 (the target's rows):
- the oracle probe (trained on the renderer's true phenotype vectors of every disease's training faces, as
  `evaluator.oracle_top1`) on the held-out diseases' faces, with all their phenotypes and with only those some
  training face of a seen disease shows (what a generator that learned only from seen diseases could draw);
- the evaluator's top-1 per disease on the faces untouched and after the run's VAE round trip (the VAE ceiling of
  each disease), and what the held-out ones are read as.
RUN: a kgface.train output folder (its data.json names the manifest and the held-out diseases). Uses one thread.
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--evaluator", default=None, help="an evaluator folder (default: RUN/evaluator)")
    args = ap.parse_args(argv)

    import torch
    from diffusers import AutoencoderKL

    from kgface.data.manifest import read_manifest
    from kgface.diffusion.vae import roundtrip
    from kgface.evaluation import load_evaluator
    from kgface.evaluation.inputs import HEALTHY, load_images, min_stage_of
    from kgface.evaluation.validity import oracle_top1
    from kgface.run_files import run_data

    torch.set_num_threads(1)
    run = Path(args.run)
    data = run_data(run)  # a baselines generator folder (OUT/kg) reads its parent's
    if not data:
        raise SystemExit(f"{run}: no data.json here or in its parent; pass a kgface.train run folder")
    heldout = list(data["heldout"])
    df = read_manifest(data["manifest"])[0]
    train, test = df[df["split"] == "train"], df[df["split"] == "test"]
    shown = {h for ph in train[~train["disease"].isin(heldout)]["phenotypes"] for h, v in ph.items() if v > 0}
    held = test[test["disease"].isin(heldout)].copy()
    unseen = sorted({h for ph in held["phenotypes"] for h, v in ph.items() if v > 0 and h not in shown})
    evaluator = load_evaluator(args.evaluator or run)  # the run's evaluator/, or a baselines run's ../evaluator
    # as evaluator.oracle_top1: it learns from the stages the evaluator's probe learns from (probe.min_stage)
    low = min_stage_of(evaluator.cfg.get("probe"))
    print(f"held-out {heldout}; phenotypes of their faces no seen training face shows: {unseen}")
    print("oracle top-1, held-out test faces (stages 2-3), all phenotypes: "
          f"{oracle_top1(train, held, min_stage=low):.3f}")
    held["phenotypes"] = [{h: v for h, v in ph.items() if h in shown} for ph in held["phenotypes"]]
    print(f"... only the phenotypes seen faces show: {oracle_top1(train, held, min_stage=low):.3f}")

    if not (run / "model" / "vae").is_dir():  # an sd15/sdxl run keeps no VAE of its own
        raise SystemExit(f"{run}: no model/vae (a model=tiny run's); the per-disease VAE ceiling needs one")
    # safetensors only, from this folder only (as load_run reads it)
    vae = AutoencoderKL.from_pretrained(run / "model" / "vae", use_safetensors=True, local_files_only=True).eval()
    rows = test[(test["stage"] >= 2) & (test["disease"] != HEALTHY)].reset_index(drop=True)
    images = load_images(list(rows["abspath"]))
    with torch.no_grad():
        trips = roundtrip(vae, images)
    for name, x in (("untouched", images), ("after the VAE", trips)):
        pred = list(evaluator.score(x)["pred_disease"])
        hits = collections.defaultdict(list)
        for d, p in zip(rows["disease"], pred):
            hits[d].append(p == d)
        print(f"evaluator top-1 per disease, {name}: "
              + ", ".join(f"{d} {sum(v) / len(v):.2f} (n {len(v)})" for d, v in hits.items()))
        for d in heldout:
            read = collections.Counter(p for dd, p in zip(rows["disease"], pred) if dd == d).most_common(4)
            print(f"  {d} read as {read}")


if __name__ == "__main__":
    main()
