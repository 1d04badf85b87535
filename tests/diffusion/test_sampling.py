"""The samplers as pure functions (kgface/diffusion/sampling.py) on constructed models with known answers."""
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from kgface.diffusion.sampling import clean_and_noise, cfg_model, ddim_invert, ddim_sample, ddim_timesteps, noise_to

ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
# kgface's cosine schedule rescaled to zero terminal SNR: the last timestep is pure noise (a = 0 exactly)
ZERO_SNR = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         rescale_betas_zero_snr=True).alphas_cumprod


class StateUNet:
    """eps = the mean of the text states, broadcast: the conditional and unconditional branches differ by known
    constants. Records the batch sizes it was called with."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, encoder_hidden_states, added_cond_kwargs=None):
        self.batches.append(x.shape[0])
        return SimpleNamespace(sample=encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1).expand_as(x))


def test_guidance_combines_the_branches_as_uncond_plus_g_times_the_difference():
    unet, x = StateUNet(), torch.zeros(2, 4, 3, 3)
    cond = (torch.full((2, 5, 8), 2.0), None, torch.full((2, 5, 8), 0.5), None, {}, {})
    out = cfg_model(unet, 3.0)(x, torch.tensor(10), cond)
    assert torch.allclose(out, torch.full_like(x, 0.5 + 3.0 * (2.0 - 0.5)))  # 5.0; a sign slip gives -4.0 or 2.0
    assert unet.batches == [4]  # both branches in one call
    out = cfg_model(unet, 1.0)(x, torch.tensor(10), cond)
    assert torch.allclose(out, torch.full_like(x, 2.0)) and unet.batches[-1] == 2  # guidance 1: the condition alone


def test_ddim_timesteps_truncate_by_strength_and_refuse_impossible_step_counts():
    assert ddim_timesteps(1000, 10).tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert ddim_timesteps(1000, 10, strength=0.3).tolist() == [200, 100, 0]
    assert ddim_timesteps(1000, 10, strength=0.01).tolist() == [0]  # at least one step
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1000, 5000)  # would repeat timestep 0 five thousand times
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError, match="strength"):
        ddim_timesteps(1000, 10, strength=0.0)


def test_ladders_match_diffusers_ddim_with_the_schedulers_steps_offset():
    # SD 1.5 / SDXL schedulers carry steps_offset=1: diffusers' DDIM walks 981..1 at 50 leading steps (this ladder
    # walked 980..0 before 2026-12-07); trailing and linspace ignore it there as here
    from diffusers import DDIMScheduler

    for spacing in ("leading", "trailing", "linspace"):
        for offset in (0, 1):
            for steps in (10, 20, 50, 7):
                stock = DDIMScheduler(steps_offset=offset, timestep_spacing=spacing)
                stock.set_timesteps(steps)
                ours = ddim_timesteps(1000, steps, spacing=spacing, offset=offset)
                assert ours.tolist() == stock.timesteps.tolist(), (spacing, offset, steps)
    assert ddim_timesteps(1000, 50, offset=1)[[0, -1]].tolist() == [981, 1]
    assert ddim_timesteps(1000, 1000, offset=1).tolist() == list(range(999, -1, -1))  # no room: unshifted


def test_trailing_and_linspace_ladders_start_at_the_pure_noise_end():
    assert ddim_timesteps(1000, 10, spacing="trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(1000, 3, spacing="trailing").tolist() == [999, 666, 332]  # 3 steps, not 4 (float steps)
    assert ddim_timesteps(1000, 10, strength=0.3, spacing="trailing").tolist() == [299, 199, 99]
    assert ddim_timesteps(1000, 5, spacing="linspace").tolist() == [999, 749, 500, 250, 0]
    for spacing in ("leading", "trailing", "linspace"):  # every step count gives that many distinct steps
        for n in (1, 7, 333, 999, 1000):
            ts = ddim_timesteps(1000, n, spacing=spacing)
            assert len(ts) == n == len(set(ts.tolist())) and ts.min() >= 0 and ts.max() <= 999, (spacing, n)
    with pytest.raises(ValueError, match="spacing must be one of leading, trailing, linspace, got 'even'"):
        ddim_timesteps(1000, 10, spacing="even")


def test_a_v_output_implies_the_same_clean_latent_and_noise_even_at_zero_snr():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    for a in (torch.tensor(0.7), torch.tensor(1e-3), torch.tensor(0.0)):
        x = a.sqrt() * x0 + (1 - a).sqrt() * eps
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        got_x0, got_eps = clean_and_noise(v, x, a, "v_prediction")
        assert torch.allclose(got_x0, x0, atol=1e-5) and torch.allclose(got_eps, eps, atol=1e-5), a
        if a > 0:  # the noise estimate reads the same clean latent, except where it divides by sqrt(a) = 0
            assert torch.allclose(clean_and_noise(eps, x, a)[0], x0, atol=1e-3)
    assert not torch.isfinite(clean_and_noise(eps, eps, torch.tensor(0.0))[0]).all()
    with pytest.raises(ValueError, match="prediction must be one of epsilon, v_prediction, got 'sample'"):
        clean_and_noise(eps, eps, torch.tensor(0.5), "sample")


def oracle(x0):
    """The exact noise prediction for a known clean latent: x_t = sqrt(a) x0 + sqrt(1 - a) eps."""
    def fn(x, t, cond):
        a = ALPHAS[t]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    return fn


def test_ddim_with_an_exact_model_lands_on_the_clean_latent_and_inversion_is_its_inverse():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    steps = ddim_timesteps(1000, 20, strength=0.6)
    start = noise_to(x0, noise, steps[0], ALPHAS)
    assert torch.allclose(ddim_sample(oracle(x0), start, steps, ALPHAS), x0, atol=1e-4)
    up = ddim_invert(oracle(x0), x0, steps, ALPHAS)
    assert torch.allclose(ddim_sample(oracle(x0), up, steps, ALPHAS), x0, atol=1e-4)
    # a model that always predicts zero noise keeps the scaled start: DDIM's x0 estimate is x / sqrt(a)
    flat = ddim_sample(lambda x, t, c: torch.zeros_like(x), start, steps, ALPHAS)
    assert torch.allclose(flat, start / ALPHAS[steps[0]].sqrt(), atol=1e-4)


def test_inversion_under_a_noise_prediction_that_ignores_x_is_exact():
    """A model whose noise estimate is one fixed e keeps DDIM's clean estimate on the path x_t = sqrt(a) L +
    sqrt(1 - a) e: inverting L must land on exactly that x_t (the oracle above lands on x0 from any start, so it
    cannot tell a broken inversion), and sampling from it must return L."""
    g = torch.Generator().manual_seed(1)
    latent, e = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    steps = ddim_timesteps(1000, 20, strength=0.6)
    fixed = lambda x, t, c: e  # noqa: E731
    up = ddim_invert(fixed, latent, steps, ALPHAS)
    assert torch.allclose(up, noise_to(latent, e, steps[0], ALPHAS), atol=1e-5)
    assert torch.allclose(ddim_sample(fixed, up, steps, ALPHAS), latent, atol=1e-4)
    assert not torch.allclose(ddim_sample(fixed, torch.zeros_like(up), steps, ALPHAS), latent, atol=1e-1)


def test_eta_steps_match_diffusers_ddim_with_the_same_step_noise():
    """The eta > 0 step against diffusers' DDIMScheduler.step (variance_noise given): an inexact, nonlinear model,
    so every term of the update counts."""
    from diffusers import DDIMScheduler

    stock = DDIMScheduler(set_alpha_to_one=True, clip_sample=False, timestep_spacing="leading")
    stock.set_timesteps(20)
    steps = ddim_timesteps(1000, 20)
    assert torch.equal(steps, stock.timesteps)
    g = torch.Generator().manual_seed(2)
    start = torch.randn(2, 4, 3, 3, generator=g)
    zs = [torch.randn(start.shape, generator=g) for _ in steps]
    model = lambda x, t, c: 0.3 * x + 0.1 * torch.sin(3 * x)  # noqa: E731
    ours = ddim_sample(model, start, steps, stock.alphas_cumprod, eta=0.5, step_noise=lambda i: zs[i])
    x = start
    for i, t in enumerate(stock.timesteps):
        x = stock.step(model(x, t, None), t, x, eta=0.5, variance_noise=zs[i]).prev_sample
    assert torch.allclose(ours, x, atol=1e-4), float((ours - x).abs().max())
    assert not torch.allclose(ours, ddim_sample(model, start, steps, stock.alphas_cumprod), atol=1e-2)


def v_oracle(x0, alphas):
    """The exact velocity for a known clean latent: v = sqrt(a) eps - sqrt(1 - a) x0, eps read off x_t."""
    def fn(x, t, cond):
        a = alphas[t]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    return fn


def test_ddim_with_an_exact_v_model_lands_on_the_clean_latent_from_pure_noise():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    steps = ddim_timesteps(1000, 20, spacing="trailing")
    assert steps[0] == 999 and ZERO_SNR[999] == 0  # the start is the noise itself: nothing of x0 is in it
    assert torch.allclose(noise_to(x0, noise, steps[0], ZERO_SNR), noise)
    assert torch.allclose(ddim_sample(v_oracle(x0, ZERO_SNR), noise, steps, ZERO_SNR, prediction="v_prediction"),
                          x0, atol=1e-4)


def test_one_model_written_as_noise_or_as_v_samples_and_inverts_the_same():
    """A model whose output depends on x (unlike an oracle, which lands on its x0 from any start), once as epsilon and
    once as the velocity it implies at each timestep's level: DDIM down and inversion up must agree."""
    def as_eps(x, t, cond):
        return 0.3 * x + 0.001 * t

    def as_v(x, t, cond):
        a, eps = ALPHAS[t], as_eps(x, t, cond)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    for ts in (ddim_timesteps(1000, 20, strength=0.6), ddim_timesteps(1000, 50, strength=0.5, spacing="trailing")):
        down = ddim_sample(as_eps, x, ts, ALPHAS)
        assert torch.allclose(ddim_sample(as_v, x, ts, ALPHAS, prediction="v_prediction"), down, rtol=1e-3, atol=1e-3)
        up = ddim_invert(as_eps, x, ts, ALPHAS)
        assert torch.allclose(ddim_invert(as_v, x, ts, ALPHAS, prediction="v_prediction"), up, rtol=1e-3, atol=1e-3)
        assert not torch.allclose(up, x, atol=0.1)  # the inversion moved: the agreement is not two no-ops


def test_a_half_precision_base_runs_in_autocast_beside_fp32_adapter_weights_and_agrees_with_fp32(sd15_folder):
    """model.dtype=bf16: the frozen UNet and text encoder load in bf16, LoRA and adapter weights stay fp32 (AdamW's
    updates would round away in bf16), the VAE stays fp32; guidance runs the mixed UNet in autocast and its eps
    matches the fp32 model's to bf16 precision."""
    from kgface.diffusion.adapter import adapter_parameters
    from kgface.diffusion.backbones import build_backbone
    from kgface.diffusion.sampling import half_weights_dtype

    eps, weights = {}, {}
    for dtype in ("fp32", "bf16"):
        b = build_backbone({"name": "sd15", "pretrained": str(sd15_folder), "dtype": dtype, "lora_rank": 4,
                            "resolution": 32}, num_tokens=4)
        with torch.no_grad():  # a trained-looking adapter, the same in both, so the tokens matter
            for i, p in enumerate(adapter_parameters(b.unet).values()):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.2)
        weights[dtype] = {p.dtype for n, p in b.unet.named_parameters() if "lora_" not in n and "_ip" not in n}
        assert {p.dtype for p in b.trainable} == {torch.float32} and len(b.trainable) > len(adapter_parameters(b.unet))
        assert next(b.vae.parameters()).dtype == torch.float32
        assert next(b.text_encoder.parameters()).dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
        assert half_weights_dtype(b.unet) == (torch.bfloat16 if dtype == "bf16" else None)
        states, added = b.text_states(["a face with acne", "a face"])
        tokens = torch.randn(2, 4, b.cross_attention_dim, generator=torch.Generator().manual_seed(7))
        x = torch.randn(2, *b.latent_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            eps[dtype] = cfg_model(b.unet, 3.0)(x, torch.tensor(500), (states, tokens, states, 0 * tokens, added, added))
    assert weights == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    assert eps["bf16"].dtype == torch.float32 and torch.isfinite(eps["bf16"]).all()
    rel = float((eps["bf16"] - eps["fp32"]).norm() / eps["fp32"].norm())
    assert 0 < rel < 0.05, rel  # bf16 arithmetic (~1% here), not another model


def test_eta_adds_fresh_noise_from_the_callers_stream_and_eta_zero_is_ddim():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    steps = ddim_timesteps(1000, 10)
    start = noise_to(x0, noise, steps[0], ALPHAS)
    model = lambda x, t, c: 0.3 * x  # noqa: E731  (an inexact model: its x0 estimate follows x)
    plain = ddim_sample(model, start, steps, ALPHAS)
    zeros = ddim_sample(model, start, steps, ALPHAS, eta=1.0, step_noise=lambda i: torch.zeros_like(start))
    assert torch.equal(ddim_sample(model, start, steps, ALPHAS, eta=0.0), plain)
    assert not torch.allclose(zeros, plain, atol=1e-3)  # eta also shrinks the deterministic share of eps

    def stream(seed):
        gen = torch.Generator().manual_seed(seed)
        return lambda i: torch.randn(start.shape, generator=gen)

    a = ddim_sample(model, start, steps, ALPHAS, eta=1.0, step_noise=stream(1))
    assert torch.equal(a, ddim_sample(model, start, steps, ALPHAS, eta=1.0, step_noise=stream(1)))
    assert not torch.allclose(a, ddim_sample(model, start, steps, ALPHAS, eta=1.0, step_noise=stream(2)), atol=1e-3)
    # an exact model still lands on its clean latent: the added noise is what the next step's estimate removes
    assert torch.allclose(ddim_sample(oracle(x0), start, steps, ALPHAS, eta=1.0, step_noise=stream(3)), x0, atol=1e-4)
    for bad in ({"eta": -0.5}, {"eta": 0.5}):  # negative; positive without a noise stream
        with pytest.raises(ValueError, match="eta"):
            ddim_sample(model, start, steps, ALPHAS, **bad)


def test_ladders_that_sample_badly_are_named():
    """400 leading steps of 1,000 start at t = 798 (a third of the latent is image) from pure noise; an epsilon model
    asked to start at t = 999 divides by sqrt(alpha_bar) ~ 0. The default (20 leading) and a zero-terminal-SNR v
    model starting at the top are fine."""
    from kgface.diffusion.generator import ladder_note

    eps = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    assert ladder_note(eps, 20, "leading") is None and ladder_note(eps, 30, "leading") is None
    assert ladder_note(eps, 400, "leading").startswith("400 DDIM steps spaced 'leading' start at t=798")
    assert "steps that divide 1000" in ladder_note(eps, 400, "leading")
    assert "divide" not in ladder_note(eps, 10, "leading")  # 10 divides 1000: the top is merely coarse
    assert "an epsilon model's clean estimate divides by it" in ladder_note(eps, 20, "trailing")
    v = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                      rescale_betas_zero_snr=True)
    assert ladder_note(v, 20, "trailing") is None
