"""The pretrained path end to end: tiny SD1.5- and SDXL-layout folders train (LoRA + adapter + KG encoder) and
sample through `python -m kgface.train`, exactly as a user's folder would, with bf16 autocast on the CPU."""
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

RUN = ["data.size=32", "data.supersample=2", "data.per_class=2", "data.healthy_per_class=4", "data.identities=60",
       "data.atlas.faces=0", "data.diseases=[ORPHA:870,MONDO:0011438]", "data.heldout=[]", "model.resolution=32", "model.lora_rank=4",
       "model.num_tokens=4", "model.sample.steps=2", "encoder.hidden=32", "encoder.layers=1", "encoder.heads=2",
       "trainer.steps=3", "trainer.batch_size=2", "trainer.checkpoint_every=0", "trainer.mixed_precision=bf16",
       "samples.per_cell=1", "samples.stages=[3]", "progress=false", "evaluate=false",
       "model.gradient_checkpointing=true"]  # as every sd15/sdxl config


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_pretrained_folder_trains_and_samples(kind, request, tmp_path):
    from kgface.train import main

    folder = request.getfixturevalue(f"{kind}_folder")
    out = tmp_path / kind
    # given relative, as users type it: config.yaml records it absolute, so the run loads from anywhere
    relative = os.path.relpath(folder, Path.cwd())
    main(RUN + [f"model={kind}", f"model.pretrained={relative}", f"hydra.run.dir={out}"])
    saved = OmegaConf.load(out / "config.yaml").model.pretrained
    assert Path(saved).is_absolute() and Path(saved) == Path(os.path.abspath(folder))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3 and "vae" not in metrics  # the folder's own VAE, nothing trained
    assert (out / "model" / "unet_lora.safetensors").is_file()
    assert (out / "adapter.safetensors").is_file() and (out / "encoder" / "model.safetensors").is_file()
    assert (out / "samples" / "grid.png").is_file()


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_a_half_precision_base_trains_fp32_lora_and_adapter_weights_and_reloads_so(kind, request, tmp_path):
    """model.dtype=bf16 with trainer.mixed_precision=bf16 (diffusers' LoRA recipe): half the frozen weights' memory;
    what trains, is saved and is reloaded stays fp32; the run draws its samples and kgface.generate's loader gets
    the same mix back."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from kgface.diffusion.adapter import adapter_parameters
    from kgface.diffusion.run_loading import load_run
    from kgface.diffusion.sampling import half_weights_dtype
    from kgface.train import main

    out, folder = tmp_path / "run", request.getfixturevalue(f"{kind}_folder")
    main(RUN + [f"model={kind}", f"model.pretrained={folder}", "model.dtype=bf16", f"hydra.run.dir={out}"])
    lora = load_file(str(out / "model" / "unet_lora.safetensors"))
    adapter = load_file(str(out / "adapter.safetensors"))
    assert lora and {v.dtype for v in [*lora.values(), *adapter.values()]} == {torch.float32}
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # trained, not the zero init
    assert (out / "samples" / "grid.png").is_file()
    backbone, _, _, cfg = load_run(out)
    assert cfg.model.dtype == "bf16" and half_weights_dtype(backbone.unet) == torch.bfloat16
    assert {p.dtype for p in adapter_parameters(backbone.unet).values()} == {torch.float32}
    assert all(torch.equal(adapter[k], v) for k, v in adapter_parameters(backbone.unet).items())  # not rounded
    assert {p.dtype for n, p in backbone.unet.named_parameters() if "lora_" in n} == {torch.float32}
    reloaded = get_peft_model_state_dict(backbone.unet)
    assert set(reloaded) == set(lora) and all(torch.equal(lora[k], reloaded[k]) for k in lora)


@pytest.mark.parametrize("override,message", [
    pytest.param("model.dtype=fp16", "model.dtype=fp16 needs a CUDA GPU (accelerate runs no fp16 autocast or loss "
                 "scaling on the CPU); use model.dtype=bf16 trainer.mixed_precision=bf16",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's refusal")),
    ("model.dtype=fp8", "model.dtype=fp8 is unknown; use fp32, bf16 or fp16"),
    ("data.size=64", "data.size=64 but model.resolution is 32: the model trains on data.size images and samples at "
                     "32"),
    # null: the folder's own side, which build_backbone reads (the check was skipped)
    ("model.resolution=null data.size=64", "data.size=64 but model.resolution (null: model.pretrained's own side) is "),
    # LoRA settings: a null rank or alpha failed in int() / float() with a traceback
    ("model.lora_rank=null", "model.lora_rank=None: a whole number >= 0"),
    ("model.lora_alpha=0", "model.lora_alpha=0: a number > 0 (null: the rank)"),
    # text prompts train the LoRA alone: AdamW([]) was a traceback after every latent was encoded
    ("model.lora_rank=0 conditioning=text", "model.lora_rank=0 with conditioning text: a pretrained UNet trains only"),
    ("trainer.lr=0 trainer.adapter_lr=1e-3 baselines=[kg,text]", "trainer.lr=0 with conditioning text: text prompts"),
])
def test_settings_that_would_train_wrong_stop_in_preflight(override, message, sd15_folder, tmp_path, capsys):
    from kgface.train import main

    with pytest.raises(SystemExit) as info:
        main(RUN + ["model=sd15", f"model.pretrained={sd15_folder}", *override.split(), f"hydra.run.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "config.yaml").exists()  # nothing built



@pytest.mark.parametrize("experiment,kind", [("sd15_acne04", "sd15"), ("sd15_disease_faces", "sd15"),
                                             ("sdxl_acne04", "sdxl")])
def test_the_gpu_recipes_load_frozen_weights_in_bf16_and_pass_the_preflight(experiment, kind, request):
    from kgface.config import compose
    from kgface.errors import UserError
    from kgface.run_checks import preflight

    folder = request.getfixturevalue(f"{kind}_folder")
    cfg = compose("train", [f"experiment={experiment}", f"model.pretrained={folder}", "data.root=/data", "evaluate=false"])
    assert cfg.model.name == kind and cfg.model.dtype == cfg.trainer.mixed_precision == "bf16"
    preflight(cfg)  # raises a UserError on a recipe the trainer would refuse
    from kgface.config import container
    from kgface.diffusion.backbones import build_backbone

    b = build_backbone(container(cfg.model), num_tokens=int(cfg.model.num_tokens))  # the trainer's backbone
    trainable = {id(p) for p in b.trainable}
    base = [p for n, p in b.unet.named_parameters() if "lora_" not in n and id(p) not in trainable]
    assert base and all(not p.requires_grad and p.dtype == torch.bfloat16 for p in base)  # frozen, half precision
    assert b.trainable and all(p.requires_grad and p.dtype == torch.float32 for p in b.trainable)
    assert {n for n, p in b.unet.named_parameters() if id(p) in trainable and "lora_" not in n}  # the adapter's
    assert any(id(p) in trainable for n, p in b.unet.named_parameters() if "lora_" in n)  # the recipe's LoRA
    frozen = [*b.vae.parameters(), *b.text_encoder.parameters(),
              *(b.text_encoder_2.parameters() if b.text_encoder_2 is not None else [])]
    assert not any(p.requires_grad for p in frozen)
    with pytest.raises(UserError, match="model.dtype=bf16 needs trainer.mixed_precision=bf16 \\(it is no\\)"):
        preflight(compose("train", [f"experiment={experiment}", f"model.pretrained={folder}", "data.root=/data",
                                    "evaluate=false", "trainer.mixed_precision=no"]))
