"""Memory and step time of LoRA fine-tuning with the frozen base in fp32 vs bf16 (model.dtype), same everything else.

    python bench/half_precision_base.py [--folder SD15_FOLDER] [--resolution 64] [--steps 3] [--threads 2]

Each precision loads the folder in a fresh process through kgface's own `build_backbone` (what `python -m
kgface.train model=sd15 model.dtype=...` does): LoRA rank 16 on the UNet's attention, the KG adapter (8 tokens),
gradient checkpointing; then `--steps` training steps (batch 1, bf16 autocast in both, as
`trainer.mixed_precision=bf16`; AdamW over the trainable weights). Reported per precision: bytes of frozen and
trainable weights (the VAE stays fp32 in both), the process's peak resident memory during the training steps
(Linux: VmHWM reset after loading, freed heap trimmed first; on a CPU the resident memory right after loading says
little: fp32 weights may stay memory-mapped and untouched, while a cast from an fp32 file leaves heap behind), the
median seconds per step, and the bf16 / fp32 ratios. Without --folder an SD 1.5-architecture folder (UNet 860M, CLIP ViT-L/14 text encoder 123M, VAE 84M
weights; random init, so only sizes and speed mean anything) is written to a temporary directory first (~4.3 GB).
It runs on the CPU only (autocast on "cpu", nothing moved to a GPU): its memory figures are the frozen weights' and
the process's, and its step times say nothing about a GPU's.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_sd15_architecture(path: Path) -> Path:
    """A random-init folder with Stable Diffusion 1.5's published module sizes, in diffusers' layout."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(ROOT))
    from tests.diffusion.tiny_folders import clip_tokenizer  # CLIP's BPE vocabulary from open_clip's bundled list

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the library defaults are SD 1.x's blocks
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    tok = clip_tokenizer(path.parent / "tokenizer-files", num_merges=None)
    n = len(tok)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, image_encoder=None,
                            requires_safety_checker=False).save_pretrained(str(path), safe_serialization=True)
    return path


def _reset_peak() -> bool:
    """Start the peak afresh from now, after handing the load's freed heap back to the OS (glibc keeps it)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS
        return True
    except OSError:
        return False


def _status_bytes(key: str) -> int:
    """A /proc/self/status memory line (Linux); elsewhere the process's lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def child(folder: str, dtype: str, resolution: int, steps: int, threads: int) -> dict:
    """One precision, measured in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    from kgface.diffusion.adapter import kg_added_cond_kwargs
    from kgface.diffusion.backbones import build_backbone

    torch.set_num_threads(threads)
    b = build_backbone({"name": "sd15", "pretrained": folder, "dtype": dtype, "lora_rank": 16, "lora_alpha": 16,
                        "resolution": resolution, "gradient_checkpointing": True}, num_tokens=8)
    b.unet.train()
    ids = {id(p) for p in b.trainable}
    frozen = [p for m in (b.unet, b.text_encoder) for p in m.parameters() if id(p) not in ids]
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    opt = torch.optim.AdamW(b.trainable, lr=1e-4)
    states, _ = b.text_states(["a face with papules and pustules on the cheeks, stage 2"])
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, *b.latent_shape, generator=g)
    tokens = torch.randn(1, 8, b.cross_attention_dim, generator=g)
    reset = _reset_peak()
    times = []
    for _ in range(steps + 1):  # the first step (allocations, one-off casts) is not timed
        tic = time.perf_counter()
        noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 1000, (1,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = b.unet(b.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states,
                          added_cond_kwargs=kg_added_cond_kwargs(tokens)).sample
        F.mse_loss(pred.float(), noise).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - tic)
    return {"dtype": dtype, "frozen_bytes": nbytes(frozen), "trainable_bytes": nbytes(b.trainable),
            "vae_bytes": nbytes(b.vae.parameters()), "trainable_dtypes": sorted({str(p.dtype) for p in b.trainable}),
            "peak_rss_bytes": _status_bytes("VmHWM:"), "peak_is_training_only": reset,
            "seconds_per_step": statistics.median(times[1:])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", default=None, help="a local SD 1.5 diffusers folder (default: random SD 1.5 sizes)")
    ap.add_argument("--resolution", type=int, default=64, help="image side (the latents are 1/8 of it)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.child:
        print(json.dumps(child(args.folder, args.child, args.resolution, args.steps, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="kgface-sd15-") as tmp:
        folder = args.folder or str(write_sd15_architecture(Path(tmp) / "sd15"))
        rows = {}
        for dtype in ("fp32", "bf16"):
            out = subprocess.run([sys.executable, __file__, "--child", dtype, "--folder", folder, "--resolution",
                                  str(args.resolution), "--steps", str(args.steps), "--threads", str(args.threads)],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"model.dtype={dtype} failed:\n{out.stderr[-3000:]}")
            rows[dtype] = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 2 ** 30
    print(f"folder: {args.folder or 'random SD 1.5 architecture'}; resolution {args.resolution}, batch 1, "
          f"LoRA 16 + KG adapter, gradient checkpointing, bf16 autocast, {args.threads} threads")
    peak = "peak RSS (steps)" if all(r["peak_is_training_only"] for r in rows.values()) else "peak RSS (all)"
    print(f"{'model.dtype':<12}{'frozen GiB':>11}{'trainable MiB':>14}{'VAE MiB':>8}{peak + ' GiB':>22}"
          f"{'s/step':>8}  trainable dtype")
    for r in rows.values():
        print(f"{r['dtype']:<12}{r['frozen_bytes'] / gib:>11.2f}{r['trainable_bytes'] / 2 ** 20:>14.1f}"
              f"{r['vae_bytes'] / 2 ** 20:>8.0f}{r['peak_rss_bytes'] / gib:>22.2f}{r['seconds_per_step']:>8.2f}  "
              f"{','.join(r['trainable_dtypes'])}")
    a, b = rows["fp32"], rows["bf16"]
    print(f"bf16 / fp32: frozen weights {b['frozen_bytes'] / a['frozen_bytes']:.2f}x, {peak} "
          f"{b['peak_rss_bytes'] / a['peak_rss_bytes']:.2f}x, step time {b['seconds_per_step'] / a['seconds_per_step']:.2f}x")


if __name__ == "__main__":
    main()
