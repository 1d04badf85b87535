"""Cost of the KG adapter on the tiny UNet: a training step and a sampling step, with and without the adapter.

    python bench/adapter_overhead.py [--repeats 30] [--batch 16] [--tokens 8] [--threads 2] [--clock wall|cpu]
                                     [--model-config conf/model/tiny.yaml | --library-defaults]

Both UNets hold the same base weights: the UNet of the default run (conf/model/tiny.yaml's `tiny` block: 16x16x4
latents, cross-attention 384 for MiniLM states, 77 text tokens), or with --library-defaults the smaller one of
kgface.diffusion.models.TINY_DEFAULTS (8x8x4 latents). Training step = forward + backward (all parameters
trainable, as for model=tiny); sampling step = forward under no_grad. The two variants alternate in every round so
that load from other processes hits both alike; the report gives medians, minima and their ratios (targets:
sampling <= 1.05x, training <= 1.10x). On a machine shared with other jobs, `--clock cpu --threads 1` (this
process's CPU time) is far less disturbed by the other jobs than wall time; the minimum is the least disturbed
wall-clock estimate.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch

from kgface.diffusion import attach_kg_adapter, build_tiny_stack, kg_added_cond_kwargs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=8, help="K, KG tokens per sample")
    ap.add_argument("--text-tokens", type=int, default=77)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model-config", default=str(Path(__file__).resolve().parents[1] / "conf/model/tiny.yaml"),
                    help="a model=tiny config file whose `tiny` block sizes the UNet (default: the default run's)")
    ap.add_argument("--library-defaults", action="store_true", help="TINY_DEFAULTS instead of --model-config")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (CPU time of this process, all threads)")
    args = ap.parse_args(argv)
    if args.repeats < 1:  # a ratio of nothing: a ZeroDivisionError or an empty median
        ap.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    tiny = None
    if not args.library_defaults:
        from omegaconf import OmegaConf

        tiny = OmegaConf.to_container(OmegaConf.load(args.model_config).tiny)
    _, base = build_tiny_stack(tiny)
    adapted = copy.deepcopy(base)
    attach_kg_adapter(adapted, num_tokens=args.tokens)
    c = base.config
    b = args.batch
    x = torch.randn(b, c.in_channels, c.sample_size, c.sample_size)
    t = torch.randint(0, 1000, (b,))
    text = torch.randn(b, args.text_tokens, c.cross_attention_dim)
    kw = kg_added_cond_kwargs(torch.randn(b, args.tokens, c.cross_attention_dim))
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    calls = {"base": (base, {}), "adapter": (adapted, {"added_cond_kwargs": kw})}

    def train_step(name):
        unet, extra = calls[name]
        unet.zero_grad(set_to_none=True)
        t0 = clock()
        unet(x, t, encoder_hidden_states=text, **extra).sample.pow(2).mean().backward()
        return clock() - t0

    def sample_step(name):
        unet, extra = calls[name]
        t0 = clock()
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=text, **extra)
        return clock() - t0

    n_base = sum(p.numel() for p in base.parameters())
    n_ad = sum(p.numel() for p in adapted.parameters()) - n_base
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {cpu}, threads={torch.get_num_threads()}, "
          f"clock={args.clock}")
    print(f"tiny UNet {n_base / 1e6:.2f}M params; adapter +{n_ad / 1e6:.3f}M ({100 * n_ad / n_base:.1f}%); "
          f"batch {b}, latents {c.in_channels}x{c.sample_size}x{c.sample_size}, text {args.text_tokens}x"
          f"{c.cross_attention_dim}, KG tokens {args.tokens}x{c.cross_attention_dim}")
    steps = (("sampling step (forward, no_grad)", sample_step), ("training step (forward+backward)", train_step))
    for label, fn in steps:
        for unet, _ in calls.values():
            unet.train(fn is train_step)
        times = {"base": [], "adapter": []}
        for i in range(args.warmup + args.repeats):
            order = ("base", "adapter") if i % 2 == 0 else ("adapter", "base")
            for name in order:
                dt = fn(name)
                if i >= args.warmup:
                    times[name].append(dt)
        mb, ma = statistics.median(times["base"]), statistics.median(times["adapter"])
        # per-round ratios (both variants measured back to back) are robust to slow drifts in machine load
        ratios = [a / bb for a, bb in zip(times["adapter"], times["base"])]
        nb, na = min(times["base"]), min(times["adapter"])
        print(f"{label}: base {1000 * mb:.1f} ms, adapter {1000 * ma:.1f} ms (medians of {args.repeats}); "
              f"ratio of medians {ma / mb:.3f}x, median per-round ratio {statistics.median(ratios):.3f}x; "
              f"minima {1000 * nb:.1f} / {1000 * na:.1f} ms, ratio {na / nb:.3f}x")


if __name__ == "__main__":
    main()
