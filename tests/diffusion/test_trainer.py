"""The training loop on a tiny model: loss goes down, exact resume, NaN handling, only trainable weights move."""
import json
import logging
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from kgface.diffusion.backbones import build_backbone
from kgface.diffusion.conditioning import Conditioner
from kgface.diffusion.generator import Generator, Request
from kgface.diffusion.trainer import LatentSet, TrainingError, guidance_dropout, min_snr_weights, train
from kgface.kg import ProfileBuilder, healthy_profile
from safetensors.torch import load_file

MICRO = {"name": "tiny", "num_tokens": 4, "tiny": {
    "image_size": 32, "vae_block_out_channels": [16, 32], "unet_block_out_channels": [32, 64],
    "unet_heads": [2, 2], "unet_attention_levels": [True, False], "norm_num_groups": 16}}
V_SCHEDULE = {"prediction_type": "v_prediction", "zero_terminal_snr": True, "timestep_spacing": "trailing"}
FAST = {"batch_size": 8, "lr": 1e-3, "encoder_lr": 1e-3, "warmup_steps": 2, "checkpoint_every": 0, "log_every": 1,
        "ema": True, "min_snr_gamma": 5.0}


@pytest.fixture(scope="module")
def profiles(hpo_kg, catalog):
    b = ProfileBuilder(hpo_kg, catalog)
    return [b.build("ORPHA:870"), b.build("MONDO:0011438"), healthy_profile("hpo")]


def make(profiles, mode="kg", seed=0, schedule=None, dropout=0.0):
    torch.manual_seed(seed)
    backbone = build_backbone({**MICRO, "schedule": schedule}, num_tokens=4, with_adapter=mode != "text")
    encoder = builder = None
    if mode in ("kg", "kg_text"):
        from kgface.encoders import KGEncoder

        encoder = KGEncoder(out_dim=backbone.cross_attention_dim, hidden=32, layers=1, num_tokens=4, heads=2,
                            center_tokens=True, dropout=dropout)
        builder = encoder.graph_builder()
    return backbone, Conditioner(mode, profiles, backbone, encoder, builder, num_tokens=4)


@pytest.mark.parametrize("mode", ["kg", "kg_text"])
def test_training_feeds_ages_to_the_kg_encoder(profiles, tmp_path, mode):
    """Every KG mode trains the age rows it will be asked for at generation (kg_text once trained them never)."""
    from kgface.encoders import KGEncoder

    torch.manual_seed(0)
    backbone = build_backbone(MICRO, num_tokens=4, with_adapter=True)
    encoder = KGEncoder(out_dim=backbone.cross_attention_dim, hidden=32, layers=1, num_tokens=4, heads=2,
                        age_groups=2)
    cond = Conditioner(mode, profiles, backbone, encoder, encoder.graph_builder(), num_tokens=4)
    data = fixed_data(8)
    data.age = torch.arange(8) % 2  # groups 0 and 1 -> rows 1 and 2; row 0 is "unknown"
    before = encoder.age_emb.weight.detach().clone()
    # no weight decay: a row without gradient then stays bit-identical under AdamW
    train(backbone, cond, data, {**FAST, "steps": 3, "weight_decay": 0.0, "age_drop": 0.0}, tmp_path, progress=False)
    moved = (encoder.age_emb.weight.detach() != before).any(dim=1).tolist()
    assert moved == [False, True, True], moved
    # trainer.age_drop: some steps see the unknown age, which every request without age= asks for
    train(backbone, cond, data, {**FAST, "steps": 3, "weight_decay": 0.0, "age_drop": 0.5}, tmp_path / "drop",
          progress=False)
    assert (encoder.age_emb.weight.detach()[0] != before[0]).any()


@pytest.mark.parametrize("mode", ["kg", "class"])
def test_ungraded_rows_train_the_unknown_stage_not_a_placeholder(profiles, tmp_path, mode):
    """Rows with stage -1 / severity NaN (real photos without a grade) train `unknown_stage`; a set without them
    leaves it at zero (so it changed nothing for graded data)."""
    for with_unknown in (False, True):
        backbone, cond = make(profiles, mode)
        module = cond.encoder if mode == "kg" else cond.class_tokens
        data = fixed_data(8)
        if with_unknown:
            data.stage[::2], data.severity[::2] = -1, float("nan")
        out = train(backbone, cond, data, {**FAST, "steps": 3}, tmp_path / f"{mode}-{with_unknown}",
                    progress=False)
        assert all(math.isfinite(v) for v in out["losses"])
        moved = bool(module.unknown_stage.detach().abs().sum() > 0)
        assert moved == with_unknown, (mode, with_unknown)


def test_mixed_precision_training_leaves_a_full_precision_unet(profiles, tmp_path):
    """accelerate wraps forward in bf16 autocast for training; after it the UNet draws as a reloaded run does."""
    backbone, cond = make(profiles)
    train(backbone, cond, fixed_data(8), {**FAST, "steps": 1, "mixed_precision": "bf16"}, tmp_path, progress=False)
    unet = backbone.unet
    assert not hasattr(unet, "_original_forward")
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    states = torch.randn(2, 3, backbone.cross_attention_dim)
    kw = {"image_embeds": [torch.randn(2, 4, backbone.cross_attention_dim)]}
    with torch.no_grad():
        out = unet(x, t, encoder_hidden_states=states, added_cond_kwargs=kw).sample
        plain = type(unet).forward(unet, x, t, encoder_hidden_states=states, added_cond_kwargs=kw).sample
    assert torch.equal(out, plain)


def test_text_prompts_of_ungraded_rows_name_the_disease_without_a_stage(profiles):
    from kgface.prompts import training_prompt

    backbone, cond = make(profiles, "text")
    down, graded = cond.prompts(torch.tensor([0, 0]), torch.tensor([-1, 2]))
    assert down.endswith(f"A face with {profiles[0].name}.") and "stage" not in down
    assert "stage" in graded
    # a face known to show exactly its phenotypes keeps naming them all, only the stage clause goes
    full = training_prompt(profiles[0], None, conditioning="text", every_phenotype=True)
    staged = training_prompt(profiles[0], 2, conditioning="text", every_phenotype=True)
    assert "stage" not in full and full.split(": ", 1)[1] == staged.split(": ", 1)[1]


def fixed_data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LatentSet(latents=torch.randn(n, 4, 16, 16, generator=g), index=torch.arange(n) % 3,
                     stage=torch.arange(n) % 4, severity=(torch.arange(n) % 4).float(), age=torch.full((n,), -1))


def state(backbone, cond):
    """Trainable weights and the conditioner's running statistics (the token centering's buffers)."""
    return [p.detach().clone() for p in list(backbone.trainable) + cond.trainable_parameters()] + \
        [b.clone() for b in cond.buffers()]


@pytest.mark.parametrize("mode", ["kg", "text", "class", "kg_text"])
def test_a_few_steps_reduce_the_loss(profiles, tmp_path, mode):
    backbone, cond = make(profiles, mode)
    data = fixed_data(8)
    out = train(backbone, cond, data, {**FAST, "steps": 40, "batch_size": 8, "min_snr_gamma": 0}, tmp_path,
                progress=False)
    first, last = sum(out["losses"][:5]) / 5, sum(out["losses"][-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_guidance_dropout_shares_and_the_text_run_drops_its_only_condition_as_often_as_kg_drops_tokens():
    u = (torch.arange(10_000) + 0.5) / 10_000  # an even grid: each share reads exactly
    tok, txt = guidance_dropout(u, 0.1, 0.02, 0.05)
    assert tok.float().mean().item() == pytest.approx(0.15) and txt.float().mean().item() == pytest.approx(0.07)
    assert (tok & txt).float().mean().item() == pytest.approx(0.05)  # "both" is the one overlap
    tok_t, txt_t = guidance_dropout(u, 0.1, 0.02, 0.05, has_tokens=False)
    assert torch.equal(tok_t, tok)
    # text-only: its prompt is dropped in both + tokens (+ text) of the steps, not in both (+ text) alone
    assert txt_t.float().mean().item() == pytest.approx(0.17) and torch.equal(txt_t, tok | txt)


def test_min_snr_weights_cap_the_clean_end_and_keep_the_pure_noise_end_for_v():
    a = torch.tensor([0.0, 0.5, 0.9, 0.999])
    v = min_snr_weights(a, torch.arange(4), 5.0, "v_prediction")  # SNR + 1 = 1, 2, 10, 1000
    assert torch.allclose(v, torch.tensor([1.0, 1.0, 0.5, 0.005]), rtol=1e-4)
    eps = min_snr_weights(a, torch.arange(1, 4), 5.0)  # SNR = 1, 9, 999
    assert torch.allclose(eps, torch.tensor([1.0, 5 / 9, 5 / 999]), rtol=1e-4)
    # on the clean latent's error (v's loss is (SNR + 1) times it, epsilon's SNR times) both cap at gamma
    assert torch.allclose(v[1:] / (1 - a[1:]), torch.tensor([2.0, 5.0, 5.0]), rtol=1e-4)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_loss_is_the_error_of_the_schedules_target(profiles, tmp_path, prediction):
    """Step 0's loss, recomputed from the loop's own draws: the noise for epsilon, the velocity for v."""
    import copy

    schedule = V_SCHEDULE if prediction == "v_prediction" else None
    backbone, cond = make(profiles, "text", schedule=schedule)
    assert backbone.scheduler.config.prediction_type == prediction
    data, unet = fixed_data(8), copy.deepcopy(backbone.unet)
    cfg = {**FAST, "steps": 1, "min_snr_gamma": 0, "ema": False, "cfg_drop_tokens": 0, "cfg_drop_both": 0}
    out = train(backbone, cond, data, cfg, tmp_path, progress=False)
    g = torch.Generator().manual_seed(0)  # seed 0, step 0: indices, noise, timesteps in the loop's order
    idx = torch.randint(0, 8, (8,), generator=g)
    x0 = data.latents[idx]
    noise = torch.randn(x0.shape, generator=g)
    ts = torch.randint(0, 1000, (8,), generator=g)
    s = backbone.scheduler
    states, _ = backbone.text_states(cond.prompts(data.index[idx], data.stage[idx]))
    with torch.no_grad():
        pred = unet.train()(s.add_noise(x0, noise, ts), ts, encoder_hidden_states=states).sample
    target, other = (noise, s.get_velocity(x0, noise, ts))[::1 if prediction == "epsilon" else -1]
    assert out["losses"][0] == pytest.approx(F.mse_loss(pred, target).item(), rel=1e-4)
    assert abs(out["losses"][0] - F.mse_loss(pred, other).item()) > 0.01


def test_a_v_prediction_model_trains_with_min_snr_and_samples_on_its_ladder(profiles, tmp_path):
    backbone, cond = make(profiles, schedule=V_SCHEDULE)
    out = train(backbone, cond, fixed_data(8), {**FAST, "steps": 30}, tmp_path, progress=False)
    assert all(math.isfinite(x) for x in out["losses"])
    s, top = backbone.scheduler, torch.tensor([999])  # the pure-noise step: target -x0, full weight
    x0, noise = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert torch.equal(s.add_noise(x0, noise, top), noise) and torch.allclose(s.get_velocity(x0, noise, top), -x0)
    assert min_snr_weights(s.alphas_cumprod, top, 5.0, "v_prediction").item() == 1.0
    gen = Generator(backbone, cond, guidance=2.0, steps=4)
    assert gen.prediction == "v_prediction" and gen.ladder().tolist() == [999, 749, 499, 249]
    assert gen.ladder(0.5).tolist() == [499, 249]
    reqs = [Request(profiles[0], 2.0, seed=5), Request(profiles[1], 3.0, seed=6)]
    seeded = torch.randn(backbone.latent_shape, generator=torch.Generator().manual_seed(6))
    assert torch.equal(gen.noise(reqs)[1], seeded)
    images = gen.sample(reqs)
    assert images.shape == (2, 3, 32, 32) and images.float().std() > 0
    # eta: each request's fresh noise comes from its own seed, so its image does not depend on the batch
    stochastic = Generator(backbone, cond, guidance=2.0, steps=4, eta=1.0)
    both = stochastic.latents(reqs)
    assert torch.allclose(stochastic.latents(reqs[1:]), both[1:], atol=1e-4)  # batch size moves the last bits only
    assert not torch.allclose(both, gen.latents(reqs), atol=1e-2)
    assert not torch.allclose(both[1], Generator(backbone, cond, guidance=2.0, steps=4, eta=1.0).latents(
        [Request(profiles[1], 3.0, seed=7)])[0], atol=1e-2)  # another seed: another stream
    with pytest.raises(ValueError, match="eta"):
        Generator(backbone, cond, eta=-1.0)
    # a run's model/ keeps the schedule: what run loading reads back
    from diffusers import DDPMScheduler

    from kgface.diffusion.backbones import save_model_folder

    save_model_folder(backbone, tmp_path / "model")
    loaded = DDPMScheduler.from_pretrained(tmp_path / "model" / "scheduler")
    assert loaded.config.prediction_type == "v_prediction" and loaded.config.timestep_spacing == "trailing"
    assert loaded.alphas_cumprod[-1] == 0 and torch.equal(loaded.alphas_cumprod, backbone.scheduler.alphas_cumprod)


def test_only_trainable_weights_move(profiles, tmp_path):
    backbone, cond = make(profiles)
    frozen = {n: p.detach().clone() for n, p in backbone.text_encoder.named_parameters()}
    vae = {n: p.detach().clone() for n, p in backbone.vae.named_parameters()}
    before = state(backbone, cond)
    train(backbone, cond, fixed_data(), {**FAST, "steps": 3}, tmp_path, progress=False)
    assert all(torch.equal(frozen[n], p) for n, p in backbone.text_encoder.named_parameters())
    assert all(torch.equal(vae[n], p) for n, p in backbone.vae.named_parameters())
    after = state(backbone, cond)
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > 0.9 * len(before)


def test_the_adapter_has_its_own_learning_rate(profiles, tmp_path):
    from kgface.diffusion.adapter import adapter_parameters

    backbone, cond = make(profiles)
    adapter = {n: p.detach().clone() for n, p in adapter_parameters(backbone.unet).items()}
    conv = backbone.unet.conv_in.weight.detach().clone()
    train(backbone, cond, fixed_data(), {**FAST, "steps": 3, "adapter_lr": 0.0}, tmp_path, progress=False)
    assert all(torch.equal(adapter[n], p) for n, p in adapter_parameters(backbone.unet).items())
    assert not torch.equal(conv, backbone.unet.conv_in.weight)  # the rest of the UNet trains at trainer.lr


def test_a_frozen_group_stays_out_of_the_gradient_clip(profiles, tmp_path, monkeypatch):
    # trainer.lr=0 with an adapter_lr ("the adapter alone"): the UNet's gradients made the adapter's clip factor
    from accelerate import Accelerator

    from kgface.diffusion.adapter import adapter_parameters

    clipped, real = [], Accelerator.clip_grad_norm_

    def spy(self, parameters, *args, **kwargs):
        parameters = list(parameters)
        clipped.append({id(p) for p in parameters})
        return real(self, parameters, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    backbone, cond = make(profiles)
    adapter = {id(p) for p in adapter_parameters(backbone.unet).values()}
    train(backbone, cond, fixed_data(), {**FAST, "steps": 2, "lr": 0.0, "adapter_lr": 1e-3, "max_grad_norm": 1.0},
          tmp_path, progress=False)
    assert len(clipped) == 2 and all(adapter <= s and id(backbone.unet.conv_in.weight) not in s for s in clipped)


def test_a_step_the_loss_scaler_skipped_moves_neither_the_schedule_nor_the_ema(profiles, tmp_path, monkeypatch):
    # fp16 on a GPU: the scaler skips the first steps whose scaled gradients overflow (the CPU has no scaler, so the
    # flag accelerate reads off it is set here for the first two of three steps)
    from accelerate import Accelerator

    asked = []
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: asked.append(1) or
                                                                            len(asked) <= 2))
    backbone, cond = make(profiles)
    out = train(backbone, cond, fixed_data(), {**FAST, "steps": 3, "checkpoint_every": 3}, tmp_path, progress=False)
    opt = torch.load(tmp_path / "checkpoints" / "step-0000003" / "optimizer.pt", weights_only=True)
    assert len(asked) == 3 and out["ema"].steps == 1 and opt["scheduler"]["last_epoch"] == 1


@pytest.mark.parametrize("dropout, grad_accum", [(0.0, 1), (0.3, 1), (0.0, 2)])
def test_resume_gives_the_same_weights(profiles, tmp_path, dropout, grad_accum):
    """dropout: the encoder's draws come from torch's global generator, which a fresh process seeds otherwise;
    grad_accum 2 (every GPU recipe accumulates): two micro-batches a step, one optimiser / schedule / EMA step."""
    cfg = {**FAST, "steps": 6, "checkpoint_every": 3, "keep_checkpoints": 5, "grad_accum": grad_accum}
    b1, c1 = make(profiles, dropout=dropout)
    straight = train(b1, c1, fixed_data(), cfg, tmp_path / "straight", progress=False)
    b2, c2 = make(profiles, dropout=dropout)
    killed = train(b2, c2, fixed_data(), cfg, tmp_path / "resumed", progress=False, stop_after=4)
    assert killed["steps"] == 4 and (tmp_path / "resumed/checkpoints/step-0000003/trainable.safetensors").is_file()
    b3, c3 = make(profiles, seed=123, dropout=dropout)  # a fresh process: other initial weights, from the checkpoint
    before = torch.random.get_rng_state()
    out = train(b3, c3, fixed_data(), {**cfg, "resume": "latest"}, tmp_path / "resumed", progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # the loop's per-step seeds are not left behind
    assert out["steps"] == 6 and out["steps_this_call"] == 3
    assert len(list(c3.buffers())) > 0 and not c3.training  # trained, then left in eval mode for sampling
    for a, b in zip(state(b1, c1), state(b3, c3)):
        assert torch.equal(a, b)
    opt = torch.load(tmp_path / "straight" / "checkpoints" / "step-0000006" / "optimizer.pt", weights_only=True)
    assert opt["scheduler"]["last_epoch"] == 6 and straight["ema"].steps == 6  # once per step, not per micro-batch
    ema_a = json.loads((tmp_path / "straight/checkpoints/step-0000006/state.json").read_text())
    ema_b = json.loads((tmp_path / "resumed/checkpoints/step-0000006/state.json").read_text())
    assert ema_a == ema_b
    # the EMA's weights (the model a run ships) come back from ema.safetensors, not only its step count
    assert len(out["ema"].shadow) == len(straight["ema"].shadow) > 0
    assert all(torch.equal(a, b) for a, b in zip(out["ema"].shadow, straight["ema"].shadow))
    shipped = [load_file(str(tmp_path / d / "checkpoints/step-0000006/ema.safetensors"))
               for d in ("straight", "resumed")]
    assert shipped[0].keys() == shipped[1].keys() and all(torch.equal(shipped[0][k], shipped[1][k]) for k in shipped[0])


def test_a_checkpoint_resumes_only_under_the_target_and_noise_levels_it_trained_with(profiles, tmp_path, caplog):
    cfg = {**FAST, "steps": 4, "checkpoint_every": 2}
    backbone, cond = make(profiles, schedule=V_SCHEDULE)
    train(backbone, cond, fixed_data(), {**cfg, "steps": 2}, tmp_path, progress=False)
    state_file = tmp_path / "checkpoints/step-0000002/state.json"
    assert json.loads(state_file.read_text())["schedule"] == {
        "prediction_type": "v_prediction", "zero_terminal_snr": True, "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2"}
    backbone, cond = make(profiles, schedule={**V_SCHEDULE, "zero_terminal_snr": False})
    with pytest.raises(TrainingError, match=r"set model.schedule.zero_terminal_snr=true, or"):
        train(backbone, cond, fixed_data(), {**cfg, "resume": "latest"}, tmp_path, progress=False)
    backbone, cond = make(profiles)  # the default schedule, epsilon: both differ, one message names both keys
    with pytest.raises(TrainingError, match=r"step-0000002: trained with prediction_type='v_prediction', zero_terminal_snr=True, "
                                            r"this run has 'epsilon', False; set model.schedule.prediction_type="
                                            r"v_prediction model.schedule.zero_terminal_snr=true, or"):
        train(backbone, cond, fixed_data(), {**cfg, "resume": "latest"}, tmp_path, progress=False)
    # the ladder only samples: another spacing resumes
    backbone, cond = make(profiles, schedule={**V_SCHEDULE, "timestep_spacing": "leading"})
    assert train(backbone, cond, fixed_data(), {**cfg, "resume": "latest"}, tmp_path, progress=False)["steps"] == 4
    # a checkpoint from before the record resumes unchecked, said once
    for step in (2, 4):
        record = tmp_path / f"checkpoints/step-{step:07d}/state.json"
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "schedule"}))
    backbone, cond = make(profiles)
    with caplog.at_level(logging.WARNING, logger="kgface.diffusion.trainer"):
        assert train(backbone, cond, fixed_data(), {**cfg, "steps": 6, "resume": "latest"}, tmp_path,
                     progress=False)["steps"] == 6
    said = [r.getMessage() for r in caplog.records if r.name == "kgface.diffusion.trainer"]
    assert len(said) == 1 and "does not record its noise schedule" in said[0] and "step-0000004" in said[0]


def test_a_resume_continues_at_this_runs_weight_decay(profiles, tmp_path, caplog):
    """load_state_dict brought back the checkpoint's weight decay: trainer.weight_decay=0 on resume went on at the
    old one in silence. Now it is said, and the run resumed at 0 ends elsewhere than the one resumed at 0.5."""
    cfg = {**FAST, "steps": 4, "checkpoint_every": 2, "weight_decay": 0.5}
    for name in ("a", "b"):
        backbone, cond = make(profiles)
        train(backbone, cond, fixed_data(), {**cfg, "steps": 2}, tmp_path / name, progress=False)
    ends = {}
    for name, decay in (("a", 0.5), ("b", 0.0)):
        backbone, cond = make(profiles)
        with caplog.at_level(logging.WARNING, logger="kgface.diffusion.trainer"):
            train(backbone, cond, fixed_data(), {**cfg, "weight_decay": decay, "resume": "latest"}, tmp_path / name,
                  progress=False)
        ends[name] = state(backbone, cond)
    said = [r.getMessage() for r in caplog.records if "continuing with this run's" in r.getMessage()]
    assert len(said) >= 1 and all("weight_decay=0.5" in s and str(tmp_path / "b") in s for s in said)
    assert any(not torch.equal(x, y) for x, y in zip(ends["a"], ends["b"]))  # the new decay acted


def test_nan_loss_stops_with_the_last_good_checkpoint(profiles, tmp_path):
    backbone, cond = make(profiles)
    data = fixed_data()
    train(backbone, cond, data, {**FAST, "steps": 2, "checkpoint_every": 2}, tmp_path, progress=False)
    data.latents[:] = float("nan")
    with pytest.raises(TrainingError, match=r"loss became nan at step 2.*step-0000002"):
        train(backbone, cond, data, {**FAST, "steps": 4, "resume": "latest"}, tmp_path, progress=False)
    assert (tmp_path / "checkpoints/step-0000002/state.json").is_file()


def test_rows_are_drawn_by_their_weights(profiles, tmp_path):
    backbone, cond = make(profiles)
    data = fixed_data()
    data.latents[8:] = float("nan")  # a drawn NaN row stops the run (the test below shows it would be drawn)
    data.weights = torch.cat([torch.ones(8), torch.zeros(8)]).double()
    out = train(backbone, cond, data, {**FAST, "steps": 6}, tmp_path / "a", progress=False)
    assert out["steps"] == 6 and all(torch.isfinite(torch.tensor(out["losses"])))
    data.weights = None
    with pytest.raises(TrainingError, match="loss became nan"):
        train(backbone, cond, data, {**FAST, "steps": 6}, tmp_path / "b", progress=False)


def test_mark_weight_moves_each_faces_loss_onto_its_marks_at_the_same_scale(profiles, tmp_path):
    """Unmarked faces (all-zero maps) train exactly as with the plain loss: the weights are normalised per face."""
    plain = train(*make(profiles), fixed_data(), {**FAST, "steps": 3}, tmp_path / "a", progress=False)["losses"]
    data = fixed_data()
    data.marks = torch.zeros(16, 1, 16, 16)
    flat = train(*make(profiles), data, {**FAST, "steps": 3, "mark_weight": 10.0}, tmp_path / "b",
                 progress=False)["losses"]
    assert flat == pytest.approx(plain, rel=1e-5)
    data.marks[:] = 1.0  # marked all over: every cell weighs 11, and the normalisation gives the plain loss back
    even = train(*make(profiles), data, {**FAST, "steps": 3, "mark_weight": 10.0}, tmp_path / "e",
                 progress=False)["losses"]
    assert even == pytest.approx(plain, rel=1e-5)
    data.marks[:] = 0.0
    data.marks[:, :, :4] = 1.0  # the top quarter of every face marked
    marked = train(*make(profiles), data, {**FAST, "steps": 3, "mark_weight": 10.0}, tmp_path / "c",
                   progress=False)["losses"]
    assert marked[0] != pytest.approx(plain[0], rel=1e-3)
    with pytest.raises(TrainingError, match="mark_weight"):
        train(*make(profiles), fixed_data(), {**FAST, "steps": 1, "mark_weight": 1.0}, tmp_path / "d",
              progress=False)
    with pytest.raises(TrainingError, match="mark_weight=-2.0"):
        train(*make(profiles), data, {**FAST, "steps": 1, "mark_weight": -2.0}, tmp_path / "f", progress=False)


def test_a_resume_takes_this_runs_learning_rates_and_the_checkpoints_loss_scale(tmp_path, caplog):
    """Resuming after a NaN with a lower trainer.lr trains at it (the schedule continues where it was); the same
    rates resume exactly; an fp16 run's loss scale (accelerate's GradScaler, outside the optimizer) comes back."""
    from kgface.diffusion.trainer import _lr_lambda, load_checkpoint, save_checkpoint

    def setup(lr, steps=10):
        params = [torch.nn.Parameter(torch.ones(3))]
        opt = torch.optim.AdamW([{"params": params, "lr": lr}])
        opt.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        return params, opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(2, steps))

    params, opt, sched = setup(1e-3)
    for _ in range(4):
        params[0].grad = torch.ones(3)
        opt.step()
        sched.step()
    opt.scaler.scale(torch.ones(()))  # the scale starts lazily, at the first scaled loss
    opt.scaler.update(1024.0)  # the scale an fp16 run backed off to
    save_checkpoint(tmp_path / "step-4", 4, params, None, opt, sched, [], None, {})
    factor = _lr_lambda(2, 10)
    params, opt, sched = setup(1e-3)
    load_checkpoint(tmp_path / "step-4", params, None, opt, sched, None, {})
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * factor(4)) and opt.scaler.get_scale() == 1024.0
    params, opt, sched = setup(2.5e-4)
    with caplog.at_level(logging.WARNING, logger="kgface.diffusion.trainer"):
        load_checkpoint(tmp_path / "step-4", params, None, opt, sched, None, {})
    assert "continuing at this run's [0.00025]" in caplog.text
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4 * factor(4))
    assert sched.get_last_lr()[0] == opt.param_groups[0]["lr"]
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4 * factor(5))
    assert int(opt.state_dict()["state"][0]["step"]) == 4  # the moments came back
    # a longer schedule on resume (more trainer.steps): the first step takes the new schedule's rate at step 4, not
    # the saved one (the old schedule's)
    params, opt, sched = setup(1e-3, steps=40)
    load_checkpoint(tmp_path / "step-4", params, None, opt, sched, None, {})
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * _lr_lambda(2, 40)(4)) != pytest.approx(1e-3 * factor(4))


def test_resuming_an_earlier_checkpoint_beside_later_ones_is_refused(profiles, tmp_path):
    """A kill before the rerun overwrote them would have resume=latest pick an abandoned run's later step."""
    train(*make(profiles), fixed_data(), {**FAST, "steps": 4, "checkpoint_every": 2, "keep_checkpoints": 5}, tmp_path,
          progress=False)
    early = tmp_path / "checkpoints" / "step-0000002"
    with pytest.raises(TrainingError, match=r"later checkpoints \['step-0000004'\] of an earlier run; move or delete"):
        train(*make(profiles), fixed_data(), {**FAST, "steps": 4, "resume": str(early)}, tmp_path, progress=False)
    # ... and a checkpoint of another folder while this one holds any: retention would keep them beside this run's
    elsewhere = tmp_path / "elsewhere" / "step-0000002"
    shutil.copytree(early, elsewhere)
    with pytest.raises(TrainingError, match=r"also holds checkpoints \['step-0000002', 'step-0000004'\] of an "):
        train(*make(profiles), fixed_data(), {**FAST, "steps": 4, "resume": str(elsewhere)}, tmp_path,
              progress=False)
    with pytest.raises(TrainingError, match=r"trainer.keep_checkpoints=-1"):
        train(*make(profiles), fixed_data(), {**FAST, "steps": 1, "keep_checkpoints": -1}, tmp_path, progress=False)
    # a fresh run beside them: its retention would delete its own newest checkpoint (sorted before step-0000004),
    # and a later resume=latest would continue the old run under the new config
    with pytest.raises(TrainingError, match=r"holds checkpoints of an earlier run \(step-0000004\); "
                                            r"trainer.resume=latest continues it"):
        train(*make(profiles), fixed_data(), {**FAST, "steps": 2, "checkpoint_every": 1}, tmp_path, progress=False)
    # resume=latest past this run's steps: the loop would be empty and the old weights saved under this config
    with pytest.raises(TrainingError, match=r"step-0000004 is past trainer.steps=2"):
        train(*make(profiles), fixed_data(), {**FAST, "steps": 2, "resume": "latest"}, tmp_path, progress=False)
    # resume=latest over step folders none of which has its state.json: the advice was to pass resume=latest
    damaged = tmp_path / "damaged"
    (damaged / "checkpoints" / "step-0000002").mkdir(parents=True)
    with pytest.raises(TrainingError, match=r"holds step-0000002 but none has its state.json .*delete them"):
        train(*make(profiles), fixed_data(), {**FAST, "steps": 2, "checkpoint_every": 1, "resume": "latest"},
              damaged, progress=False)


def test_bad_resume_path(profiles, tmp_path):
    backbone, cond = make(profiles)
    with pytest.raises(TrainingError, match="trainer.resume"):
        train(backbone, cond, fixed_data(), {**FAST, "steps": 2, "resume": str(tmp_path / "nope")}, tmp_path,
              progress=False)


def test_generator_is_deterministic_and_draws_unseen_profiles(profiles, hpo_kg, catalog):
    backbone, cond = make(profiles)
    cond.eval()  # as every loaded or trained run samples: token centring reads its running statistics
    gen = Generator(backbone, cond, guidance=2.0, steps=3)
    unseen = ProfileBuilder(hpo_kg, catalog).build("ORPHA:648")  # never in the conditioner's profiles
    reqs = [Request(profiles[0], 2.0, seed=5), Request(unseen, 3.0, seed=6)]
    a, b = gen.sample(reqs), gen.sample(reqs)
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.uint8 and torch.equal(a, b)
    alone = gen.sample(reqs[:1])
    assert torch.equal(alone[0], a[0])  # a request's image does not depend on its batch mates ...
    # ... nor its tokens (the adapter's zero-initialised value projection hides them from an untrained UNet)
    with torch.no_grad():
        both, one = gen._tokens(reqs), gen._tokens(reqs[:1])
    assert torch.allclose(both[:1], one, atol=1e-6) and not torch.allclose(both[0], both[1])


def test_phenotype_tokens_that_find_no_slot_are_reported(profiles, caplog):
    """Down syndrome has more phenotypes than 3 slots: the conditioner says how many get no token, not silence."""
    import logging

    from kgface.encoders import KGEncoder

    backbone = build_backbone(MICRO, num_tokens=4, with_adapter=True)
    encoder = KGEncoder(out_dim=backbone.cross_attention_dim, hidden=32, layers=1, num_tokens=4, heads=2,
                        tokens="phenotypes")
    with caplog.at_level(logging.WARNING, logger="kgface.diffusion.conditioning"):
        cond = Conditioner("kg", profiles, backbone, encoder, encoder.graph_builder(), num_tokens=4)
    lost = len(profiles[0].phenotypes) - 3 + max(0, len(profiles[1].phenotypes) - 3)
    assert f"{lost} phenotypes of 3 profiles get no token slot" in caplog.text
    # ... and at drawing time, for what is asked then (an unseen disease, a composed set), once per generator
    caplog.clear()
    gen = Generator(backbone, cond, guidance=2.0, steps=2)
    with caplog.at_level(logging.WARNING, logger="kgface.diffusion.generator"):
        gen.sample([Request(profiles[0], 2.0, seed=0)])
        gen.sample([Request(profiles[0], 2.0, seed=1)])
    said = [r for r in caplog.records if "get no token slot" in r.getMessage()]
    assert len(said) == 1 and f"{len(profiles[0].phenotypes) - 3} phenotypes" in said[0].getMessage()


def test_kg_text_reads_the_text_prompt_and_the_kg_tokens(profiles, hpo_kg, catalog):
    backbone, cond = make(profiles, "kg_text")
    _, text = make(profiles, "text")
    idx, stages = torch.tensor([0, 1]), torch.tensor([2, 3])
    prompts = cond.prompts(idx, stages)
    assert prompts == text.prompts(idx, stages) and profiles[0].name in prompts[0]
    tokens = cond.tokens(idx, stages.float())
    assert tokens.shape == (2, 4, backbone.cross_attention_dim) and not torch.allclose(tokens[0], tokens[1])
    assert cond.uses_kg and cond.uses_text and cond.uses_tokens
    assert {id(p) for p in cond.trainable_parameters()} == {id(p) for p in cond.encoder.parameters()}
    # an unseen disease: its prompt names it, its tokens come from its phenotypes
    unseen = ProfileBuilder(hpo_kg, catalog).build("ORPHA:648")
    gen = Generator(backbone, cond, steps=2)
    reqs = [Request(unseen, 3.0, seed=1)]
    assert unseen.name in gen.prompts(reqs)[0]
    assert gen._tokens(reqs).shape == (1, 4, backbone.cross_attention_dim)
    # what the sampler reads: the naming prompt (not the empty one) and the tokens, each with its null
    states, tokens, null_states, null_tokens, _, _ = gen.condition(reqs)
    assert not torch.allclose(states, null_states)
    assert torch.equal(tokens, gen._tokens(reqs)) and null_tokens.shape == tokens.shape
    assert not torch.allclose(tokens, null_tokens)
    # null_text="prompt": the unconditional branch keeps the request's prompt, so guidance pushes along the tokens
    states_p, tokens_p, null_states_p, null_tokens_p, _, _ = Generator(backbone, cond, steps=2,
                                                                       null_text="prompt").condition(reqs)
    assert torch.equal(null_states_p, states_p) and torch.equal(states_p, states)
    assert torch.equal(null_tokens_p, null_tokens) and torch.equal(tokens_p, tokens)
    text_backbone, text = make(profiles, "text")
    with pytest.raises(ValueError, match="has none"):  # text alone would leave guidance no direction
        Generator(text_backbone, text, null_text="prompt")
    with pytest.raises(ValueError, match="'empty' or 'prompt'"):
        Generator(backbone, cond, null_text="neutral")


def test_kg_text_training_gives_the_unet_the_prompt_and_the_tokens(profiles, tmp_path):
    """A spy on the UNet's forward: each kg_text training batch carries the naming prompts and the KG tokens."""
    backbone, cond = make(profiles, "kg_text")
    seen = []

    def spy(module, args, kwargs):
        added = kwargs.get("added_cond_kwargs") or {}
        seen.append((kwargs["encoder_hidden_states"].detach(), added.get("image_embeds")))

    handle = backbone.unet.register_forward_pre_hook(spy, with_kwargs=True)
    data = fixed_data(8)
    before = [p.detach().clone() for p in cond.encoder.parameters()]
    train(backbone, cond, data, {**FAST, "steps": 2, "cfg_drop_tokens": 0.0, "cfg_drop_both": 0.0},
          tmp_path, progress=False)
    handle.remove()
    assert len(seen) == 2
    empty, _ = backbone.text_states([""])
    for states, image_embeds in seen:
        assert image_embeds is not None and image_embeds[0].shape[1:] == (4, backbone.cross_attention_dim)
        assert not torch.allclose(states, empty.expand_as(states))  # the prompt, not the empty one
    assert any(not torch.equal(a, b) for a, b in zip(before, cond.encoder.parameters()))  # tokens got gradient


def test_text_prompts_read_the_language_layers_descriptions(profiles):
    """The stage sentences of descriptions.json (an LLM's, or llm=none's templates) are what conditioning=text trains
    and draws with; llm=none's give the template prompts exactly; atlas / observed-set faces keep naming every
    phenotype; a disease without a description falls back to the template."""
    from kgface.prompts import template_descriptions, training_prompt

    backbone = build_backbone(MICRO, num_tokens=4, with_adapter=False)
    none = {p.disease_id: template_descriptions(p) for p in profiles}
    llm = {d: v.model_copy(deep=True) for d, v in none.items()}
    llm["ORPHA:870"].stages[2].description = "A face whose cheeks look flushed and whose eyes slant upwards."
    idx, stages = torch.tensor([0, 0, 1]), torch.tensor([2, 3, 2])
    plain = Conditioner("text", profiles, backbone, num_tokens=4).prompts(idx, stages)
    assert Conditioner("text", profiles, backbone, num_tokens=4, descriptions=none).prompts(idx, stages) == plain
    read = Conditioner("text", profiles, backbone, num_tokens=4, descriptions=llm, full_prompts=[1])
    got = read.prompts(idx, stages)
    assert got[0].endswith("A face whose cheeks look flushed and whose eyes slant upwards.")
    assert got[1] == plain[1]  # another stage: the (unchanged) description of stage 3
    assert got[2] == training_prompt(profiles[1], 2, conditioning="text", every_phenotype=True)  # the full set
    gen = Generator(backbone, Conditioner("text", profiles, backbone, num_tokens=4, descriptions=llm))
    assert gen.prompts([Request(profiles[0], 2.0, 0)]) == [got[0]]
    # what the evaluator's profile match expects is what the sentence cites (an LLM's own set, not the template's)
    llm["ORPHA:870"].stages[2].phenotypes = [llm["ORPHA:870"].stages[2].phenotypes[0]]
    asked = gen.requested_phenotypes([Request(profiles[0], 2.0, 0), Request(profiles[0], 3.0, 0)])
    assert asked == [llm["ORPHA:870"].stages[2].phenotypes, list(none["ORPHA:870"].stages[3].phenotypes)]
    assert len(none["ORPHA:870"].stages[2].phenotypes) > 1  # the template's set differs from the cited one
    gen = Generator(backbone, Conditioner("text", profiles, backbone, num_tokens=4, descriptions={}))
    assert gen.prompts([Request(profiles[0], 2.0, 0)]) == [plain[0]]
    assert gen.requested_phenotypes([Request(profiles[0], 2.0, 0)]) is None  # no descriptions: the template's


def test_a_prompt_longer_than_the_text_context_is_said_once(caplog):
    """The text encoder keeps 77 tokens; a prompt naming every phenotype can be longer and lose its end: a warning
    (once per backbone), and the kept states are those of the prompt's first 77 tokens."""
    import logging

    backbone = build_backbone(MICRO, num_tokens=4, with_adapter=False)
    long = "a face with " + ", ".join(f"mark number {i}" for i in range(60))
    with caplog.at_level(logging.WARNING, logger="kgface.diffusion.backbones"):
        backbone.text_states(["a face"])
        assert "exceed" not in caplog.text
        states, _ = backbone.text_states([long, long + " and one more"])
        backbone.text_states([long + " twice"])
    assert caplog.text.count("exceed the text encoder's 77 tokens") == 1 and "2 of 2 prompts" in caplog.text
    assert torch.equal(states[0], states[1])  # the endings differ only past the 77th token


def test_resuming_without_a_saved_ema_starts_it_from_the_resumed_weights(profiles, tmp_path, caplog):
    import logging

    cfg = {**FAST, "steps": 2, "checkpoint_every": 2, "ema": False}
    train(*make(profiles), fixed_data(), cfg, tmp_path, progress=False)
    backbone, cond = make(profiles, seed=7)
    with caplog.at_level(logging.WARNING, logger="kgface.diffusion.trainer"):
        out = train(backbone, cond, fixed_data(), {**cfg, "steps": 3, "ema": True, "resume": "latest"}, tmp_path,
                    progress=False)
    assert out["steps_this_call"] == 1 and "no ema.safetensors" in caplog.text
    from kgface.diffusion.trainer import EMA, load_checkpoint, restore_ema

    # the shadow is the resumed weights, not the fresh ones it was built from
    weights = [torch.nn.Parameter(torch.zeros(3))]
    ema = EMA(weights, 0.99)
    with torch.no_grad():
        weights[0].fill_(1.0)  # as load_checkpoint has just copied the checkpoint's weights in
    restore_ema(tmp_path / "checkpoints" / "step-0000002", ema, 0, weights)
    assert torch.equal(ema.shadow[0], torch.ones(3))
    # tensors of another size (a changed width: model.lora_rank, num_tokens, encoder.hidden) are one line naming
    # the tensor, not a copy_ traceback
    import shutil

    from safetensors.torch import save_file

    from kgface.diffusion.adapter import adapter_parameters

    torch.manual_seed(0)
    params = list(adapter_parameters(build_backbone(MICRO, num_tokens=4, with_adapter=True).unet).values())
    weights = {f"p{i:05d}": torch.zeros(1) for i in range(len(params))}
    fake = tmp_path / "fake"
    shutil.copytree(tmp_path / "checkpoints" / "step-0000002", fake)
    save_file(weights, str(fake / "trainable.safetensors"))
    with pytest.raises(TrainingError, match=r"trainable tensor 0 has shape \(1,\), this run's has"):
        load_checkpoint(fake, params, None, None, None)


def test_validation_grids_draw_with_the_ema_and_leave_training_untouched(profiles, tmp_path):
    # the grids are drawn with the EMA weights swapped in; the raw ones go back exactly, so a run with grids ends with
    # the same weights as one without
    seen = []

    def on_validate(step):
        seen.append([p.detach().clone() for p in list(b2.trainable) + c2.trainable_parameters()])

    cfg = {**FAST, "steps": 3, "val_every": 1}
    b1, c1 = make(profiles)
    train(b1, c1, fixed_data(), cfg, tmp_path / "plain", progress=False)
    b2, c2 = make(profiles)
    train(b2, c2, fixed_data(), cfg, tmp_path / "grids", progress=False, on_validate=on_validate)
    assert len(seen) == 3
    for a, b in zip(state(b1, c1), state(b2, c2)):
        assert torch.equal(a, b)
    # the last grid (after the last step) was drawn with other weights than the raw ones the loop ends with: the EMA's
    assert not all(torch.equal(s, p) for s, p in zip(seen[-1], list(b2.trainable) + c2.trainable_parameters()))


def test_a_training_record_from_another_version_resumes_unchecked(tmp_path, caplog):
    """training_setup hashed differently before: same settings gave other hashes, and the refusal blamed them."""
    from kgface.diffusion.trainer import _check_same_setup

    with pytest.raises(TrainingError, match=r"\(seed differ"):
        _check_same_setup(tmp_path, {"version": 2, "seed": 0}, {"version": 2, "seed": 1})
    with caplog.at_level(logging.WARNING, logger="kgface.diffusion.trainer"):
        _check_same_setup(tmp_path, {"seed": 0, "model": "a"}, {"version": 2, "seed": 0, "model": "b"})
    assert "training record is from another kgface version; resuming without comparing" in caplog.text
    # a group recorded since the checkpoint was written (the objective's, 2026-12-07) is not compared; one both hold is
    _check_same_setup(tmp_path, {"version": 2, "seed": 0}, {"version": 2, "seed": 0, "objective": "x"})
    with pytest.raises(TrainingError, match=r"\(trainer.cfg_drop_tokens / cfg_drop_text / cfg_drop_both / age_drop"):
        _check_same_setup(tmp_path, {"version": 2, "objective": "y"}, {"version": 2, "objective": "x"})


def test_a_run_with_nothing_to_train_is_refused_before_the_loop(profiles, tmp_path):
    """Text prompts at trainer.lr=0 move nothing (preflight refuses the config; this is the run built in code)."""
    backbone, cond = make(profiles, mode="text")
    with pytest.raises(TrainingError, match=r"conditioning=text: nothing to train"):
        train(backbone, cond, fixed_data(), {**FAST, "lr": 0.0}, tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_a_loop_that_stops_on_an_error_leaves_the_global_generators_as_they_were(profiles, tmp_path):
    """The per-step seeds of torch's global generators (for dropout) are forked: a loop ended by an error (a NaN
    loss) left them at its last step's seed, so whatever the process drew next repeated across runs."""
    backbone, cond = make(profiles, dropout=0.3)
    data = fixed_data()
    data.latents[:] = float("nan")
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    with pytest.raises(TrainingError, match=r"the loss became nan at step 0"):
        train(backbone, cond, data, FAST, tmp_path, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_checkpoint_names_its_tensors_and_a_resume_in_another_order_is_refused(profiles, tmp_path):
    """Tensors are saved by position: two parameters of one shape in swapped order (another config or kgface
    version) loaded crosswise without a word; their names now travel with them."""
    cfg = {**FAST, "steps": 4, "checkpoint_every": 2}
    backbone, cond = make(profiles)
    train(backbone, cond, fixed_data(), {**cfg, "steps": 2}, tmp_path, progress=False)
    state_file = tmp_path / "checkpoints" / "step-0000002" / "state.json"
    state = json.loads(state_file.read_text())
    names = state["names"]
    assert len(names) == len(backbone.trainable) + len(cond.trainable_parameters()) == len(set(names))
    assert any(n.startswith("unet.") for n in names) and any(n.startswith("conditioner.encoder.") for n in names)
    i = next(i for i, n in enumerate(names) if n.startswith("conditioner."))
    state["names"] = names[:i] + [names[i + 1], names[i]] + names[i + 2:]
    state_file.write_text(json.dumps(state))
    backbone, cond = make(profiles)
    with pytest.raises(TrainingError, match=rf"trainable tensor {i} is {re.escape(names[i + 1])} there and "
                                            rf"{re.escape(names[i])} in this run"):
        train(backbone, cond, fixed_data(), {**cfg, "resume": "latest"}, tmp_path, progress=False)
    del state["names"]  # a checkpoint from before the names: resumes as before
    state_file.write_text(json.dumps(state))
    assert train(backbone, cond, fixed_data(), {**cfg, "resume": "latest"}, tmp_path, progress=False)["steps"] == 4
