"""How well a run's DDIM inversion gives a real face back, against its strength: the ceiling of `inversion=true`.

    python bench/inversion_reconstruction.py RUN [RUN ...] [--strengths 0.5 0.7 0.9 1.0] [-n 16] [--steps N]
                                             [--threads 2]

Each of the first n healthy test faces is encoded, inverted up the `strength` share of the run's own ladder under its
own condition (healthy, stage 0; `Generator.invert`) and sampled back down under the same condition without guidance
(guidance 1), so a perfect inversion returns the face. Beside it, SDEdit's start (the face plus fresh noise at the
same timestep, the train job's transformations) brought down the same way. Printed per strength: the start timestep,
the latent's relative error (|z' - z| / |z|) and the PSNR of the decoded face against the VAE's own round trip (the
best any edit can do), medians over the faces. Runs of both objectives read alike (epsilon or v_prediction, each on
its own ladder), so a v run and an epsilon run can be set side by side. Figures in docs/generation.md came from this.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def psnr(a, b) -> float:
    """PSNR in dB of two uint8 images [3, H, W] (inf when equal)."""
    import torch

    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(255.0 ** 2 / mse)).item()


def reconstruct(gen, faces, reqs, strength: float) -> dict:
    """Median relative latent error and PSNR (against the VAE round trip) of inversion and of SDEdit's fresh noise."""
    import torch

    guidance, gen.guidance = gen.guidance, 1.0  # brought down under the source condition alone
    try:
        z = gen.encode(faces)
        vae_trip = gen.decode(z)
        inverted = gen.invert(z, reqs, strength)
        back = {"inversion": gen.latents(reqs, noise=inverted, strength=strength),
                "sdedit": gen.latents(reqs, init_latents=z, strength=strength)}
    finally:
        gen.guidance = guidance
    out = {"strength": strength, "start_t": int(gen.ladder(strength)[0]), "n": len(reqs)}
    for name, zb in back.items():
        rel = ((zb - z).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1)).quantile(0.5).item()
        images = gen.decode(zb)
        out[f"{name}_latent_error"] = round(rel, 4)
        psnrs = torch.tensor([psnr(a, b) for a, b in zip(images, vae_trip)])
        out[f"{name}_psnr"] = round(psnrs.quantile(0.5).item(), 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.7, 0.9, 1.0])
    ap.add_argument("-n", type=int, default=16, help="healthy test faces")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's model.sample.steps)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from kgface.data.manifest import read_manifest
    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import load_run
    from kgface.diffusion.editing import prepare_image
    from kgface.run_files import run_file

    for run in args.runs:
        backbone, cond, profiles, cfg = load_run(run)
        data = run_file(run, "data.json")
        if data is None:
            raise SystemExit(f"{run}: no data.json (not a kgface.train output folder)")
        healthy = next((p for p in profiles if p.healthy), None)
        if healthy is None:
            raise SystemExit(f"{run}: no healthy profile to invert under")
        real = read_manifest(json.loads(data.read_text())["manifest"])[0]
        test = real[(real["split"] == "test") & (real["disease"] == "healthy")].sort_values("identity")
        paths = list(test["abspath"])[:args.n]
        if not paths:
            raise SystemExit(f"{run}: no healthy test face")
        sample = cfg.model.get("sample", {})
        steps = args.steps or int(sample.get("steps", 20))
        gen = Generator(backbone, cond, guidance=float(sample.get("guidance", 3.0)), steps=steps)
        faces = torch.stack([prepare_image(p, backbone.image_size, notes=False) for p in paths])
        reqs = [Request(healthy, 0.0, seed=i) for i in range(len(paths))]
        print(f"\nrun {run}: {gen.prediction}, {gen.steps} steps, {gen.spacing} ladder, {len(paths)} healthy test "
              "faces")
        rows = []
        for s in args.strengths:
            rows.append(reconstruct(gen, faces, reqs, s))
            print(json.dumps(rows[-1]))
        print("| strength | start t | inversion: latent error / PSNR (dB) | SDEdit: latent error / PSNR (dB) |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['strength']:g} | {r['start_t']} | {r['inversion_latent_error']:.3f} / "
                  f"{r['inversion_psnr']:.1f} | {r['sdedit_latent_error']:.3f} / {r['sdedit_psnr']:.1f} |")


if __name__ == "__main__":
    main()
