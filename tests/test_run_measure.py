"""run_measure's conditioning controls on a real micro run: the swap and scale 0 must really draw with other tokens
and without the adapter, and give the adapter its scale back."""
import hashlib

import pandas as pd
import pytest
import torch


class PixelDigest:
    """An instrument that tells every distinct image apart (its label is a digest of the pixels), so a control's
    'changed' share reads exactly whether the control drew something else."""

    def score(self, images):
        return pd.DataFrame({"pred_disease": [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images]})


@pytest.fixture(scope="module")
def micro_generator(evaluated_run):
    from kgface.diffusion.generator import Generator
    from kgface.diffusion.run_loading import load_run

    backbone, conditioner, profiles, cfg = load_run(evaluated_run)
    return Generator(backbone, conditioner, guidance=3.0, steps=2), profiles, cfg


def test_controls_draw_with_swapped_tokens_and_with_the_adapter_off(micro_generator):
    from kgface.diffusion.adapter import adapter_parameters, get_adapter_scale
    from kgface.run_measure import conditioning_controls

    gen, profiles, cfg = micro_generator
    params = adapter_parameters(gen.backbone.unet)
    saved = {k: p.detach().clone() for k, p in params.items()}
    scale = get_adapter_scale(gen.backbone.unet)
    try:
        with torch.no_grad():  # the micro run barely moved its zero-initialised projections: make the tokens count
            for i, p in enumerate(params.values()):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.5)
        moved = conditioning_controls(cfg, gen, profiles, PixelDigest(), set(), gen.conditioner.mode)
        assert moved["n"] == 3 * int(cfg.samples.control_seeds)  # every sick profile x control seeds
        assert moved["token_swap_changed"] == 1.0 and moved["scale0_changed"] == 1.0
        assert get_adapter_scale(gen.backbone.unet) == scale  # put back after the scale-0 draws
        from kgface.diffusion.adapter import set_adapter_scale

        set_adapter_scale(gen.backbone.unet, 0.7)  # a generator whose scale is not the config's keeps its own
        conditioning_controls(cfg, gen, profiles, PixelDigest(), set(), gen.conditioner.mode)
        assert get_adapter_scale(gen.backbone.unet) == pytest.approx(0.7)
        set_adapter_scale(gen.backbone.unet, scale)
        again = conditioning_controls(cfg, gen, profiles, PixelDigest(), set(), gen.conditioner.mode)
        assert again == moved  # seeded: the same draws, so 'changed' is the control's doing, not fresh noise

        with torch.no_grad():  # an adapter that adds nothing: neither control can change a pixel
            for p in params.values():
                p.zero_()
        still = conditioning_controls(cfg, gen, profiles, PixelDigest(), set(), gen.conditioner.mode)
        assert still["token_swap_changed"] == 0.0 and still["scale0_changed"] == 0.0
        # samples.control_seeds=0 ("0 leaves them out"): no controls, not one seed per disease
        from omegaconf import OmegaConf

        off = OmegaConf.merge(cfg, {"samples": {"control_seeds": 0}})
        assert conditioning_controls(off, gen, profiles, PixelDigest(), set(), gen.conditioner.mode) == {}
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])


def test_control_draws_pair_a_diseases_noise_across_runs_that_draw_fewer(micro_generator):
    # a baselines run's class generator cannot draw the held-out disease: its controls must still draw every other
    # disease from the noises the kg generator used (they shifted with the list's positions)
    from kgface.run_measure import conditioning_controls

    gen, profiles, cfg = micro_generator
    drawn = []

    class Spy:
        def __getattr__(self, name):
            return getattr(gen, name)

        def sample(self, reqs, **kw):
            drawn.append([(r.profile.disease_id, r.seed) for r in reqs])
            return gen.sample(reqs, **kw)

    order = [p.disease_id for p in profiles]
    sick = [p for p in profiles if not p.healthy]
    conditioning_controls(cfg, Spy(), profiles, PixelDigest(), set(), gen.conditioner.mode, seed_order=order)
    all_draws = set(drawn[0])  # the first sample call: the requests as asked (then the swap, then scale 0)
    drawn.clear()
    fewer = [p for p in profiles if p.disease_id != sick[0].disease_id]
    conditioning_controls(cfg, Spy(), fewer, PixelDigest(), set(), gen.conditioner.mode, seed_order=order)
    assert set(drawn[0]) < all_draws  # the same (disease, seed) pairs, less the disease it cannot draw
    assert {d for d, _ in all_draws - set(drawn[0])} == {sick[0].disease_id}
