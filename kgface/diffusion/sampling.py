"""Samplers as pure functions (k-diffusion style): a model function, a start, a schedule -> latents.

`model_fn(x, t, cond) -> output` wraps the UNet (and classifier-free guidance); the output is the noise (epsilon) or
the velocity v = sqrt(a) eps - sqrt(1 - a) x0 (`prediction`), the schedule is the noise scheduler's
`alphas_cumprod`. DDIM (eta = 0) is deterministic given the start noise, so sharing the noise across conditions
makes a progression strip change only where the condition does, and starting from a noised real latent is
SDEdit / img2img (`strength` = how far up the noise ladder the image is pushed before denoising); `ddim_invert` runs
the same ladder upwards from a clean latent (the identity-keeping start of `transform ... inversion=true`). With
eta > 0 each step adds fresh noise (Song et al.'s eta; 1 = ancestral, DDPM-like), taken from `step_noise(i)` so that
the caller decides where it comes from (the Generator: each request's own seeded stream).
"""
from __future__ import annotations

from typing import Callable

import torch


PREDICTIONS = ("epsilon", "v_prediction")
SPACINGS = ("leading", "trailing", "linspace")  # diffusers' timestep_spacing names


def ddim_timesteps(num_train_timesteps: int, steps: int, strength: float = 1.0, spacing: str = "leading",
                   offset: int = 0) -> torch.Tensor:
    """Descending timesteps of a `steps`-step DDIM schedule, truncated to the last `strength` share.

    spacing (as diffusers' `timestep_spacing`): "leading" steps of n // steps from 0 (20 of 1000: 950, 900, ..., 0:
    the ladder never starts at the pure-noise end); "trailing" the same steps ending at n - 1 (999, 949, ..., 49:
    starts from pure noise, which a zero-terminal-SNR v-prediction model is trained for; Lin et al. 2024);
    "linspace" evenly from n - 1 to 0. `offset` (the scheduler's `steps_offset`, 1 for SD 1.5 / SDXL) shifts the
    leading ladder up, as diffusers' DDIM does (50 steps of SD 1.5: 981, ..., 1); the others ignore it, as there."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if not 1 <= steps <= num_train_timesteps:  # more steps than the ladder has would repeat timestep 0
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    if spacing == "leading":
        ts = (torch.arange(steps) * (num_train_timesteps // steps)).flip(0)  # e.g. 980, 960, ..., 0
        if int(ts[0]) + int(offset) < num_train_timesteps:  # (1,000 steps of 1,000 have no room for it)
            ts = ts + int(offset)
    elif spacing == "trailing":
        ts = (num_train_timesteps - torch.arange(steps, dtype=torch.float64) * num_train_timesteps / steps
              ).round().long() - 1
    elif spacing == "linspace":
        ts = torch.linspace(0, num_train_timesteps - 1, steps, dtype=torch.float64).round().long().flip(0)
    else:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    return ts[steps - strength_steps(steps, strength):]


def strength_steps(steps: int, strength: float) -> int:
    """How many of a `steps`-step ladder's last steps an edit at `strength` walks: rounded, at least one
    (diffusers' img2img floors the product, and may walk none)."""
    return max(1, int(round(steps * strength)))


def clean_and_noise(output: torch.Tensor, x: torch.Tensor, a: torch.Tensor, prediction: str = "epsilon"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a model output at x, whose signal level is alphas_cumprod = a. Epsilon divides by
    sqrt(a), so its clean estimate blows up where a -> 0 (the top of the ladder); v stays finite there (x0 = -v)."""
    x, output = x.float(), output.float()
    if prediction == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * output, (1 - a).sqrt() * x + a.sqrt() * output
    if prediction != "epsilon":
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    return (x - (1 - a).sqrt() * output) / a.sqrt(), output


@torch.no_grad()
def ddim_sample(model_fn: Callable, x: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                cond=None, callback: Callable | None = None, prediction: str = "epsilon", eta: float = 0.0,
                step_noise: Callable[[int], torch.Tensor] | None = None) -> torch.Tensor:
    """Denoise `x` (noise at timesteps[0]) down the given descending timesteps; returns the clean latent.
    eta > 0: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z with s = eta sqrt((1 - a_prev) / (1 - a_t))
    sqrt(1 - a_t / a_prev) and z = step_noise(i) (shaped like x; needed then)."""
    if eta < 0 or (eta > 0 and step_noise is None):
        raise ValueError(f"eta={eta}: eta is >= 0, and eta > 0 needs step_noise")
    alphas_cumprod = alphas_cumprod.to(x.device, torch.float32)
    for i, t in enumerate(timesteps):
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, device=x.device)
        x0, eps = clean_and_noise(model_fn(x, t, cond), x, a_t, prediction)
        if eta > 0:
            s = eta * ((1 - a_prev) / (1 - a_t).clamp_min(1e-12)).sqrt() * (1 - a_t / a_prev).clamp_min(0).sqrt()
            z = step_noise(i).to(x.device, torch.float32)
            x = (a_prev.sqrt() * x0 + (1 - a_prev - s ** 2).clamp_min(0).sqrt() * eps + s * z).to(x.dtype)
        else:
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
    """One UNet call -> its fp32 output (eps, or v for a v-prediction model). A UNet with half-precision weights
    runs under autocast, as it trained (fp32 latents, tokens and LoRA / adapter weights meet its bf16 / fp16 layers).
    half: `half_weights_dtype(unet)` when the caller computed it once (a sampler's model function); otherwise the
    parameters are scanned here."""
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
                cond=None, prediction: str = "epsilon") -> torch.Tensor:
    """Deterministic DDIM inversion: clean latents up the sampler's descending `timesteps` (walked backwards) to the
    noisy latent at timesteps[0] that `ddim_sample` with the same model and condition maps back to (nearly) them.
    Each step reuses the noise predicted at the target timestep from the current latent (the usual approximation
    eps(x_t) ~ eps(x_{t-1}); exact in the limit of small steps). A v output is turned into that noise estimate at
    the level the model was asked about, a[t] (as if x were x_t: the same approximation), so a model inverts the same
    whether it is written as epsilon or as v."""
    a = alphas_cumprod.to(latents.device, torch.float32)
    x, a_prev = latents, torch.tensor(1.0, device=latents.device)
    for t in timesteps.flip(0):
        eps = clean_and_noise(model_fn(x, t, cond), x, a[t], prediction)[1]
        x0 = (x.float() - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        x = (a[t].sqrt() * x0 + (1 - a[t]).sqrt() * eps).to(latents.dtype)
        a_prev = a[t]
    return x
