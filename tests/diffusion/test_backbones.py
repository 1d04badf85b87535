"""model.schedule -> the backbone's noise scheduler (kgface/diffusion/backbones.py)."""
import pytest

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
