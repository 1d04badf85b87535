"""Held-out and seen diseases drawn by trained generators with many seeds, all scored by one evaluator.

    python bench/heldout_draws.py RUN_A RUN_B [--seeds 30] [--stages 2 3] [--evaluator EVAL_DIR] [--guidance G]
                                   [--groups heldout seen] [--null-text empty|prompt] [--negative null|stage0|healthy]
                                   [--contrast LAMBDA] [--contrast-k K]

A train run draws each (disease, stage) cell only `samples.per_cell` times (6 on the benchmark: 24 held-out images),
too few to compare conditionings on held-out diseases. This draws every held-out disease (and, for reference,
every seen one) at the given stages with `--seeds` seeds, the same noise for every run, and prints top-1 with a
Wilson 95% interval per run, and the first run against each later one on held-out and on seen diseases (e.g. KG
tokens against text; one-sided, H1: the first is higher): Fisher's exact test on the counts and, as every run draws
the same requests with the same noise, McNemar's exact test on the requests only one of the two got right.
RUN_*: kgface.train output folders (a baselines run's `OUT/<mode>`); the evaluator is the first run's unless
--evaluator names one. A class-conditioned run cannot draw held-out diseases and is skipped for them. --guidance
replaces the runs' own `model.sample.guidance` (a sampling-time sweep needs no retraining); --null-text prompt
guides against each request's own prompt with null tokens instead of the empty prompt; --negative stage0 puts the
same request at stage 0 (its tokens and prompt, the same seed) in guidance's unconditional branch, --negative healthy
a healthy face's, so guidance pushes away from the disease's mildest look or from health instead of from nothing (a
sampling-time change, like a negative prompt; null: the runs' own). --contrast LAMBDA adds a push away from the K
seen diseases the KG puts nearest each request (cosine of frequency-weighted phenotype vectors; no evaluator):
eps = eps_null + w (eps_c - eps_null) + LAMBDA sum_j s_j (eps_c - eps_j), s_j the similarities scaled to sum 1, each
eps_j the neighbour at the request's stage and seed (one more UNet branch per neighbour). Top-1 reads the requests of
stages >= 2; each group's stage Spearman (requested vs measured severity) reads every stage
asked for: `--stages 0 1 2 3` for a number like generation.stage_spearman, which reads seen and held-out diseases
together (here each group apart).
Figures in docs/training.md came from this script.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--stages", type=float, nargs="+", default=[2.0, 3.0])
    ap.add_argument("--evaluator", default=None)
    ap.add_argument("--seed-offset", type=int, default=20000)
    ap.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: each run's)")
    ap.add_argument("--null-text", choices=["empty", "prompt"], default="empty",
                    help="guidance's unconditional prompt: empty (the runs' own) or each request's prompt, so "
                         "guidance pushes along the KG tokens alone")
    ap.add_argument("--groups", nargs="+", choices=["heldout", "seen"], default=["heldout", "seen"],
                    help="which diseases to draw (seen diseases take ~5x as long as the two held-out ones)")
    ap.add_argument("--negative", choices=["null", "stage0", "healthy"], default="null",
                    help="guidance's unconditional branch: null tokens (the runs' own), the request at stage 0, or a "
                         "healthy face")
    ap.add_argument("--contrast", type=float, default=0.0,
                    help="weight of the push away from the KG-nearest seen diseases (0: none)")
    ap.add_argument("--contrast-k", type=int, default=1, help="how many KG-nearest seen diseases --contrast uses")
    args = ap.parse_args(argv)
    if args.contrast < 0 or args.contrast_k < 1:
        ap.error("--contrast must be >= 0 and --contrast-k >= 1")
    if args.negative != "null" and args.null_text != "empty":
        ap.error("--negative replaces the unconditional branch --null-text sets: give one of them")
    if len({str(Path(r).resolve()) for r in args.runs}) < len(args.runs):  # results are keyed by run
        ap.error("a run is given twice; to compare a run with itself, copy its folder")

    import numpy as np
    from tqdm import tqdm

    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import heldout_of, load_run
    from kgface.evaluation import load_evaluator
    from kgface.evaluation.intervals import compare_proportions, paired_comparison, wilson_interval
    from kgface.evaluation.metrics import spearman
    from kgface.prompts.wording import stage_of

    first = Path(args.runs[0])  # a baselines generator (OUT/<mode>) keeps its evaluator in OUT/evaluator
    evaluator = load_evaluator(args.evaluator or (first if (first / "evaluator").is_dir() else first.parent))
    results, paired = {}, {}  # paired: (run, group) -> (request keys, hits) of its draws
    for run in args.runs:
        backbone, cond, profiles, cfg = load_run(run)
        heldout = heldout_of(Path(run))
        sample = cfg.model.get("sample", {})
        guidance = args.guidance if args.guidance is not None else float(sample.get("guidance", 3.0))
        if args.null_text == "prompt" and not cond.uses_tokens:
            print(f"{run}: skipped, --null-text prompt guides along KG tokens and {cond.mode} conditioning has none")
            continue
        gen = Generator(backbone, cond, guidance=guidance, steps=int(sample.get("steps", 20)), null_text=args.null_text,
                        eta=float(sample.get("eta", 0.0)))  # the run's sampler
        if args.negative != "null":
            gen = negative_guidance(gen, args.negative, next((p for p in profiles if p.healthy), None))
        known = {p.disease_id for p in cond.profiles}
        seen = [p for p in profiles if p.disease_id not in heldout and not p.healthy]
        out = {}
        for group, chosen in (("heldout", [p for p in profiles if p.disease_id in heldout]),
                              ("seen", seen)):
            if group not in args.groups:
                continue
            if cond.mode == "class":
                chosen = [p for p in chosen if p.disease_id in known]
            reqs = [Request(p, s, args.seed_offset + k)
                    for p in chosen for s in args.stages for k in range(args.seeds)]
            if not reqs:
                continue
            near = {p.disease_id: kg_nearest(p, [q for q in seen if q.disease_id != p.disease_id], args.contrast_k)
                    for p in chosen} if args.contrast else None
            preds, severity = [], []
            for i in tqdm(range(0, len(reqs), 32), desc=f"{Path(run).name}: {group}", unit="batch"):
                batch = reqs[i:i + 32]
                images = contrast_sample(gen, batch, near, args.contrast) if near else gen.sample(batch)
                scored = evaluator.score(images)
                preds += list(scored["pred_disease"])
                severity += list(scored["severity_pred"])
            # top-1 on the headline stages (2-3: stage 0 looks healthy by construction); Spearman on every stage
            head = [stage_of(r.severity) >= 2 for r in reqs]  # binned, as evaluate_sets reads a requested stage
            preds_h = [pr for pr, k in zip(preds, head) if k]
            reqs_h = [r for r, k in zip(reqs, head) if k]
            hit = np.array([pr == r.profile.disease_id for pr, r in zip(preds_h, reqs_h)], dtype=bool)
            per = {p.disease_id: float(hit[[r.profile.disease_id == p.disease_id for r in reqs_h]].mean())
                   if len(hit) else None for p in chosen}
            lo, hi = wilson_interval(int(hit.sum()), len(hit))
            paired[run, group] = ([(r.profile.disease_id, r.severity, r.seed) for r in reqs_h], hit)
            # where each disease's draws are read: the nearest seen disease, healthy, or itself
            read_as = {p.disease_id: dict(Counter(pr for pr, r in zip(preds_h, reqs_h)
                                                  if r.profile.disease_id == p.disease_id).most_common(3))
                       for p in chosen}
            out[group] = {"top1": float(hit.mean()) if len(hit) else None, "n": len(hit), "k": int(hit.sum()),
                          "ci95": [round(lo, 3), round(hi, 3)],
                          # requested vs measured severity, as generation.stage_spearman (nan with one stage)
                          "stage_spearman": spearman([r.severity for r in reqs], severity),
                          "per_disease": per, "read_as": read_as}
            if near:  # the neighbours each disease was pushed from, with their weights
                out[group]["contrast_from"] = {d: {q.disease_id: round(s, 3) for s, q in v} for d, v in near.items()}
        results[run] = {"conditioning": cond.mode, "guidance": guidance, "null_text": args.null_text,
                        "negative": args.negative, "contrast": args.contrast, "contrast_k": args.contrast_k, **out}
        print(json.dumps({run: results[run]}, indent=1))
    print("| run | conditioning | guidance | null text | held-out top-1 (n, 95% CI) | seen top-1 (n, 95% CI) "
          "| seen stage Spearman |")
    print("|---|---|---|---|---|---|---|")
    for run, r in results.items():
        cells = [f"{r[g]['top1']:.3f} ({r[g]['n']}, {r[g]['ci95'][0]:.2f}-{r[g]['ci95'][1]:.2f})"
                 if g in r and r[g]["n"] else "-" for g in ("heldout", "seen")]
        rho = f"{r['seen']['stage_spearman']:.3f}" if "seen" in r else "-"
        print(f"| {run} | {r['conditioning']} | {r['guidance']:g} | {r['null_text']} | {cells[0]} | {cells[1]} "
              f"| {rho} |")
    for group in ("heldout", "seen"):  # the first run against each later one, per group it drew
        runs = [run for run, r in results.items() if r.get(group, {}).get("n")]
        for run in runs[1:]:
            a, b = results[runs[0]][group], results[run][group]
            c = compare_proportions(a["k"], a["n"], b["k"], b["n"])
            line = (f"{group}: {runs[0]} {a['k']}/{a['n']} against {run} {b['k']}/{b['n']}, one-sided (H1: the "
                    f"first higher): Fisher p = {c['p_greater']:.3g}")
            if paired[runs[0], group][0] == paired[run, group][0]:  # the same requests, the same noise
                m = paired_comparison(paired[runs[0], group][1], paired[run, group][1])
                line += (f"; paired (McNemar exact, {m['only_a']} vs {m['only_b']} right in one only) "
                         f"p = {m['p_greater']:.3g}")
            print(line)


def negative_guidance(gen, negative: str, healthy):
    """`gen` with guidance's unconditional branch conditioned on each request at stage 0 (negative="stage0") or on a
    healthy face (negative="healthy"), same seed; the conditional branch is unchanged."""
    from kgface.diffusion.generator import Request

    if negative == "healthy" and healthy is None:
        raise SystemExit("--negative healthy: the run has no healthy profile")
    plain = gen.condition

    def condition(reqs):
        states, tokens, _, _, added, _ = plain(reqs)
        neg = [Request(healthy if negative == "healthy" else r.profile, 0.0, r.seed, r.age) for r in reqs]
        n_states, n_tokens, _, _, n_added, _ = plain(neg)
        return states, tokens, n_states, n_tokens, added, n_added

    gen.condition = condition
    return gen


def kg_nearest(profile, candidates, k: int) -> list[tuple[float, object]]:
    """The k candidate profiles nearest `profile` by the cosine of their frequency-weighted phenotype vectors (the
    KG alone), nearest first, as (similarity scaled so the k sum to 1, profile); equal weights if all are 0. A
    phenotype the KG gives no frequency counts 0.5 (the phantom's and the phenotype sets' default)."""
    import numpy as np

    def vec(p):
        return {q.hpo_id: 0.5 if q.frequency is None else float(q.frequency) for q in p.phenotypes}

    a = vec(profile)
    sims = []
    for q in candidates:
        b = vec(q)
        keys = sorted(set(a) | set(b))
        x, y = np.array([a.get(h, 0.0) for h in keys]), np.array([b.get(h, 0.0) for h in keys])
        norm = float(np.linalg.norm(x) * np.linalg.norm(y))
        sims.append((float(x @ y) / norm if norm else 0.0, q))
    top = sorted(sims, key=lambda t: -t[0])[:k]  # stable: ties keep the profiles' order
    total = sum(s for s, _ in top)
    return [(s / total if total else 1.0 / len(top), q) for s, q in top]


def contrast_sample(gen, reqs, nearest: dict, lam: float):
    """Images for `reqs` drawn with `contrast_model`: the same start noise, ladder and sampler as `gen.sample` (lam 0
    draws its images)."""
    from kgface.diffusion.sampling import ddim_sample

    x, alphas = gen.noise(reqs).to(gen.device), gen.backbone.scheduler.alphas_cumprod
    latents = ddim_sample(contrast_model(gen, reqs, nearest, lam), x, gen.ladder(), alphas, prediction=gen.prediction,
                          eta=gen.eta, step_noise=gen.step_noise(reqs) if gen.eta > 0 else None)
    return gen.decode(latents)


def contrast_model(gen, reqs, nearest: dict, lam: float):
    """The sampler's model function (x, t, _) for `reqs`: the run's guidance plus lam * sum_j s_j (eps_c - eps_j),
    eps_j each request's j-th KG neighbour (`nearest[disease_id]` from `kg_nearest`) at its stage and seed."""
    import torch

    from kgface.diffusion.adapter import kg_added_cond_kwargs
    from kgface.diffusion.generator import Request
    from kgface.diffusion.sampling import half_weights_dtype, unet_eps

    b, k = gen.backbone, len(nearest[reqs[0].profile.disease_id])
    states, tokens, null_states, null_tokens, added, null_added = gen.condition(reqs)
    branches = [(null_states, null_tokens, null_added), (states, tokens, added)]
    for j in range(k):
        s, t, _, _, a, _ = gen.condition([Request(nearest[r.profile.disease_id][j][1], r.severity, r.seed, r.age)
                                          for r in reqs])
        branches.append((s, t, a))
    weight = torch.tensor([[nearest[r.profile.disease_id][j][0] for j in range(k)] for r in reqs])
    all_states = torch.cat([s for s, _, _ in branches])
    extra = {key: torch.cat([a[key] for _, _, a in branches]) for key in (added or {})}
    kw = (kg_added_cond_kwargs(torch.cat([t for _, t, _ in branches]), extra) if tokens is not None
          else (extra or None))
    half, n = half_weights_dtype(b.unet), len(branches)

    def model_fn(x, t, _):
        out = unet_eps(b.unet, torch.cat([x] * n), t, all_states, kw, half=half).chunk(n)
        guided = out[0] + gen.guidance * (out[1] - out[0])
        push = sum(weight[:, j].to(x)[:, None, None, None] * (out[1] - out[2 + j]) for j in range(k))
        return guided + lam * push

    return model_fn


if __name__ == "__main__":
    main()
