"""Held-out diseases drawn by composing guidance over groups of their phenotypes (sampling time, no retraining).

    python bench/composed_guidance.py RUN [--evaluator EVAL_DIR] [--seeds 30] [--chunks 0 6 4 2] [--weight each|split]

For a generator trained on phenotype sets (`trainer.observed_phenotypes=true`, best with `trainer.atlas_share > 0`):
each held-out request's drawn phenotype set is split into near-equal groups of at most C phenotypes, each group
becomes a phenotype-atlas profile (no disease: the sets an atlas-trained generator has seen), and classifier-free
guidance sums one term per group: eps = eps_null + w * sum_i (eps_i - eps_null) (composition of conditions as a
product of densities; w = the run's guidance for each term with --weight each, divided by the number of groups with
--weight split). C = 0 is the run's own sampler (the whole disease profile). Same seeds and noise as
bench/heldout_draws.py; prints held-out top-1 and where the draws are read per C.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path


def groups(ids: list[str], size: int) -> list[list[str]]:
    """`ids` dealt into ceil(len / size) near-equal groups (at least one, possibly empty)."""
    n = max(1, -(-len(ids) // size))
    return [ids[i::n] for i in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--evaluator", default=None)
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--stages", type=float, nargs="+", default=[2.0, 3.0])
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 6, 4, 2])
    ap.add_argument("--weight", choices=["each", "split"], default="each")
    ap.add_argument("--seed-offset", type=int, default=20000)
    args = ap.parse_args(argv)
    from kgface.prompts.wording import stage_of

    if min(stage_of(s) for s in args.stages) < 2:  # top-1 on stages 2-3, as heldout_draws.py counts it
        raise SystemExit(f"--stages {args.stages}: held-out top-1 is read on stages 2-3; give severities of stage >= 2")

    import numpy as np
    import torch

    from kgface.diffusion.adapter import kg_added_cond_kwargs
    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import heldout_of, load_run
    from kgface.diffusion.sampling import ddim_sample, unet_eps
    from kgface.diffusion.training_data import ATLAS_NAME
    from kgface.evaluation import load_evaluator

    run = Path(args.run)
    evaluator = load_evaluator(args.evaluator or run)
    backbone, cond, profiles, cfg = load_run(run)
    if cond.mode != "kg" or not cond.phenotype_draws:
        raise SystemExit(f"{run}: composed guidance needs a kg run trained with trainer.observed_phenotypes=true")
    if float(cfg.model.sample.get("eta", 0.0)):  # the summed branch below is plain DDIM: no fresh noise per step
        raise SystemExit(f"{run}: model.sample.eta={cfg.model.sample.eta}; composed guidance compares eta=0 samplers")
    if backbone.kind == "sdxl":  # its UNet also reads pooled text and time ids, which this sampler does not pass
        raise SystemExit(f"{run}: composed guidance draws tiny and sd15 runs, not sdxl")
    gen = Generator(backbone, cond, guidance=float(cfg.model.sample.guidance), steps=int(cfg.model.sample.steps))
    held = heldout_of(run)
    chosen = [p for p in profiles if p.disease_id in held]
    reqs = [Request(p, s, args.seed_offset + k) for p in chosen for s in args.stages for k in range(args.seeds)]

    def atlas_like(profile, ids):
        keep = set(ids)
        shown = [dataclasses.replace(p, frequency=1.0, frequency_raw="", min_stage=0, provenance="phenotype atlas")
                 for p in profile.phenotypes if p.hpo_id in keep]
        return dataclasses.replace(profile, disease_id="atlas-composed", name=ATLAS_NAME, query="phenotype atlas",
                                   phenotypes=sorted(shown, key=lambda p: p.hpo_id))

    @torch.no_grad()
    def draw(batch, size):
        if size == 0:
            return gen.sample(batch, batch_size=len(batch))
        b = backbone
        drawn = gen.request_profiles(batch)
        per = [groups([p.hpo_id for p in d.phenotypes], size) for d in drawn]
        n_parts = len(max(per, key=len))
        # a request with fewer groups repeats its last one; `mask` keeps only its own groups in the sum
        parts = [[atlas_like(d, g[min(j, len(g) - 1)]) for d, g in zip(drawn, per)] for j in range(n_parts)]
        mask = torch.tensor([[float(j < len(g)) for g in per] for j in range(n_parts)])
        w = gen.guidance / mask.sum(0) if args.weight == "split" else torch.full((len(batch),), gen.guidance)
        sev = torch.tensor([r.severity for r in batch])
        age = torch.tensor([r.age for r in batch]) if getattr(cond.encoder, "age_groups", 0) else None  # as the
        tokens = [cond.tokens(None, sev, age, graphs=cond.graph_builder.batch(ps)) for ps in parts]  # generator's
        states, _ = b.text_states(gen.prompts(batch))
        null_states, _ = b.text_states([""] * len(batch))
        null_tokens = cond.null(len(batch))

        def model_fn(x, t, _):
            out = unet_eps(b.unet, torch.cat([x] * (n_parts + 1)), t,  # autocast over a half-precision base
                           torch.cat([null_states] + [states] * n_parts),
                           kg_added_cond_kwargs(torch.cat([null_tokens] + tokens), None)).chunk(n_parts + 1)
            delta = sum(mask[j].to(x)[:, None, None, None] * (out[j + 1] - out[0]) for j in range(n_parts))
            return out[0] + w.to(x)[:, None, None, None] * delta  # on the latents' device (a GPU run's too)

        return gen.decode(ddim_sample(model_fn, gen.noise(batch).to(gen.device), gen.ladder(),
                                      b.scheduler.alphas_cumprod, prediction=gen.prediction))

    print("| groups of at most | weight | held-out top-1 (hits / n) | read as (top 3) |\n|---|---|---|---|")
    for size in args.chunks:
        preds = []
        for i in range(0, len(reqs), 24):
            preds += list(evaluator.score(draw(reqs[i:i + 24], size))["pred_disease"])
        hit = np.array([p == r.profile.disease_id for p, r in zip(preds, reqs)])
        read = Counter(p for p in preds).most_common(3)
        label = "whole profile (the run's sampler)" if size == 0 else str(size)
        print(f"| {label} | {args.weight if size else '-'} | {hit.mean():.3f} ({hit.sum()} / {len(hit)}) | "
              f"{json.dumps(dict(read))} |", flush=True)


if __name__ == "__main__":
    main()
