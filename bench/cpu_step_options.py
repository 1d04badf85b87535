"""Does the default tiny UNet's training step get cheaper on a CPU with bf16 autocast or torch.compile?

    python bench/cpu_step_options.py [--steps 15] [--rounds 2] [--batch 16] [--threads 2] [--no-compile]

One UNet of the default `model=tiny` (with the KG adapter), random latents, text states and KG tokens at the default
shapes; each variant runs the same forward/backward/AdamW step: fp32 eager (the baseline), bf16 autocast
(`torch.autocast("cpu", torch.bfloat16)`, what `trainer.mixed_precision=bf16` asks accelerate for), and
`torch.compile` (inductor; its compile time is printed apart). Rounds alternate the variants so that other load hits
all alike. Prints seconds per step (median, min) and each variant's ratio to fp32 eager, and the CPU's bf16 flags
(AMX / AVX-512 BF16 are what make bf16 matmuls fast).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = set(next(line for line in fh if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "none listed"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles for ~100 s)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:  # a ratio of nothing: a ZeroDivisionError or an empty median
        ap.error("--steps, --rounds must be >= 1")
    torch.set_num_threads(args.threads)

    from kgface.config import compose, container
    from kgface.diffusion.backbones import TEXT_LENGTH, build_backbone

    cfg = compose("train", ["progress=false"])
    torch.manual_seed(0)
    backbone = build_backbone(container(cfg.model), num_tokens=int(cfg.model.num_tokens), with_adapter=True)
    unet = backbone.unet.train()
    b = args.batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, *backbone.latent_shape, generator=g)
    width = unet.config.cross_attention_dim
    states = torch.randn(b, TEXT_LENGTH, width, generator=g)  # every prompt is padded to 77 MiniLM states
    tokens = torch.randn(b, int(cfg.model.num_tokens), width, generator=g)
    ts = torch.randint(0, 1000, (b,), generator=g)
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)

    def step(model, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(x, ts, encoder_hidden_states=states, added_cond_kwargs={"image_embeds": [tokens]}).sample
        F.mse_loss(pred.float(), x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = {"fp32 eager": (unet, False), "bf16 autocast": (unet, True)}
    compile_s = None
    if not args.no_compile:
        compiled = torch.compile(unet)
        tic = time.perf_counter()
        step(compiled, False)
        compile_s = time.perf_counter() - tic
        variants["torch.compile"] = (compiled, False)
    times = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            model, bf16 = variants[name]
            for _ in range(2):  # warm-up after the switch
                step(model, bf16)
            tic = time.perf_counter()
            for _ in range(args.steps):
                step(model, bf16)
            times[name].append((time.perf_counter() - tic) / args.steps)
    params = sum(p.numel() for p in unet.parameters())
    print(f"# {platform.processor() or platform.machine()} (bf16 flags: {cpu_flags()}), torch {torch.__version__}, "
          f"threads {args.threads}, UNet {params / 1e6:.1f}M params, latents {tuple(backbone.latent_shape)}, batch "
          f"{b}, {args.steps} steps x {args.rounds} rounds")
    base = statistics.median(times["fp32 eager"])
    for name, ts_ in times.items():
        print(f"{name:14s} s/step median {statistics.median(ts_):.3f}  min {min(ts_):.3f}  "
              f"ratio to fp32 eager {statistics.median(ts_) / base:.2f}x")
    if compile_s is not None:
        print(f"torch.compile: first step (compiling) {compile_s:.0f} s")


if __name__ == "__main__":
    main()
