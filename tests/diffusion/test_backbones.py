"""model.schedule -> the backbone's noise scheduler (kgface/diffusion/backbones.py)."""
from pathlib import Path

import pytest
import torch

from kgface.diffusion.backbones import _ddpm, schedule_settings
from kgface.errors import UserError


def test_the_default_schedule_is_what_kgface_trained_before_the_keys_existed():
    assert schedule_settings(None) == {"prediction_type": "epsilon", "rescale_betas_zero_snr": False,
                                       "timestep_spacing": "leading"}
    s = _ddpm({"prediction_type": None, "zero_terminal_snr": None, "timestep_spacing": None})  # nulls = defaults
    assert s.config.prediction_type == "epsilon" and s.config.timestep_spacing == "leading"
    assert 0 < s.alphas_cumprod[-1] < 1e-8  # the cosine schedule: nearly, not exactly, pure noise at the top


def test_zero_terminal_snr_v_prediction_and_trailing_spacing():
    s = _ddpm({"prediction_type": "v_prediction", "zero_terminal_snr": True, "timestep_spacing": "trailing"})
    assert s.config.prediction_type == "v_prediction" and s.config.timestep_spacing == "trailing"
    assert s.alphas_cumprod[-1] == 0 and s.alphas_cumprod[0] > 0.999


def test_a_pretrained_folders_schedule_is_kept_unless_the_config_says_otherwise():
    base = {"prediction_type": "v_prediction", "timestep_spacing": "leading", "beta_schedule": "scaled_linear"}
    assert schedule_settings({"prediction_type": None}, base)["prediction_type"] == "v_prediction"
    assert schedule_settings({"timestep_spacing": "trailing"}, base) == {
        "prediction_type": "v_prediction", "rescale_betas_zero_snr": False, "timestep_spacing": "trailing"}


@pytest.mark.parametrize("schedule, message", [
    ({"zero_terminal_snr": True}, r"zero_terminal_snr=true needs model.schedule.prediction_type=v_prediction"),
    ({"prediction_type": "sample"}, r"prediction_type='sample': kgface trains and samples epsilon or v_prediction"),
    ({"timestep_spacing": "even"}, r"timestep_spacing='even': use one of leading, trailing, linspace"),
    ({"spacing": "trailing"}, r"model.schedule.spacing is unknown; the keys are prediction_type, zero_terminal_snr"),
])
def test_bad_schedules_name_the_key(schedule, message):
    with pytest.raises(UserError, match=message):
        schedule_settings(schedule)


def test_a_model_folder_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A save that fails midway keeps the previous model/ (no new UNet beside an old VAE) and leaves no temporary
    folder behind, nor a UNet stripped of its adapter; a save that succeeds replaces every file."""
    from kgface.diffusion.adapter import has_kg_adapter
    from kgface.diffusion.backbones import build_backbone, save_model_folder
    from tests.diffusion.test_trainer import MICRO

    from kgface.diffusion.adapter import adapter_parameters

    backbone = build_backbone(MICRO, num_tokens=4, with_adapter=True)
    held = adapter_parameters(backbone.unet)  # what an optimizer / EMA would hold
    folder = tmp_path / "model"
    save_model_folder(backbone, folder)
    after = adapter_parameters(backbone.unet)
    assert set(after) == set(held) and all(after[k] is p for k, p in held.items())  # the same tensors back on
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert {str(p) for p in before} >= {"unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    with torch.no_grad():
        next(backbone.unet.parameters()).add_(1.0)  # the new UNet differs from the saved one
    for part in (backbone.unet, backbone.vae):  # the UNet's own save (the adapter is off it then), or a later one
        with monkeypatch.context() as m:
            m.setattr(part, "save_pretrained", broken)
            with pytest.raises(OSError, match="disk full"):
                save_model_folder(backbone, folder)
        assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and has_kg_adapter(backbone.unet)
    save_model_folder(backbone, folder)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert set(after) == set(before) and after[Path("unet/diffusion_pytorch_model.safetensors")] != \
        before[Path("unet/diffusion_pytorch_model.safetensors")]
    assert has_kg_adapter(backbone.unet) and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_tiny_models_prompt_encoder_is_named_by_its_own_key_and_must_match_the_unets_width(tmp_path):
    # model.text_model's errors told the user to set encoder.text_model; a wider text model was a shape traceback
    # inside attn2 at the first training step
    from kgface.diffusion.backbones import build_backbone

    with pytest.raises(UserError, match=r"^model.text_model: .*nowhere does not exist; set model.text_model"):
        build_backbone({"name": "tiny", "text_model": str(tmp_path / "nowhere")})
    tiny = {"image_size": 32, "vae_block_out_channels": [16, 32], "unet_block_out_channels": [32, 32],
            "unet_heads": [2, 2], "unet_attention_levels": [True, False], "norm_num_groups": 16,
            "cross_attention_dim": 32}
    with pytest.raises(UserError, match=r"model.text_model gives 384-d token states, the tiny UNet attends to 32-d"):
        build_backbone({"name": "tiny", "tiny": tiny})


def test_sdxl_extra_inputs_are_the_resolution_and_the_second_encoders_pooled_states(sdxl_folder):
    """SDXL's UNet reads time_ids (original size, crop top-left, target size) and text_embeds beside the states: the
    run's resolution, no crop, and text_encoder_2's pooled projection; a swapped order or the other encoder's
    output passed every test (the fixture's random UNet takes any)."""
    from kgface.diffusion.backbones import build_backbone

    b = build_backbone({"name": "sdxl", "pretrained": str(sdxl_folder), "lora_rank": 0, "resolution": 48},
                       with_adapter=False)
    states, added = b.text_states(["a face", "another face"])
    assert added["time_ids"].tolist() == [[48, 48, 0, 0, 48, 48]] * 2
    tok2 = b.tokenizer_2(["a face", "another face"], padding="max_length", truncation=True,
                         max_length=b.tokenizer_2.model_max_length, return_tensors="pt")
    with torch.no_grad():
        out2 = b.text_encoder_2(tok2.input_ids, output_hidden_states=True)
    assert torch.allclose(added["text_embeds"], out2.text_embeds, atol=1e-6)
    width1 = b.text_encoder.config.hidden_size
    assert states.shape[-1] == width1 + b.text_encoder_2.config.hidden_size
    assert torch.allclose(states[..., width1:], out2.hidden_states[-2], atol=1e-6)  # the penultimate layer
