"""Does the sampler's ladder change what a trained generator draws? The same requests and noise under ladder variants.

    python bench/sampler_ladder.py RUN leading:20 leading:10 leading:50 even:999:20 even:900:20 \
        leading:20:clip4 leading:20:guide0-700

Each variant is `LADDER[:OPTION...]`:
- `leading:N`: N steps of 1000 // N (`kgface.diffusion.sampling.ddim_timesteps`), so 20 steps start at t = 950, 50
  at 980, 100 at 990 (the ladder of runs whose model.schedule.timestep_spacing is leading, the default);
- `trailing:N`: the same steps ending at t = 999 (999, 949, ..., 49 for 20);
- `even:T:N`: N steps evenly from t = T down to 0 (T = 999 starts at the top of the ladder);
- `clipC`: the predicted clean latent clamped to [-C, C] at every step (the run's latents have unit std; 99.9% of
  real faces' latent values lie within 3.4), the model's output (noise or v) recomputed from it (diffusers'
  clip_sample);
- `guideLO-HI`: classifier-free guidance only at timesteps LO..HI, the conditional prediction alone elsewhere;
- `wG`: classifier-free guidance G instead of the run's `model.sample.guidance` (`w1` = the conditional alone);
- `etaE`: DDIM with fresh noise at every step (Song et al.'s eta: 0 = the run's deterministic DDIM, 1 = ancestral,
  DDPM-like); the fresh noise comes from a generator seeded per batch, so a variant repeats itself.

Requests: every seen disease at stages 0-3, 10 seeds; 20 healthy faces; the held-out diseases at stages 2-3, 10
seeds; all read by the run's evaluator. Prints, per variant: seen top-1 at stages 2-3 (as `bench/heldout_draws.py`),
held-out hits, Spearman of requested stage vs measured severity over the seen diseases' stages 0-3, the share of
stage-0 requests and of healthy requests read as healthy, mean severity by stage, and the images' saturation and
high-frequency energy (a softness reading). Figures in docs/generation.md ("The sampler's ladder") came from it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def ladder(spec: str, n_train: int, offset: int = 0):
    """Descending timesteps and options {clip, guide} of a variant spec; `offset`: the scheduler's steps_offset
    (1 in SD folders), which the generator's own leading ladder adds."""
    import numpy as np
    import torch

    from kgface.diffusion.sampling import ddim_timesteps

    parts = spec.split(":")
    opts = {}
    if parts[0] in ("leading", "trailing"):
        ts, rest = ddim_timesteps(n_train, int(parts[1]), spacing=parts[0], offset=offset), parts[2:]
    elif parts[0] == "even":
        top, n = int(parts[1]), int(parts[2])
        if not (0 < top < n_train and 1 <= n <= top + 1):  # past the ladder, or steps that repeat a timestep
            raise SystemExit(f"{spec}: even:T:N needs 0 < T < {n_train} and 1 <= N <= T + 1")
        ts = torch.from_numpy(np.round(np.linspace(top, 0, n)).astype(np.int64))
        rest = parts[3:]
    else:
        raise SystemExit(f"{spec}: a variant starts with leading:N, trailing:N or even:T:N")
    for o in rest:
        if o.startswith("clip"):
            opts["clip"] = float(o[4:])
        elif o.startswith("guide"):
            lo, hi = o[5:].split("-")
            opts["guide"] = (int(lo), int(hi))
        elif o.startswith("eta") and o[3:].replace(".", "", 1).isdigit():
            opts["eta"] = float(o[3:])
        elif o.startswith("w") and o[1:].replace(".", "", 1).isdigit():
            opts["w"] = float(o[1:])
        else:
            raise SystemExit(f"{spec}: unknown option {o} (clipC, guideLO-HI, wG or etaE)")
    if "clip" in opts and "eta" in opts:
        raise SystemExit(f"{spec}: clipC and etaE are separate samplers; use one")
    return ts, opts


def ddim_clipped(model_fn, x, timesteps, alphas_cumprod, cond, clip: float, prediction: str = "epsilon"):
    """`kgface.diffusion.sampling.ddim_sample` with the clean-latent estimate clamped: the clamp is a change of the
    model's output (the one that implies the clamped estimate), so the project's sampler runs unchanged."""
    import torch

    from kgface.diffusion.sampling import clean_and_noise, ddim_sample

    a = alphas_cumprod.to(x.device, torch.float32)

    def clamped(x, t, c):
        a_t = a[t]
        x0 = clean_and_noise(model_fn(x, t, c), x, a_t, prediction)[0].clamp(-clip, clip)
        if prediction == "v_prediction":
            return (a_t.sqrt() * x.float() - x0) / (1 - a_t).sqrt()
        return (x.float() - a_t.sqrt() * x0) / (1 - a_t).sqrt()

    return ddim_sample(clamped, x, timesteps, alphas_cumprod, cond, prediction=prediction)


def ddim_eta(model_fn, x, timesteps, alphas_cumprod, cond, eta: float, generator, prediction: str = "epsilon"):
    """`kgface.diffusion.sampling.ddim_sample` with eta, its step noise drawn from one generator for the whole batch
    (the Generator's option draws each request's from a stream of its own, so the two differ in their noise)."""
    import torch

    from kgface.diffusion.sampling import ddim_sample

    return ddim_sample(model_fn, x, timesteps, alphas_cumprod, cond, prediction=prediction, eta=eta,
                       step_noise=lambda i: torch.randn(x.shape, generator=generator))


def draw(gen, reqs, spec: str, guidance: float):
    """uint8 images of the requests under a ladder variant (`gen`'s own noise, condition and decoder)."""
    import torch

    from kgface.diffusion.sampling import cfg_model, ddim_sample

    b = gen.backbone
    ts, opts = ladder(spec, b.scheduler.config.num_train_timesteps, int(b.scheduler.config.get("steps_offset", 0)))
    full, plain = cfg_model(b.unet, opts.get("w", guidance)), cfg_model(b.unet, 1.0)
    lo, hi = opts.get("guide", (0, 10 ** 9))

    def model_fn(x, t, c):  # guided inside the interval, the conditional prediction alone outside it
        return (full if lo <= int(t) <= hi else plain)(x, t, c)

    images = []
    for i in range(0, len(reqs), 32):
        batch = reqs[i:i + 32]
        noise = gen.noise(batch).to(gen.device)
        c = gen.condition(batch)
        with torch.no_grad():
            if "eta" in opts:
                rng = torch.Generator().manual_seed(i)
                z = ddim_eta(model_fn, noise, ts, b.scheduler.alphas_cumprod, c, opts["eta"], rng, gen.prediction)
            elif "clip" in opts:
                z = ddim_clipped(model_fn, noise, ts, b.scheduler.alphas_cumprod, c, opts["clip"], gen.prediction)
            else:
                z = ddim_sample(model_fn, noise, ts, b.scheduler.alphas_cumprod, c, prediction=gen.prediction)
        images.append(gen.decode(z))
    return torch.cat(images)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args(argv)

    import numpy as np

    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import heldout_of, load_run
    from kgface.evaluation import load_evaluator
    from kgface.evaluation.metrics import spearman

    ev = load_evaluator(args.run)
    backbone, cond, profiles, cfg = load_run(args.run)
    held = heldout_of(Path(args.run))
    guidance = float(cfg.model.sample.get("guidance", 3.0))
    seen = [p for p in profiles if p.disease_id not in held and not p.healthy]
    healthy = next(p for p in profiles if p.healthy)
    reqs = [Request(p, s, 20000 + k) for p in seen for s in (0, 1, 2, 3) for k in range(args.seeds)]
    reqs += [Request(healthy, 0, 20000 + k) for k in range(2 * args.seeds)]
    if cond.mode != "class":  # class tokens cannot draw a disease they never saw
        reqs += [Request(p, s, 20000 + k) for p in profiles if p.disease_id in held for s in (2, 3)
                 for k in range(args.seeds)]
    d = np.array([r.profile.disease_id for r in reqs])
    s = np.array([r.severity for r in reqs])
    ho = np.isin(d, sorted(held))
    sick = (d != healthy.disease_id) & ~ho
    head = sick & (s >= 2)
    if float(cfg.model.sample.get("eta", 0.0)):  # every variant but etaE draws plain DDIM: not this run's sampler
        raise SystemExit(f"{args.run}: model.sample.eta={cfg.model.sample.eta}; the ladder variants compare eta=0 "
                         "samplers (etaE gives a variant its own eta)")
    # the run's steps, though draw() takes each variant's own ladder
    gen = Generator(backbone, cond, guidance=guidance, steps=int(cfg.model.sample.get("steps", 20)))
    print("| variant | first timesteps | seen top-1, stages 2-3 | held-out | seen stage Spearman "
          "| stage 0 read healthy | healthy read healthy | mean severity, stages 0-3 "
          "| saturation; high-frequency energy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in args.variants:
        start = time.time()
        ts = ladder(spec, backbone.scheduler.config.num_train_timesteps,
                    int(backbone.scheduler.config.get("steps_offset", 0)))[0]
        x = draw(gen, reqs, spec, guidance)
        t = ev.score(x)
        pred, sev = t["pred_disease"].to_numpy(), t["severity_pred"].to_numpy()
        f = x.float() / 255
        sat = ((f.max(1).values - f.min(1).values) / f.max(1).values.clamp_min(1e-3)).mean()
        lap = (4 * f[..., 1:-1, 1:-1] - f[..., :-2, 1:-1] - f[..., 2:, 1:-1] - f[..., 1:-1, :-2]
               - f[..., 1:-1, 2:]).abs().mean()
        means = " / ".join(f"{sev[sick & (s == k)].mean():.2f}" for k in range(4))
        hits = int(np.sum(pred[head] == d[head]))
        zero_healthy = np.mean(pred[sick & (s == 0)] == "healthy")
        print(f"| {spec} | {', '.join(str(int(v)) for v in ts[:3])} | {hits / head.sum():.3f} ({hits} of "
              f"{int(head.sum())}) | {int(np.sum(pred[ho] == d[ho]))} of {int(ho.sum())} | "
              f"{spearman(s[sick], sev[sick]):.3f} | {zero_healthy:.2f} | "
              f"{np.mean(pred[d == healthy.disease_id] == 'healthy'):.2f} | {means} | {sat:.3f}; {lap:.4f} |",
              flush=True)
        print(f"({spec}: {time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
