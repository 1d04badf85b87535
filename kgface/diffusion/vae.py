"""The tiny stack's autoencoder: trained once per dataset on its train split, cached, and measured.

A latent-diffusion model can draw no finer detail than its VAE keeps, so `vae_ceiling` (the evaluator's scores on
VAE round-tripped real images) bounds every generator score. The latent scaling factor is set from the data
(1 / std of the training latents), as Stable Diffusion's 0.18215 was.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cache import Cache, atomic_folder, stable_hash
from ..errors import UserError
from .models import build_tiny_stack, tiny_config

log = logging.getLogger(__name__)

VAE_DEFAULTS = {"steps": 600, "batch_size": 32, "lr": 2e-3, "kl_weight": 1e-6, "seed": 0, "logvar_init": 0.0,
                "adv_weight": 0.0, "adv_start": 0, "disc_channels": 32}
VAE_KEYS = ("image_size", "latent_channels", "vae_block_out_channels", "vae_layers_per_block", "norm_num_groups")
# the least value of each key (logvar_init and seed may be negative)
VAE_MINIMA = {"steps": 1, "batch_size": 1, "lr": 0, "kl_weight": 0, "adv_weight": 0, "adv_start": 0, "disc_channels": 8}
# left out of the cache key at their default value (VAEs cached before they existed keep their keys)
OPTIONAL = ("logvar_init", "adv_weight", "adv_start", "disc_channels")
# bump when the training recipe changes (the loss, its schedule, the initialisation, the latent scaling) or a default
# of VAE_DEFAULTS does (an OPTIONAL key at its default is not in the key): cached VAEs then retrain. Version 1 is
# left out of the key, so the VAEs cached before it existed keep theirs
VAE_VERSION = 1
# cached_vae keeps a resumable state this often while it trains (a run killed mid-VAE loses at most this many steps);
# not a model.vae_train key, so it does not enter (and re-key) the cache
VAE_CHECKPOINT_EVERY = 500


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN (hinge loss): one real/fake logit per ~34-px patch. It judges texture and colour locally,
    which the pixel losses average away (the small lesions a round trip loses). Trained with the VAE, never saved."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = int(channels)
        act = torch.nn.LeakyReLU(0.2)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, c, 4, 2, 1), act,
            torch.nn.Conv2d(c, 2 * c, 4, 2, 1), torch.nn.GroupNorm(8, 2 * c), act,
            torch.nn.Conv2d(2 * c, 4 * c, 4, 1, 1), torch.nn.GroupNorm(8, 4 * c), act,
            torch.nn.Conv2d(4 * c, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_vae_train(t: dict) -> dict:
    """model.vae_train with every value checked (one line naming the key) and read as a number, before anything
    trains; returns the numbers (ints for counts)."""
    unknown = sorted(set(t) - set(VAE_DEFAULTS))
    if unknown:
        raise UserError(f"model.vae_train: unknown key(s) {unknown}; known: {sorted(VAE_DEFAULTS)}")
    out = {}
    for key, default in VAE_DEFAULTS.items():
        value = t[key]
        try:
            if isinstance(value, bool) or value is None:
                raise TypeError
            number = value if isinstance(value, int) else float(value)  # an int stays exact (a large seed)
        except (TypeError, ValueError):
            number = None
        kind = "whole number" if isinstance(default, int) else "number"
        if number is None or not math.isfinite(number) or (isinstance(default, int) and number != int(number)):
            raise UserError(f"model.vae_train.{key}={value!r}: must be a finite {kind}")
        least = VAE_MINIMA.get(key)
        if least is not None and number < least:
            raise UserError(f"model.vae_train.{key}={value!r}: must be a {kind} >= {least}")
        out[key] = int(number) if isinstance(default, int) else float(number)
    if not -2 ** 63 <= out["seed"] < 2 ** 63:  # torch's generators take 64-bit seeds
        raise UserError(f"model.vae_train.seed={t['seed']}: must fit in 64 bits (|seed| < 2**63)")
    if out["disc_channels"] % 4:  # the discriminator's GroupNorm(8, 2c)
        raise UserError(f"model.vae_train.disc_channels={t['disc_channels']}: must be a multiple of 4")
    return out


def check_discriminator_size(size: tuple, adv_weight: float) -> None:
    if min(size) < 12:  # four 4x4 convolutions, two of stride 2, leave nothing to score below 12 px
        raise UserError(f"model.vae_train.adv_weight={adv_weight}: the patch discriminator needs images of at least "
                        f"12 px (these are {size}); set model.vae_train.adv_weight=0")


def adversarial_active(t: dict) -> bool:
    """Whether the discriminator ever acts (adv_start >= steps trains exactly as the plain loss)."""
    return t["adv_weight"] > 0 and t["adv_start"] < t["steps"]


def load_split_images(manifest: Path, split: str | None = "train", limit: int | None = None,
                      exclude: set[str] | frozenset = frozenset(), required: bool = True) -> torch.Tensor | None:
    """uint8 [N, 3, H, W] of a manifest's images (one split, or all), without the diseases in `exclude`; none: a
    one-line error, or None where not `required`."""
    import pandas as pd

    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if split is not None:
        df = df[df["split"] == split]
    if exclude:
        df = df[~df["disease"].isin(set(exclude))]
    paths = [manifest.parent / p for p in df["path"]][:limit]
    if not paths and not required:
        return None
    if not paths:  # np.stack of nothing: "need at least one array to stack"
        where = " outside the held-out diseases (data.heldout)" if exclude else ""
        raise UserError(f"{manifest}: no {split or 'listed'} images{where}; the VAE needs {split or 'some'} rows: "
                        "check the manifest's split column and the data settings")
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_model(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class _Restart(Exception):
    """A saved state failed to load part-way: the model and optimizer must be built afresh."""


def _save_state(folder: Path, step: int, fingerprint: str, vae, opt, sched, gen, disc, d_opt) -> None:
    from safetensors.torch import save_file

    with atomic_folder(folder) as tmp:  # killed mid-save: the previous state stays whole
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp / "vae.safetensors"))
        save_file({"generator": gen.get_state()}, str(tmp / "rng.safetensors"))
        if disc is not None:
            save_file({k: v.contiguous() for k, v in disc.state_dict().items()}, str(tmp / "disc.safetensors"))
        schedule = sched.state_dict()
        schedule.pop("anneal_func", None)  # a bound method in torch < 2.4, which weights_only loading refuses
        torch.save({"opt": opt.state_dict(), "sched": schedule,
                    "d_opt": d_opt.state_dict() if d_opt is not None else None}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}), encoding="utf-8")


def _load_state(folder: Path, fingerprint: str, vae, opt, sched, gen, disc, d_opt) -> int:
    """The step a saved state resumes from, its weights, optimizer and random state loaded; 0 when there is none,
    when it was saved by another VAE config (then it is ignored, not mixed in), or when it does not load (a damaged
    folder, another library version: then it is removed with a warning and training starts afresh)."""
    from safetensors.torch import load_file

    state = folder / "state.json"
    if not state.is_file():
        return 0
    try:
        meta = json.loads(state.read_text(encoding="utf-8"))
        if meta.get("fingerprint") != fingerprint:
            return 0
        vae.load_state_dict(load_file(str(folder / "vae.safetensors")))
        gen.set_state(load_file(str(folder / "rng.safetensors"))["generator"])
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        if disc is not None:
            disc.load_state_dict(load_file(str(folder / "disc.safetensors")))
            d_opt.load_state_dict(saved["d_opt"])
        return int(meta["step"])
    except Exception as exc:  # noqa: BLE001 - any failure means: this state cannot be resumed
        log.warning("%s: the VAE's saved training state does not load (%s); removed, training from step 0", folder,
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        shutil.rmtree(folder, ignore_errors=True)
        raise _Restart from None


def train_vae(images: torch.Tensor, model_cfg: dict | None = None, train_cfg: dict | None = None,
              progress: bool = True, every: int = 0, on_checkpoint=None, state_dir: Path | None = None,
              state_every: int = 0, fingerprint: str | None = None):
    """Train the tiny AutoencoderKL (MSE + L1 + a small KL, and with adv_weight > 0 a PatchGAN hinge loss from step
    adv_start) on uint8 images; returns it in eval mode.
    on_checkpoint(step, vae) is called (vae in eval mode) every `every` steps (bench/vae_ceiling.py --every).
    state_dir / state_every: the training state (weights, optimizer, schedule, random generator) is saved there
    every `state_every` steps, and a run started with a state saved by the same config and images resumes from it
    and ends with exactly the weights of an uninterrupted run (tested). `fingerprint` names what the state must
    match (cached_vae: the cache key); by default a hash of the configs and the images."""
    from tqdm import tqdm

    t = check_vae_train({**VAE_DEFAULTS, **(train_cfg or {})})
    torch.manual_seed(int(t["seed"]))
    vae, _ = build_tiny_stack(model_cfg)
    if float(t["logvar_init"]):
        # the posterior starts near-deterministic: with logvar 0 every latent carries noise of std 1, and with a KL
        # weight of 1e-6 nothing pushes it down but slow reconstruction gradients, so a short run ends with
        # posterior std ~0.2 against latents of std ~1 and the decoder learns to blur (lesions, eye colour lost)
        with torch.no_grad():
            half = vae.quant_conv.out_channels // 2
            vae.quant_conv.weight[half:].zero_()
            vae.quant_conv.bias[half:].fill_(float(t["logvar_init"]))
    opt = torch.optim.AdamW(vae.parameters(), lr=float(t["lr"]), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(t["lr"]), total_steps=int(t["steps"]),
                                                pct_start=0.1)
    adv_weight, adv_start = float(t["adv_weight"]), int(t["adv_start"])
    disc = d_opt = None
    if adversarial_active(t):  # built after the VAE, so the VAE's initial weights do not depend on the option
        check_discriminator_size(tuple(images.shape[-2:]), adv_weight)
        # its own seed: drawn after build_tiny_stack's UNet, its weights (so the VAE) followed the unet_* keys,
        # which the VAE's cache key leaves out
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(t["seed"]) + 1)
            disc = PatchDiscriminator(int(t["disc_channels"])).train()
        d_opt = torch.optim.Adam(disc.parameters(), lr=float(t["lr"]), betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(int(t["seed"]))
    start = 0
    if state_dir is not None:
        fingerprint = fingerprint or stable_hash({
            "model": tiny_config(model_cfg), "train": t, "images": list(images.shape),
            "pixels": hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()})
        try:
            start = _load_state(Path(state_dir), fingerprint, vae, opt, sched, gen, disc, d_opt)
        except _Restart:  # the damaged state is gone: build everything afresh, from step 0
            return train_vae(images, model_cfg, train_cfg, progress, every, on_checkpoint, state_dir, state_every,
                             fingerprint)
    bar = tqdm(range(start, int(t["steps"])), desc="training VAE", disable=not progress, initial=start,
               total=int(t["steps"]))
    vae.train()
    for step in bar:
        idx = torch.randint(0, len(images), (int(t["batch_size"]),), generator=gen)
        x = to_model(images[idx])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        rec_loss = torch.nn.functional.mse_loss(rec, x) + 0.5 * (rec - x).abs().mean()
        loss = rec_loss + float(t["kl_weight"]) * post.kl().mean()
        adversarial = disc is not None and step >= adv_start
        if adversarial:
            disc.requires_grad_(False)
            g_loss = -disc(rec).mean()
            # the adaptive weight of taming-transformers: the adversarial gradient at the decoder's last layer is
            # scaled to the reconstruction gradient's size, so adv_weight means the same at any loss scale
            last = vae.decoder.conv_out.weight
            g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
            g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
            scale = (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(max=1e4).detach()
            loss = loss + adv_weight * scale * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if adversarial:
            disc.requires_grad_(True)
            d_loss = torch.relu(1 - disc(x)).mean() + torch.relu(1 + disc(rec.detach())).mean()
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", d_loss=f"{d_loss.item():.3f}")
        else:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if state_dir is not None and state_every > 0 and (step + 1) % state_every == 0 and step + 1 < int(t["steps"]):
            try:
                _save_state(Path(state_dir), step + 1, fingerprint, vae, opt, sched, gen, disc, d_opt)
            except Exception as exc:  # noqa: BLE001 - a full disk (safetensors and torch.save raise their own types),
                # or another run saving the same state this instant: train on
                log.warning("%s: the VAE's training state was not saved at step %d (%s)", state_dir, step + 1, exc)
        if on_checkpoint is not None and every > 0 and (step + 1) % every == 0:
            vae.eval()
            on_checkpoint(step + 1, vae)
            vae.train()
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(to_model(images[i:i + 64])).latent_dist.mean for i in range(0, len(images), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std().clamp_min(1e-6)))
    return vae


@torch.no_grad()
def roundtrip(vae, images: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """uint8 images (on the CPU) -> encode (posterior mean) -> decode -> uint8 on the CPU: what the generator can at
    best reproduce. Run where the VAE lives, in its dtype (the trainer left it on the GPU: CPU images were a device
    error after training), in batches of at most 64 images and ENCODE_PIXELS pixels (64 SD faces at 512 px would need
    ~9 GB for one layer)."""
    from .training_data import ENCODE_PIXELS

    weights = next(vae.parameters())
    if batch is None:
        batch = min(64, max(1, ENCODE_PIXELS // int(images.shape[-2] * images.shape[-1])))
    out = []
    for i in range(0, len(images), batch):
        z = vae.encode(to_model(images[i:i + batch]).to(weights.device, weights.dtype)).latent_dist.mean
        out.append(to_uint8(vae.decode(z).sample.float().cpu()))
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def manifest_digest(manifest: Path) -> str:
    return hashlib.sha256(Path(manifest).read_bytes()).hexdigest()[:16]


def cached_vae(manifest: Path, model_cfg: dict | None, train_cfg: dict | None, cache: Cache, progress: bool = True,
               every: int = 0, on_checkpoint=None, heldout: set[str] | frozenset = frozenset()):
    """The dataset's VAE from the cache, trained on its train split on first use (diffusers folder layout).
    every / on_checkpoint: passed to train_vae when it trains (bench/vae_ceiling.py --every reads the curve of the
    VAE it caches; the readings do not change the weights, tested)."""
    from diffusers import AutoencoderKL

    train_spec = {**VAE_DEFAULTS, **(train_cfg or {})}
    numbers = check_vae_train(train_spec)
    if adversarial_active(numbers):  # as numbers: 2000 and 2000.0 train the same VAE
        train_spec.update({k: numbers[k] for k in ("adv_weight", "adv_start", "disc_channels")})
        train_spec["disc_seed"] = "own"  # since 2026-12-07 (its weights had followed the UNet's): not the old ones
    else:  # options that cannot change the VAE must not retrain it
        train_spec.update({k: VAE_DEFAULTS[k] for k in ("adv_weight", "adv_start", "disc_channels")})
    for key in OPTIONAL:
        if float(train_spec[key]) == VAE_DEFAULTS[key]:
            train_spec.pop(key)
    # only what shapes the VAE: a UNet override must not retrain (and re-key) the cached VAE
    model = {k: v for k, v in tiny_config(model_cfg).items() if k in VAE_KEYS}
    from ..data.fingerprint import images_digest

    # the manifest names the images; their bytes say what they are (a re-render keeps the manifest identical)
    spec = {"manifest": manifest_digest(manifest), "images": images_digest(manifest), "model": model,
            "train": train_spec}
    if VAE_VERSION != 1:
        spec["version"] = VAE_VERSION
    if heldout:  # the VAE is the generator's decoder: it learns from the generator's diseases only
        spec["heldout"] = sorted(heldout)
    entry = cache.entry("vae", spec)
    if not entry.exists():
        train = load_split_images(Path(manifest), "train", exclude=heldout)
        partial = entry.partial  # a killed run's training state, resumed next time
        vae = train_vae(train, model_cfg, train_cfg, progress=progress, every=every, on_checkpoint=on_checkpoint,
                        state_dir=partial, state_every=VAE_CHECKPOINT_EVERY, fingerprint=entry.key)
        # a manifest without a test split (data.test_fraction=0) trains a VAE all the same, its PSNR unmeasured
        test = load_split_images(Path(manifest), "test", limit=256, required=False)
        with entry.build() as tmp:
            vae.save_pretrained(tmp / "vae", safe_serialization=True)
            measured = None if test is None else psnr(roundtrip(vae, test), test)
            (tmp / "vae_metrics.json").write_text(json.dumps({"test_psnr_db": measured,
                                                              "train_images": len(train)}), encoding="utf-8")
    shutil.rmtree(entry.partial, ignore_errors=True)  # also one a rival run left
    vae = AutoencoderKL.from_pretrained(entry.path / "vae", use_safetensors=True, local_files_only=True)
    return vae.eval(), json.loads((entry.path / "vae_metrics.json").read_text(encoding="utf-8")), entry.path
