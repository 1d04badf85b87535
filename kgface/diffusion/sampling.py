"""Samplers as pure functions (k-diffusion style): a model function, a start, a schedule -> latents.

`model_fn(x, t, cond) -> eps` wraps the UNet (and classifier-free guidance); the schedule is the noise scheduler's
`alphas_cumprod`. DDIM (eta = 0) is deterministic given the start noise, so sharing the noise across conditions
makes a progression strip change only where the condition does, and starting from a noised real latent is
SDEdit / img2img (`strength` = how far up the noise ladder the image is pushed before denoising); `ddim_invert` runs
the same ladder upwards from a clean latent (the identity-keeping start of `transform ... inversion=true`).
"""
from __future__ import annotations

from typing import Callable

import torch


def ddim_timesteps(num_train_timesteps: int, steps: int, strength: float = 1.0) -> torch.Tensor:
    """Descending timesteps of a `steps`-step DDIM schedule, truncated to the last `strength` share."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if not 1 <= steps <= num_train_timesteps:  # more steps than the ladder has would repeat timestep 0
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    ratio = num_train_timesteps // steps
    ts = (torch.arange(steps) * ratio).flip(0)  # e.g. 980, 960, ..., 0
    keep = max(1, int(round(steps * strength)))
    return ts[steps - keep:]


@torch.no_grad()
def ddim_sample(model_fn: Callable, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                cond=None, callback: Callable | None = None) -> torch.Tensor:
    """Denoise `x` (noise at timesteps[0]) down the given descending timesteps; returns the clean latent."""
    alphas_cumprod = alphas_cumprod.to(x.device, torch.float32)
    for i, t in enumerate(timesteps):
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, device=x.device)
        eps = model_fn(x, t, cond).to(torch.float32)
        x0 = (x.float() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).to(x.dtype)
        if callback is not None:
            callback(i, t, x)
    return x


def noise_to(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor
             ) -> torch.Tensor:
    """q(x_t | x_0): push clean latents up to timestep t with the given noise (the img2img start)."""
    a = alphas_cumprod.to(latents.device, torch.float32)[t]
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)


def half_weights_dtype(module) -> torch.dtype | None:
    """bf16 / fp16 when the module holds half-precision weights (a frozen base loaded with model.dtype=bf16|fp16,
    its LoRA and adapter weights fp32), None when all are fp32 (or it is a plain function of x, t, states)."""
    params = getattr(module, "parameters", None)
    dtypes = {p.dtype for p in params()} if callable(params) else set()
    return next((d for d in (torch.bfloat16, torch.float16) if d in dtypes), None)


_SCAN = object()


def unet_eps(unet, x: torch.Tensor, t, states: torch.Tensor, added_cond_kwargs=None, half=_SCAN) -> torch.Tensor:
    """One UNet call -> fp32 eps. A UNet with half-precision weights runs under autocast, as it trained (fp32
    latents, tokens and LoRA / adapter weights meet its bf16 / fp16 layers). half: `half_weights_dtype(unet)` when
    the caller computed it once (a sampler's model function); otherwise the parameters are scanned here."""
    import contextlib

    if half is _SCAN:
        half = half_weights_dtype(unet)
    ctx = torch.autocast(x.device.type, dtype=half) if half is not None else contextlib.nullcontext()
    with ctx:
        return unet(x, t, encoder_hidden_states=states, added_cond_kwargs=added_cond_kwargs).sample.float()


def cfg_model(unet, guidance: float) -> Callable:
    """A model function with classifier-free guidance over the UNet + KG adapter (each call through `unet_eps`).

    cond = (states, tokens, null_states, null_tokens, added, null_added): text states, KG tokens and extra UNet
    inputs (SDXL's text_embeds / time_ids) of the condition and of the unconditional branch (`tokens` None = no KG
    branch). guidance 1 = no guidance (one UNet call)."""
    from .adapter import kg_added_cond_kwargs

    half = half_weights_dtype(unet)  # once per model function, not per step

    def call(x, t, states, kw):
        return unet_eps(unet, x, t, states, kw, half=half)

    def fn(x, t, cond):
        states, tokens, null_states, null_tokens, added, null_added = cond
        if guidance == 1.0:
            kw = kg_added_cond_kwargs(tokens, added) if tokens is not None else (added or None)
            return call(x, t, states, kw)
        xx = torch.cat([x, x])
        ss = torch.cat([null_states, states])
        extra = {k: torch.cat([null_added[k], v]) for k, v in (added or {}).items()}
        kw = kg_added_cond_kwargs(torch.cat([null_tokens, tokens]), extra) if tokens is not None else (extra or None)
        uncond, condi = call(xx, t, ss, kw).chunk(2)
        return uncond + guidance * (condi - uncond)

    return fn


@torch.no_grad()
def ddim_invert(model_fn, latents: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                cond=None) -> torch.Tensor:
    """Deterministic DDIM inversion: clean latents up the sampler's descending `timesteps` (walked backwards) to the
    noisy latent at timesteps[0] that `ddim_sample` with the same model and condition maps back to (nearly) them.
    Each step reuses the noise predicted at the target timestep from the current latent (the usual approximation
    eps(x_t) ~ eps(x_{t-1}); exact in the limit of small steps)."""
    a = alphas_cumprod.to(latents.device, torch.float32)
    x, a_prev = latents, torch.tensor(1.0, device=latents.device)
    for t in timesteps.flip(0):
        eps = model_fn(x, t, cond).to(torch.float32)
        x0 = (x.float() - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        x = (a[t].sqrt() * x0 + (1 - a[t]).sqrt() * eps).to(latents.dtype)
        a_prev = a[t]
    return x
