"""The tiny stack's VAE: training lowers the reconstruction error, checkpoints are reported, round trips keep shape."""
import json
import re

import pytest
import torch

from kgface.diffusion.vae import psnr, roundtrip, to_model, train_vae

SMALL = {"image_size": 16, "vae_block_out_channels": [8, 8], "norm_num_groups": 4, "latent_channels": 4,
         "unet_block_out_channels": [16, 16], "unet_heads": [1, 1], "unet_attention_levels": [False, True]}


def test_training_improves_round_trips_and_reports_checkpoints():
    g = torch.Generator().manual_seed(0)
    # blocky images: smooth enough for a 2-block VAE to learn in a few dozen steps
    images = (torch.rand(32, 3, 4, 4, generator=g) * 255).repeat_interleave(4, -1).repeat_interleave(4, -2)
    images = images.to(torch.uint8)
    seen = []
    vae = train_vae(images, SMALL, {"steps": 60, "batch_size": 8, "lr": 3e-3}, progress=False, every=20,
                    on_checkpoint=lambda step, v: seen.append((step, psnr(roundtrip(v, images), images), v.training)))
    assert [s for s, _, _ in seen] == [20, 40, 60]
    assert not any(training for _, _, training in seen) and not vae.training
    assert seen[-1][1] > seen[0][1]
    assert roundtrip(vae, images).shape == images.shape and roundtrip(vae, images).dtype == torch.uint8
    with torch.no_grad():  # latents scaled to unit variance: the reciprocal of the latent means' std
        z = vae.encode(to_model(images)).latent_dist.mean
    assert vae.config.scaling_factor == pytest.approx(1 / float(z.std()), rel=1e-4)
    # run where the VAE lives, in its dtype: a half-precision VAE took fp32 images (the GPU case: CPU images met a
    # VAE the trainer left on the GPU); the result comes back as CPU uint8, close to the fp32 round trip
    full = roundtrip(vae, images)
    assert (roundtrip(vae, images, batch=5).float() - full.float()).abs().max() <= 1  # batches: the same answer
    half = roundtrip(vae.to(torch.bfloat16), images)
    assert half.dtype == torch.uint8 and half.device.type == "cpu" and (half.float() - full.float()).abs().mean() < 8


def test_logvar_init_starts_a_near_deterministic_posterior():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    seen = []
    train_vae(images, SMALL, {"steps": 1, "batch_size": 4, "lr": 0.0, "logvar_init": -10.0}, progress=False,
              every=1, on_checkpoint=lambda step, v: seen.append(v.encode(to_model(images)).latent_dist))
    assert torch.allclose(seen[0].std, torch.full_like(seen[0].std, float(torch.exp(torch.tensor(-5.0)))))
    default = train_vae(images, SMALL, {"steps": 1, "batch_size": 4, "lr": 0.0}, progress=False)
    assert default.encode(to_model(images)).latent_dist.std.mean() > 0.1  # logvar ~0 at init


def _flat_manifest(folder, n, step):
    """n flat 16-px images (grey level step * i), the last one test, the rest train; returns the manifest path."""
    import numpy as np
    from PIL import Image

    rows = ["path,split"]
    for i in range(n):
        Image.fromarray(np.full((16, 16, 3), step * i, np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'train' if i < n - 1 else 'test'}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _blocky(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 4, 4, generator=g) * 255).repeat_interleave(4, -1).repeat_interleave(4, -2).to(torch.uint8)


def test_the_adversarial_loss_acts_from_adv_start_only(monkeypatch):
    import kgface.diffusion.vae as vae_module

    built = []

    class Recorded(vae_module.PatchDiscriminator):
        def __init__(self, channels):
            super().__init__(channels)
            built.append((self, [p.detach().clone() for p in self.parameters()]))

    monkeypatch.setattr(vae_module, "PatchDiscriminator", Recorded)
    images = _blocky()
    base = {"steps": 6, "batch_size": 4, "lr": 3e-3}
    states = {"plain": [], "active": []}

    def keep(run):
        return lambda step, v: states[run].append({k: t.clone() for k, t in v.state_dict().items()})

    plain = train_vae(images, SMALL, base, progress=False, every=2, on_checkpoint=keep("plain"))
    # a discriminator that never starts is never built, and the VAE is bit-identical to the plain loss's
    idle = train_vae(images, SMALL, {**base, "adv_weight": 0.5, "adv_start": 6, "disc_channels": 8}, progress=False)
    assert built == []
    active = train_vae(images, SMALL, {**base, "adv_weight": 0.5, "adv_start": 2, "disc_channels": 8},
                       progress=False, every=2, on_checkpoint=keep("active"))
    for (name, a), b in zip(plain.state_dict().items(), idle.state_dict().values()):
        assert torch.equal(a, b), name
    # one that starts later, built at the start: the same VAE up to adv_start (docs compare checkpoints by this)
    assert all(torch.equal(a, states["active"][0][k]) for k, a in states["plain"][0].items())
    assert not torch.equal(states["plain"][1]["decoder.conv_out.weight"], states["active"][1]["decoder.conv_out.weight"])
    assert not torch.equal(plain.decoder.conv_out.weight, active.decoder.conv_out.weight)
    assert torch.isfinite(roundtrip(active, images).float()).all()
    (disc, initial), = built
    assert any(not torch.equal(p, q) for p, q in zip(disc.parameters(), initial))  # it learned (its own steps)
    # the cache key holds the VAE's keys alone: another UNet (built first, from the same seed) trains the same VAE
    wider = train_vae(images, {**SMALL, "unet_block_out_channels": [16, 32]},
                      {**base, "adv_weight": 0.5, "adv_start": 2, "disc_channels": 8}, progress=False)
    for (name, a), b in zip(active.state_dict().items(), wider.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_discriminator_is_stepped_on_real_and_detached_fakes(monkeypatch):
    import kgface.diffusion.vae as vae_module

    seen = []

    class Recorded(vae_module.PatchDiscriminator):
        def forward(self, x):
            seen.append((x.requires_grad, any(p.requires_grad for p in self.parameters())))
            return super().forward(x)

    monkeypatch.setattr(vae_module, "PatchDiscriminator", Recorded)
    train_vae(_blocky(), SMALL, {"steps": 3, "batch_size": 4, "adv_weight": 0.5, "adv_start": 1,
                                 "disc_channels": 8}, progress=False)
    # per adversarial step: the VAE's pass (fakes carry the VAE's graph, discriminator frozen), then the
    # discriminator's own pass on real images and on fakes cut from the VAE's graph
    assert seen == [(True, False), (False, True), (False, True)] * 2


def test_the_patch_discriminator_scores_patches():
    from kgface.diffusion.vae import PatchDiscriminator

    out = PatchDiscriminator(32)(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1, 14, 14)  # one logit per overlapping ~34-px patch


@pytest.mark.parametrize("bad, message", [
    ({"adv_weight": -1}, "model.vae_train.adv_weight=-1: must be a number >= 0"),
    ({"adv_weight": float("nan")}, "model.vae_train.adv_weight=nan"),
    ({"adv_weight": None}, "model.vae_train.adv_weight=None: must be a finite number"),
    ({"adv_weight": True}, "model.vae_train.adv_weight=True"),
    ({"lr": "fast"}, "model.vae_train.lr='fast': must be a finite number"),
    ({"adv_start": -5}, "model.vae_train.adv_start=-5: must be a whole number >= 0"),
    ({"adv_start": 2.7}, "model.vae_train.adv_start=2.7: must be a finite whole number"),
    ({"disc_channels": 6}, "model.vae_train.disc_channels=6: must be a whole number >= 8"),
    ({"disc_channels": 10}, "model.vae_train.disc_channels=10: must be a multiple of 4"),
    ({"steps": 0}, "model.vae_train.steps=0: must be a whole number >= 1"),
    ({"seed": 2 ** 70}, "model.vae_train.seed=1180591620717411303424: must fit in 64 bits"),
    ({"steps": float("inf")}, "model.vae_train.steps=inf: must be a finite whole number"),
    ({"adv_wieght": 1}, "unknown key(s) ['adv_wieght']")])
def test_bad_vae_settings_name_their_key(bad, message):
    from kgface.errors import UserError

    with pytest.raises(UserError) as info:
        train_vae(_blocky(4), SMALL, {"steps": 1, "batch_size": 2, **bad}, progress=False)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_vae_settings_are_read_as_numbers():
    from kgface.diffusion.vae import VAE_DEFAULTS, check_vae_train

    out = check_vae_train({**VAE_DEFAULTS, "steps": 2000.0, "lr": "1e-3", "seed": 2 ** 60 + 1})
    assert out["steps"] == 2000 and isinstance(out["steps"], int) and out["lr"] == 1e-3
    assert out["seed"] == 2 ** 60 + 1  # exact, not through a float
    assert check_vae_train({**VAE_DEFAULTS, "seed": -1})["seed"] == -1  # torch takes negative seeds


def test_the_discriminator_refuses_images_too_small_for_its_patches():
    from kgface.errors import UserError

    tiny = {**SMALL, "image_size": 8}
    with pytest.raises(UserError, match=r"at least 12 px .*model.vae_train.adv_weight=0"):
        train_vae(_blocky(4)[:, :, :8, :8], tiny, {"steps": 2, "batch_size": 2, "adv_weight": 0.5}, progress=False)


def test_the_cached_vae_is_keyed_by_the_vae_alone(tmp_path):
    import numpy as np
    from PIL import Image

    from kgface.cache import Cache
    from kgface.diffusion.vae import cached_vae

    manifest = _flat_manifest(tmp_path, 4, 60)
    cache, train = Cache(tmp_path / "cache"), {"steps": 1, "batch_size": 2}
    _, _, first = cached_vae(manifest, SMALL, train, cache, progress=False)
    # a UNet-only override finds the same VAE; a VAE override trains a new one
    _, _, same = cached_vae(manifest, {**SMALL, "unet_attention_levels": [True, True]}, train, cache, progress=False)
    _, _, other = cached_vae(manifest, {**SMALL, "vae_block_out_channels": [8, 16]}, train, cache, progress=False)
    assert same == first and other != first
    # the adversarial options at their defaults keep the key (VAEs cached before them stay valid); set, a new VAE
    defaults = {**train, "adv_weight": 0.0, "adv_start": 0, "disc_channels": 32, "logvar_init": 0.0}
    _, _, spelled = cached_vae(manifest, SMALL, defaults, cache, progress=False)
    # settings that cannot act (no weight; a start after the last step) keep it too
    _, _, inert = cached_vae(manifest, SMALL, {**train, "disc_channels": 8, "adv_start": 7}, cache, progress=False)
    _, _, late = cached_vae(manifest, SMALL, {**train, "adv_weight": 0.5, "adv_start": 1}, cache, progress=False)
    _, _, gan = cached_vae(manifest, SMALL, {**train, "adv_weight": 0.5, "disc_channels": 8}, cache, progress=False)
    _, _, gan_float = cached_vae(manifest, SMALL, {**train, "adv_weight": 0.5, "disc_channels": 8.0}, cache,
                                 progress=False)
    assert spelled == first == inert == late and gan != first and gan_float == gan
    # new pixels under the same manifest (a re-render, another crop size): a new VAE, not the stale one
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "1.png")
    _, _, redrawn = cached_vae(manifest, SMALL, train, cache, progress=False)
    assert redrawn != first and manifest.read_text().count("\n") == 5
    # a new recipe (VAE_VERSION bumped) retrains; version 1 keeps the keys of VAEs cached before the version existed
    import kgface.diffusion.vae as vae_module

    vae_module.VAE_VERSION = 2
    try:
        _, _, recipe = cached_vae(manifest, SMALL, train, cache, progress=False)
    finally:
        vae_module.VAE_VERSION = 1
    assert recipe not in (redrawn, first) and cached_vae(manifest, SMALL, train, cache, progress=False)[2] == redrawn


def test_checkpoint_readings_leave_the_trained_weights_as_they_are():
    """bench/vae_ceiling.py --every caches the VAE it reads during training under the train job's key: the readings
    (eval-mode round trips) must not change what is trained."""
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(16, 3, 4, 4, generator=g) * 255).repeat_interleave(4, -1).repeat_interleave(4, -2)
    images = images.to(torch.uint8)
    train = {"steps": 6, "batch_size": 4, "lr": 3e-3}
    plain = train_vae(images, SMALL, train, progress=False)
    steps = []
    read = train_vae(images, SMALL, train, progress=False, every=2,
                     on_checkpoint=lambda step, v: (steps.append(step), roundtrip(v, images[:5])))
    a, b = plain.state_dict(), read.state_dict()
    assert steps == [2, 4, 6]  # the readings happened
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


class _Killed(Exception):
    pass


def _kill_at(n):
    def f(step, vae):
        if step == n:
            raise _Killed
    return f


@pytest.mark.parametrize("adversarial", [False, True])
def test_a_killed_vae_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, adversarial):
    images = _blocky(8)
    train = {"steps": 7, "batch_size": 4, "lr": 3e-3, "logvar_init": -10.0}
    if adversarial:
        train.update({"adv_weight": 0.5, "adv_start": 2, "disc_channels": 8})
    whole = train_vae(images, SMALL, train, progress=False)
    state = tmp_path / "state"
    with pytest.raises(_Killed):  # killed during step 5: the state saved after step 4 survives
        train_vae(images, SMALL, train, progress=False, every=5, on_checkpoint=_kill_at(5), state_dir=state,
                  state_every=2)
    assert json.loads((state / "state.json").read_text())["step"] == 4
    steps = []
    resumed = train_vae(images, SMALL, train, progress=False, every=1, on_checkpoint=lambda s, v: steps.append(s),
                        state_dir=state, state_every=2)
    assert steps == [5, 6, 7]  # steps 1-4 were not trained again
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and whole.config.scaling_factor == resumed.config.scaling_factor
    # a state saved by another config is not mixed in: that run starts at step 1
    steps.clear()
    train_vae(images, SMALL, {**train, "lr": 1e-3}, progress=False, every=1, on_checkpoint=lambda s, v: steps.append(s),
              state_dir=state, state_every=0)
    assert steps[0] == 1
    # a damaged state (half its weights lost) is removed with a warning; the run starts afresh and is not mixed up
    (state / "rng.safetensors").write_bytes(b"damaged")
    steps.clear()
    fresh = train_vae(images, SMALL, train, progress=False, every=1, on_checkpoint=lambda s, v: steps.append(s),
                      state_dir=state, state_every=0)
    assert steps[0] == 1 and not state.exists()
    c = fresh.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_cached_vae_resumes_a_killed_training_and_clears_its_state(tmp_path, monkeypatch):
    from kgface.cache import Cache
    from kgface.diffusion import vae as V

    manifest = _flat_manifest(tmp_path, 6, 40)
    monkeypatch.setattr(V, "VAE_CHECKPOINT_EVERY", 2)
    cache, train = Cache(tmp_path / "cache"), {"steps": 5, "batch_size": 2}
    with pytest.raises(_Killed):
        V.cached_vae(manifest, SMALL, train, cache, progress=False, every=3, on_checkpoint=_kill_at(3))
    partial = list((tmp_path / "cache" / "vae").glob(".*.partial"))
    assert len(partial) == 1 and json.loads((partial[0] / "state.json").read_text())["step"] == 2
    steps = []
    _, _, entry = V.cached_vae(manifest, SMALL, train, cache, progress=False, every=1,
                               on_checkpoint=lambda s, v: steps.append(s))
    assert steps == [3, 4, 5] and (entry / "vae" / "config.json").is_file() and not partial[0].exists()
    # a state left beside an entry that exists (a rival run cached it first) goes on the next lookup
    partial[0].mkdir()
    V.cached_vae(manifest, SMALL, train, cache, progress=False)
    assert not partial[0].exists()


def test_the_vae_learns_from_the_generators_diseases_only(tmp_path):
    # the VAE is the generator's decoder: a held-out disease's faces must not teach it (they did until 2026-12-06)
    import json

    import numpy as np
    from PIL import Image

    from kgface.cache import Cache
    from kgface.diffusion.vae import cached_vae, load_split_images

    rows = ["path,disease,split"]
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'B' if i in (1, 3) else 'A'},{'test' if i == 5 else 'train'}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    kept = load_split_images(manifest, "train", exclude={"B"})
    assert kept[:, 0, 0, 0].tolist() == [0, 80, 160]  # images 0, 2, 4: B's 1 and 3 left out
    cache, train = Cache(tmp_path / "cache"), {"steps": 1, "batch_size": 2}
    _, info, seen = cached_vae(manifest, SMALL, train, cache, progress=False)
    _, held_info, held = cached_vae(manifest, SMALL, train, cache, progress=False, heldout={"B"})
    assert held != seen and info["train_images"] == 5 and held_info["train_images"] == 3
    assert json.loads((held / "entry.json").read_text())["spec"]["heldout"] == ["B"]


def test_a_manifest_without_test_rows_trains_a_vae_and_one_without_train_rows_is_refused(tmp_path):
    """data.test_fraction=0 (allowed): the VAE trains, its PSNR unmeasured (np.stack of no test image was a
    traceback after training, each rerun retraining); no train rows: a line naming the manifest."""
    from kgface.cache import Cache
    from kgface.diffusion.vae import cached_vae
    from kgface.errors import UserError

    manifest = _flat_manifest(tmp_path, 3, 60)
    manifest.write_text(manifest.read_text().replace(",test", ",train"))
    cache, train = Cache(tmp_path / "cache"), {"steps": 1, "batch_size": 2}
    _, metrics, _ = cached_vae(manifest, SMALL, train, cache, progress=False)
    assert metrics == {"test_psnr_db": None, "train_images": 3}
    manifest.write_text(manifest.read_text().replace(",train", ",test"))
    with pytest.raises(UserError, match=re.escape(f"{manifest}: no train images; the VAE needs train rows")):
        cached_vae(manifest, SMALL, train, cache, progress=False)
