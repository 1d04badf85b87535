"""`load_run` and `python -m kgface.generate` on pretrained-path runs: tiny SD1.5- and SDXL-layout folders trained
for two steps (LoRA + KG adapter + KG encoder), reloaded from the run directory and drawn from, with and without a
stacked identity adapter."""
import json

import numpy as np
import pytest
from PIL import Image

from kgface.data.manifest import read_manifest

from .test_pretrained_training import RUN

TWO_STEPS = [o for o in RUN if not o.startswith("trainer.steps=")] + ["trainer.steps=2"]


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def pretrained_run(request, tmp_path_factory):
    from kgface.train import main

    kind = request.param
    folder = request.getfixturevalue(f"{kind}_folder")
    out = tmp_path_factory.mktemp(f"run-{kind}") / "run"
    main(TWO_STEPS + [f"model={kind}", f"model.pretrained={folder}", f"hydra.run.dir={out}"])
    return kind, folder, out


def generate(run, out, *overrides):
    from kgface.generate import main

    return main([f"run={run}", f"hydra.run.dir={out}", "progress=false", *overrides])


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_load_run_restores_the_trained_lora_and_adapter(pretrained_run):
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from kgface.diffusion.adapter import adapter_state_dict
    from kgface.diffusion.run_loading import load_run

    kind, _, out = pretrained_run
    backbone, conditioner, profiles, cfg = load_run(out)
    assert backbone.kind == kind and backbone.image_size == 32 and conditioner.mode == "kg"
    saved = load_file(str(out / "model" / "unet_lora.safetensors"))
    lora = get_peft_model_state_dict(backbone.unet)
    assert saved and set(saved) == set(lora) and all(torch.equal(saved[k], lora[k].cpu()) for k in saved)
    assert any(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)  # trained, not the zero init
    adapter = load_file(str(out / "adapter.safetensors"))
    loaded = adapter_state_dict(backbone.unet)
    assert set(adapter) == set(loaded) and all(torch.equal(adapter[k], loaded[k]) for k in adapter)
    # the adapter trained on the pretrained path too: its zero-initialised value projections moved
    assert any(v.abs().max() > 0 for k, v in adapter.items() if k.endswith("to_v_ip.weight"))


def test_a_run_whose_base_folder_moved_says_where_to_point_it(pretrained_run, tmp_path):
    # generate and trial take no model group: "set model.pretrained" alone was advice no override could follow
    import shutil

    from omegaconf import OmegaConf

    from kgface.diffusion.run_loading import RunError, load_run

    _, _, out = pretrained_run
    moved = tmp_path / "run"
    shutil.copytree(out, moved)
    cfg = OmegaConf.load(moved / "config.yaml")
    cfg.model.pretrained = str(tmp_path / "gone")
    OmegaConf.save(cfg, moved / "config.yaml")
    with pytest.raises(RunError, match=r"a folder it was trained with cannot be loaded \(model.pretrained=.*gone does "
                                       r"not exist.*set model.pretrained in the run's config.yaml"):
        load_run(moved)


def test_a_run_samples_with_the_schedule_it_trained_with_whatever_its_base_says_now(pretrained_run, tmp_path):
    import shutil

    from omegaconf import OmegaConf

    from kgface.diffusion.run_loading import load_run

    _, folder, out = pretrained_run
    trained = json.loads((out / "model" / "scheduler" / "scheduler_config.json").read_text())
    base = tmp_path / "base"  # the base folder edited since: another prediction type
    shutil.copytree(folder, base)
    config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    other = "v_prediction" if trained["prediction_type"] == "epsilon" else "epsilon"
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": other}))
    moved = tmp_path / "run"
    shutil.copytree(out, moved)
    cfg = OmegaConf.load(moved / "config.yaml")
    cfg.model.pretrained = str(base)
    OmegaConf.save(cfg, moved / "config.yaml")
    assert load_run(moved)[0].scheduler.config.prediction_type == trained["prediction_type"]


def test_generate_draws_an_fp32_run_over_a_bf16_base_to_bf16_precision(pretrained_run, tmp_path, capsys):
    """dtype=bf16 at generation time: half the UNet's memory for a run trained in fp32; the same faces to within
    bf16 rounding, not other faces."""
    from kgface.diffusion.run_loading import RunError, load_run
    from kgface.diffusion.sampling import half_weights_dtype

    _, _, out = pretrained_run
    args = ["diseases=[ORPHA:870]", "stages=[3]", "seeds=[0,1]"]
    generate(out, tmp_path / "fp32", *args)
    generate(out, tmp_path / "bf16", *args, "dtype=bf16")
    df, _ = read_manifest(tmp_path / "fp32" / "manifest.csv")
    a = np.stack([pixels(tmp_path / "fp32" / r) for r in df["path"]])
    b = np.stack([pixels(tmp_path / "bf16" / r) for r in df["path"]])
    other = np.abs(a[0] - a[1]).mean()  # two seeds: what "another face" differs by
    assert 0 < np.abs(a - b).mean() < 0.1 * other, (np.abs(a - b).mean(), other)  # 0.6-0.8 of 42-48 here
    assert json.loads((tmp_path / "bf16" / "generation.json").read_text())["dtype"] == "bf16"
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from kgface.diffusion.adapter import adapter_state_dict

    backbone, _, _, cfg = load_run(out, dtype="bf16")
    assert half_weights_dtype(backbone.unet) == torch.bfloat16 and cfg.model.dtype == "bf16"
    assert next(backbone.vae.parameters()).dtype == torch.float32
    assert next(backbone.text_encoder.parameters()).dtype == torch.bfloat16
    lora, adapter = load_file(str(out / "model" / "unet_lora.safetensors")), load_file(str(out / "adapter.safetensors"))
    got_lora, got_adapter = get_peft_model_state_dict(backbone.unet), adapter_state_dict(backbone.unet)
    assert all(torch.equal(lora[k], got_lora[k]) for k in lora)  # fp32, not rounded to the base's bf16
    assert all(torch.equal(adapter[k], got_adapter[k]) for k in adapter)
    with pytest.raises(RunError, match="dtype=fp8 is unknown"):
        load_run(out, dtype="fp8")
    with pytest.raises(SystemExit) as info:  # fp16 on the CPU: refused as in training, before anything is written
        generate(out, tmp_path / "fp16", *args, "dtype=fp16", "device=cpu")
    assert info.value.code == 2 and "fp16 runs on a GPU only" in capsys.readouterr().err
    assert not (tmp_path / "fp16" / "manifest.csv").exists()
    # transformations over the bf16 base: from noise and from the input's DDIM inversion
    src = tmp_path / "fp32" / df["path"][0]
    for extra in ([], ["inversion=true", "source_disease=ORPHA:870", "source_stage=3"]):
        t_out = tmp_path / f"t{len(extra)}"
        generate(out, t_out, "mode=transform", f"input={src}", "target=healthy", "dtype=bf16", *extra)
        t, _ = read_manifest(t_out / "manifest.csv")
        assert pixels(t_out / t["path"][0]).shape == (32, 32, 3)


def test_a_lora_file_missing_weights_is_an_error_not_an_untrained_layer(pretrained_run, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from kgface.diffusion.run_loading import RunError, load_run

    _, _, out = pretrained_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path = copy / "model" / "unet_lora.safetensors"
    weights = load_file(str(path))
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, str(path))
    with pytest.raises(RunError, match=r"1 of the UNet's LoRA weights are not in the file \(first: .*lora_"):
        load_run(copy)
    # LoRA weights of another rank (or base model): a size mismatch, named, not peft's traceback
    save_file({k: v[:1].contiguous() if "lora_A" in k else v for k, v in weights.items()}, str(path))
    with pytest.raises(RunError, match=r"unet_lora\.safetensors: its LoRA weights do not fit .* at model\.lora_rank="):
        load_run(copy)


def test_the_lora_file_records_its_scale_and_an_edited_alpha_is_refused(pretrained_run, tmp_path):
    import shutil

    from omegaconf import OmegaConf
    from safetensors import safe_open

    from kgface.diffusion.run_loading import RunError, load_run

    _, _, out = pretrained_run
    cfg = OmegaConf.load(out / "config.yaml")
    with safe_open(str(out / "model" / "unet_lora.safetensors"), framework="pt") as f:
        meta = f.metadata()
    rank = int(cfg.model.lora_rank)
    alpha = float(rank if cfg.model.get("lora_alpha") is None else cfg.model.lora_alpha)
    assert meta["lora_rank"] == str(rank) and float(meta["lora_alpha"]) == alpha
    assert set(json.loads(meta["target_modules"])) == {"to_k", "to_q", "to_v", "to_out.0"}
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    cfg.model.lora_alpha = alpha * 2  # the same weights at twice the scale, had it loaded
    OmegaConf.save(cfg, copy / "config.yaml")
    with pytest.raises(RunError, match=r"unet_lora\.safetensors was trained at lora_alpha=.* but .*config\.yaml sets "
                                       r"model\.lora_alpha="):
        load_run(copy)
    # a copy cut short: one line naming the file (safetensors' own error named none)
    shutil.copy(out / "config.yaml", copy / "config.yaml")
    lora = copy / "model" / "unet_lora.safetensors"
    lora.write_bytes(lora.read_bytes()[:-100])
    with pytest.raises(RunError, match=r"unet_lora\.safetensors: unreadable \(SafetensorError: .*copy the run folder"):
        load_run(copy)


def test_generate_samples_transforms_and_stacks_an_identity(pretrained_run, tmp_path):
    from diffusers import UNet2DConditionModel

    from tests.diffusion.test_identity_adapter import write_tiny_clip_vision, write_tiny_ip_adapter

    kind, folder, out = pretrained_run
    args = ["diseases=[ORPHA:870,healthy]", "stages=[3]", "seeds=[0]"]
    generate(out, tmp_path / "s", *args)
    df, _ = read_manifest(tmp_path / "s" / "manifest.csv")
    assert df["disease"].tolist() == ["ORPHA:870", "healthy"]
    assert pixels(tmp_path / "s" / df["path"][0]).shape == (32, 32, 3)
    generate(out, tmp_path / "t", "mode=transform", f"input={tmp_path / 's' / df['path'][1]}", "target=ORPHA:870",
             "stage=2")
    t, _ = read_manifest(tmp_path / "t" / "manifest.csv")
    import torch

    from kgface.diffusion.editing import ssim

    def chw(path):
        return torch.from_numpy(pixels(path).astype(np.uint8)).permute(2, 0, 1)

    # the row's SSIM is the output's against its input, as saved (both uint8 PNGs at the model's side)
    assert float(t["identity_ssim"][0]) == pytest.approx(
        ssim(chw(tmp_path / "s" / df["path"][1]), chw(tmp_path / "t" / t["path"][0])), abs=1e-4)
    ident = json.loads((tmp_path / "t" / "generation.json").read_text())["identity"]
    assert ident["identity_similarity"] is None and "no evaluator/" in ident["note"]  # evaluate=false
    # an identity adapter for this base model (its LoRA-wrapped cross-attention and, for SDXL, text_time kwargs)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    ckpt = write_tiny_ip_adapter(unet, tmp_path / "ip" / "ip.safetensors")
    write_tiny_clip_vision(tmp_path / "ip" / "image_encoder")
    identity = [f"identity_adapter={ckpt}", f"identity_image={tmp_path / 's' / df['path'][1]}"]
    generate(out, tmp_path / "zero", *args, *identity, "identity_scale=0")
    generate(out, tmp_path / "id", *args, *identity, "identity_scale=2")
    for rel in df["path"]:
        assert np.array_equal(pixels(tmp_path / "s" / rel), pixels(tmp_path / "zero" / rel))
        assert not np.array_equal(pixels(tmp_path / "s" / rel), pixels(tmp_path / "id" / rel)), kind


def test_descriptions_are_read_only_from_runs_whose_prompts_read_them(tmp_path):
    """A run from before 2026-12-01 wrote descriptions.json but trained its text prompts on the template's
    sentences: generation must use the template (None) for it, and the file for a run that trained on it."""
    import json

    from kgface.diffusion.run_loading import descriptions_of
    from kgface.kg import healthy_profile
    from kgface.prompts import save_descriptions, template_descriptions

    save_descriptions(tmp_path / "descriptions.json", {"healthy": template_descriptions(healthy_profile("hpo"))})
    (tmp_path / "data.json").write_text(json.dumps({"manifest": "m.csv", "heldout": []}))
    assert descriptions_of(tmp_path) is None
    (tmp_path / "data.json").write_text(json.dumps({"manifest": "m.csv", "heldout": [],
                                                    "prompts_read_descriptions": True}))
    (tmp_path / "text").mkdir()  # a baselines generator reads its parent's files
    assert set(descriptions_of(tmp_path / "text")) == {"healthy"}
