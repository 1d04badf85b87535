"""KG adapter: equality with the base UNet at init and at scale 0, save/load, gradients, stock pipelines, errors."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from kgface.diffusion import (
    AdapterError,
    adapter_parameters,
    add_unet_lora,
    attach_kg_adapter,
    build_tiny_stack,
    detach_kg_adapter,
    get_adapter_scale,
    kg_added_cond_kwargs,
    load_kg_adapter,
    load_pretrained_stack,
    mark_trainable,
    pipeline_token_embeds,
    save_kg_adapter,
    set_adapter_scale,
    tiny_config,
    trainable_parameters,
)
from kgface.errors import UserError

SMALL_TINY = {"unet_block_out_channels": [32, 64, 64], "unet_heads": [1, 2, 2], "cross_attention_dim": 384}


def small_unet(**over):
    torch.manual_seed(0)
    return build_tiny_stack({**SMALL_TINY, **over})[1]


def unet_inputs(unet, batch=2, seed=1):
    """Random (sample, timestep, text states, added_cond_kwargs) fitting `unet` (SDXL's text_time included)."""
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    size = c.sample_size
    sample = torch.randn(batch, c.in_channels, size, size, generator=g)
    t = torch.tensor([10, 700][:batch] + [300] * max(0, batch - 2))
    text = torch.randn(batch, 77, c.cross_attention_dim, generator=g)
    added = {}
    if c.addition_embed_type == "text_time":
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        added = {"text_embeds": torch.randn(batch, pooled, generator=g), "time_ids": torch.rand(batch, 6, generator=g)}
    return sample, t, text, added


def run(unet, inputs, tokens=None):
    sample, t, text, added = inputs
    kw = kg_added_cond_kwargs(tokens, added) if tokens is not None else (added or None)
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=text, added_cond_kwargs=kw).sample


def kg_tokens(unet, batch=2, k=8, seed=2):
    return torch.randn(batch, k, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(seed))


def perturb_adapter(unet, std=0.5, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(unet).values():
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def sd15_unet(sd15_folder):
    return load_pretrained_stack(sd15_folder, "sd15").unet


@pytest.fixture(scope="module")
def sdxl_unet(sdxl_folder):
    return load_pretrained_stack(sdxl_folder, "sdxl").unet


@pytest.fixture(params=["tiny", "sd15", "sdxl"])
def base_unet(request):
    """A fresh copy of each UNet layout (the adapter reads its sizes from every attention module)."""
    if request.param == "tiny":
        return small_unet()
    return copy.deepcopy(request.getfixturevalue(f"{request.param}_unet"))


# ---------------------------------------------------------------------------------------------- equality with base

def test_zero_init_equals_base_and_scale_zero_skips_branch(base_unet):
    inputs = unet_inputs(base_unet)
    base = run(base_unet, inputs)
    cfg = attach_kg_adapter(base_unet, num_tokens=8)
    assert cfg.token_dim == base_unet.config.cross_attention_dim and cfg.layers
    tokens = kg_tokens(base_unet)
    # zero-initialised to_v_ip: identical output to the base UNet at step 0
    assert torch.equal(run(base_unet, inputs, tokens), base)
    assert all(float(p.detach().abs().max()) == 0 for k, p in adapter_parameters(base_unet).items() if "to_v_ip" in k)
    # once trained (perturbed), the tokens matter at scale 1 ...
    perturb_adapter(base_unet)
    moved = run(base_unet, inputs, tokens)
    assert (moved - base).abs().max() > 1e-3
    # ... all-zero tokens are "no KG condition" (bias-free projections add exactly nothing) ...
    assert torch.allclose(run(base_unet, inputs, torch.zeros_like(tokens)), base, atol=1e-6)
    # ... and scale 0 is the base model again
    set_adapter_scale(base_unet, 0.0)
    assert get_adapter_scale(base_unet) == 0.0
    assert torch.equal(run(base_unet, inputs, tokens), base)
    set_adapter_scale(base_unet, 0.5)
    half = run(base_unet, inputs, tokens)
    assert (half - base).abs().max() > 1e-4 and (half - moved).abs().max() > 1e-4
    # detaching restores the stock processors and the plain call
    detach_kg_adapter(base_unet)
    assert torch.equal(run(base_unet, inputs), base)


def test_self_attention_keeps_its_processor():
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    unet = small_unet()
    before = dict(unet.attn_processors)
    attach_kg_adapter(unet)
    for name, proc in unet.attn_processors.items():
        if ".attn1." in name:
            assert proc is before[name]
        else:
            assert isinstance(proc, IPAdapterAttnProcessor2_0)
            attn = unet.get_submodule(name[: -len(".processor")])
            assert proc.to_k_ip[0].weight.shape == (attn.to_k.out_features, attn.to_k.in_features)
            # IP-Adapter's init: keys start as the text keys
            assert torch.equal(proc.to_k_ip[0].weight, attn.to_k.weight)
    with pytest.raises(AdapterError, match="already has"):
        attach_kg_adapter(unet)


def test_token_width_and_pipeline_batch_are_checked():
    unet = small_unet()
    attach_kg_adapter(unet)
    with pytest.raises(AdapterError, match="token_dim=384"):
        run(unet, unet_inputs(unet), torch.randn(2, 8, 100))
    with pytest.raises(AdapterError, match="one KG condition"):
        pipeline_token_embeds(torch.randn(2, 8, 384))
    neg, pos = pipeline_token_embeds(torch.ones(8, 384))[0].chunk(2)
    assert neg.abs().sum() == 0 and torch.equal(pos, torch.ones(1, 8, 384))
    # a learned null condition (the encoder's CFG tokens) is the negative half; without CFG only the condition
    null = torch.full((1, 8, 384), 0.5)
    neg, pos = pipeline_token_embeds(torch.ones(8, 384), null_tokens=null)[0].chunk(2)
    assert torch.equal(neg, null) and torch.equal(pos, torch.ones(1, 8, 384))
    (only,) = pipeline_token_embeds(torch.ones(8, 384), do_classifier_free_guidance=False)
    assert torch.equal(only, torch.ones(1, 8, 384))


# ---------------------------------------------------------------------------------------------- files

def test_save_load_round_trip_into_fresh_unet(tmp_path, sd15_folder):
    stack = load_pretrained_stack(sd15_folder, "sd15")
    attach_kg_adapter(stack.unet, num_tokens=4, scale=0.7)
    perturb_adapter(stack.unet)
    inputs, tokens = unet_inputs(stack.unet), kg_tokens(stack.unet, k=4)
    want = run(stack.unet, inputs, tokens)
    save_kg_adapter(stack.unet, tmp_path / "kg")
    assert sorted(p.name for p in (tmp_path / "kg").iterdir()) == ["adapter.json", "adapter.safetensors"]
    meta = json.loads((tmp_path / "kg" / "adapter.json").read_text())
    assert meta["num_tokens"] == 4 and meta["scale"] == 0.7 and meta["token_dim"] == 32
    assert set(meta["layers"]) == {k.rsplit(".", 2)[0] for k in adapter_parameters(stack.unet)}

    fresh = load_pretrained_stack(sd15_folder, "sd15").unet  # a freshly loaded base model
    cfg = load_kg_adapter(fresh, tmp_path / "kg")
    assert cfg.num_tokens == 4 and get_adapter_scale(fresh) == pytest.approx(0.7)
    assert torch.equal(run(fresh, inputs, tokens), want)
    for k, v in adapter_parameters(fresh).items():
        assert torch.equal(v, adapter_parameters(stack.unet)[k])
    # a scale given at load time wins over the saved one
    other = load_pretrained_stack(sd15_folder, "sd15").unet
    load_kg_adapter(other, tmp_path / "kg", scale=0.0)
    assert torch.equal(run(other, inputs, tokens), run(load_pretrained_stack(sd15_folder, "sd15").unet, inputs))


def test_shape_and_key_mismatch_name_file_and_key(tmp_path):
    unet = small_unet()
    attach_kg_adapter(unet)
    save_kg_adapter(unet, tmp_path / "kg")
    # same attention layout, other widths -> shape error naming the key
    wider = small_unet(unet_block_out_channels=[32, 64, 96], unet_heads=[1, 2, 3])
    with pytest.raises(AdapterError, match=r"adapter\.safetensors: '[\w.]+attn2\.to_[kv]_ip\.weight' has shape"):
        load_kg_adapter(wider, tmp_path / "kg")
    assert not any("to_k_ip" in n for n, _ in wider.named_parameters())  # nothing attached on failure
    # other attention layout -> key error naming the file and a key
    deeper = small_unet(unet_layers_per_block=2)
    with pytest.raises(AdapterError, match=r"adapter\.safetensors lacks '.*attn2\.to_k_ip\.weight'"):
        load_kg_adapter(deeper, tmp_path / "kg")
    with pytest.raises(AdapterError, match="does not exist"):
        load_kg_adapter(small_unet(), tmp_path / "nowhere")
    meta = json.loads((tmp_path / "kg" / "adapter.json").read_text())
    (tmp_path / "kg" / "adapter.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "token_dim"}))
    with pytest.raises(AdapterError, match=r"adapter\.json: lacks token_dim"):  # not 'another base model'
        load_kg_adapter(small_unet(), tmp_path / "kg")
    (tmp_path / "kg" / "adapter.json").write_text('{"format": "something-else"}')
    with pytest.raises(AdapterError, match="not a kgface KG adapter"):
        load_kg_adapter(small_unet(), tmp_path / "kg")


def test_only_safetensors_is_read(tmp_path, monkeypatch):
    unet = small_unet()
    attach_kg_adapter(unet)
    perturb_adapter(unet)
    save_kg_adapter(unet, tmp_path / "kg")
    bogus = {k: torch.full_like(v, 7.0) for k, v in adapter_parameters(unet).items()}
    torch.save(bogus, tmp_path / "kg" / "adapter.bin")
    torch.save(bogus, tmp_path / "kg" / "pytorch_model.bin")

    def no_pickle(*a, **k):
        raise AssertionError("torch.load called: adapters must be read from safetensors only")

    monkeypatch.setattr(torch, "load", no_pickle)
    fresh = small_unet()
    load_kg_adapter(fresh, tmp_path / "kg")
    for k, v in adapter_parameters(fresh).items():
        assert torch.equal(v, adapter_parameters(unet)[k])
    (tmp_path / "kg" / "adapter.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"adapter\.safetensors is missing"):
        load_kg_adapter(small_unet(), tmp_path / "kg")


# ---------------------------------------------------------------------------------------------- training

def test_gradients_reach_only_lora_and_adapter():
    unet = small_unet()
    inputs = unet_inputs(unet)
    base = run(unet, inputs)
    add_unet_lora(unet, rank=4)
    attach_kg_adapter(unet)
    trainable = mark_trainable(unet)
    assert trainable == trainable_parameters(unet)
    names = set(trainable)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert any("to_k_ip" in n for n in names) and any("to_v_ip" in n for n in names)
    assert all("lora_" in n or "_ip." in n for n in names)
    tokens = kg_tokens(unet)
    assert torch.equal(run(unet, inputs, tokens), base)  # LoRA B and to_v_ip start at zero: still the base

    def step():
        unet.zero_grad(set_to_none=True)
        sample, t, text, added = inputs
        out = unet(sample, t, encoder_hidden_states=text, added_cond_kwargs=kg_added_cond_kwargs(tokens)).sample
        out.pow(2).mean().backward()

    step()  # at step 0 the zero-initialised to_v_ip already receives gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trainable.items() if "to_v_ip" in n)
    with torch.no_grad():  # as after a few optimiser steps: every trainable weight non-zero
        g = torch.Generator().manual_seed(5)
        for p in trainable.values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    step()
    for n, p in unet.named_parameters():
        if n in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    frozen = sum(p.numel() for n, p in unet.named_parameters() if n not in names)
    assert frozen > 3 * sum(p.numel() for p in trainable.values())


def test_tiny_stack_defaults():
    vae, unet = build_tiny_stack()
    n = sum(p.numel() for p in unet.parameters())
    assert 7e6 < n < 11e6
    assert unet.config.sample_size == 8 and unet.config.in_channels == 4 and unet.config.cross_attention_dim == 384
    with torch.no_grad():
        lat = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert lat.shape == (1, 4, 8, 8)
    with pytest.raises(UserError, match="model.tiny has no key 'nope'"):
        tiny_config({"nope": 1})
    with pytest.raises(UserError, match="unet_heads needs 3 entries"):
        tiny_config({"unet_heads": [2, 2]})


# ---------------------------------------------------------------------------------------------- stock pipelines

def _finite_images(out):
    images = np.asarray(out.images)
    assert np.isfinite(images).all()
    return images


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
def test_sd15_folder_pipelines_with_adapter_and_cfg(sd15_folder, tmp_path, img2img):
    stack = load_pretrained_stack(sd15_folder, "sd15")
    attach_kg_adapter(stack.unet)
    perturb_adapter(stack.unet)
    pipe = stack.pipeline(img2img=img2img)
    assert pipe.image_encoder is None and pipe.unet is stack.unet
    tokens = kg_tokens(stack.unet, batch=1)
    extra = {"image": torch.rand(1, 3, 32, 32), "strength": 0.9} if img2img else {"height": 32, "width": 32}

    def sample(embeds, pipe=pipe):
        return _finite_images(pipe("a face", ip_adapter_image_embeds=embeds, guidance_scale=5.0,
                                   num_inference_steps=2, output_type="np",
                                   generator=torch.Generator().manual_seed(0), **extra))

    with_kg = sample(pipeline_token_embeds(tokens))
    assert with_kg.shape == (1, 32, 32, 3)
    assert np.abs(with_kg - sample(pipeline_token_embeds(torch.zeros_like(tokens)))).max() > 1e-4  # tokens used
    # the saved adapter, re-attached to a freshly loaded folder, reproduces the images
    save_kg_adapter(stack.unet, tmp_path / "kg")
    fresh = load_pretrained_stack(sd15_folder, "sd15")
    load_kg_adapter(fresh.unet, tmp_path / "kg")
    np.testing.assert_allclose(sample(pipeline_token_embeds(tokens), fresh.pipeline(img2img=img2img)), with_kg,
                               atol=1e-5)


@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
def test_sdxl_folder_pipelines_with_adapter_and_cfg(sdxl_folder, img2img):
    stack = load_pretrained_stack(sdxl_folder, "sdxl")
    assert stack.text_encoder_2 is not None and stack.tokenizer_2 is not None
    cfg = attach_kg_adapter(stack.unet)
    assert cfg.token_dim == 64  # the two text encoders' widths together
    perturb_adapter(stack.unet)
    pipe = stack.pipeline(img2img=img2img)
    # its unconditional branch is the empty prompt's encoding, as kgface trains it, not SDXL's zeros
    assert pipe.config.force_zeros_for_empty_prompt is False
    neg = pipe.encode_prompt("a face", device="cpu", do_classifier_free_guidance=True)[1]
    assert neg.abs().max() > 0
    tokens = kg_tokens(stack.unet, batch=1)
    extra = {"image": torch.rand(1, 3, 32, 32), "strength": 0.9} if img2img else {"height": 32, "width": 32}

    def sample(embeds):
        return _finite_images(pipe("a face", ip_adapter_image_embeds=embeds, guidance_scale=5.0,
                                   num_inference_steps=2, output_type="np",
                                   generator=torch.Generator().manual_seed(0), **extra))

    with_kg = sample(pipeline_token_embeds(tokens))
    assert with_kg.shape == (1, 32, 32, 3)
    assert np.abs(with_kg - sample(pipeline_token_embeds(torch.zeros_like(tokens)))).max() > 1e-4


# ---------------------------------------------------------------------------------------------- folder errors

def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"model\.pretrained=.*nowhere does not exist; set model\.pretrained to a "
                                        r"local diffusers folder \(e\.g\. stable-diffusion-v1-5\)"):
        load_pretrained_stack(tmp_path / "nowhere", "sd15")
    with pytest.raises(UserError, match=r"model\.pretrained is not set"):
        load_pretrained_stack(None, "sd15")
    with pytest.raises(UserError, match="not a pretrained kind"):
        load_pretrained_stack(tmp_path, "sd3")


def test_a_run_that_trained_the_adapter_alone_saves_its_model_folder(tmp_path, sd15_folder):
    """model.lora_rank=0 (the KG adapter alone): saving model/ asked peft for a LoRA the UNet never had, an
    AttributeError after the whole training; the folder holds no LoRA file and loading needs none."""
    from kgface.diffusion.backbones import build_backbone, save_model_folder
    from kgface.diffusion.models import lora_state_dict

    backbone = build_backbone({"name": "sd15", "pretrained": str(sd15_folder), "lora_rank": 0}, with_adapter=True)
    assert lora_state_dict(backbone.unet) == {}
    save_model_folder(backbone, tmp_path / "model")
    assert not (tmp_path / "model" / "unet_lora.safetensors").exists()
    assert (tmp_path / "model" / "scheduler" / "scheduler_config.json").is_file()
    with_lora = build_backbone({"name": "sd15", "pretrained": str(sd15_folder), "lora_rank": 2}, with_adapter=True)
    assert lora_state_dict(with_lora.unet)  # a LoRA run still saves its weights


def test_variant_only_folder_loads(tmp_path, sd15_folder, sd15_unet):
    variant = tmp_path / "fp16-named"
    shutil.copytree(sd15_folder, variant)
    renamed = (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"))
    for sub, stem in renamed:
        (variant / sub / f"{stem}.safetensors").rename(variant / sub / f"{stem}.fp16.safetensors")
    stack = load_pretrained_stack(variant, "sd15")
    inputs = unet_inputs(stack.unet)
    assert torch.equal(run(stack.unet, inputs), run(sd15_unet, inputs))


def test_incomplete_folders_name_the_subfolder(tmp_path, sd15_folder):
    no_unet = tmp_path / "no-unet"
    shutil.copytree(sd15_folder, no_unet, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(UserError, match=r"model\.pretrained=.*no-unet is incomplete: subfolder unet/ is missing"):
        load_pretrained_stack(no_unet, "sd15")

    pickled = tmp_path / "bin-unet"
    shutil.copytree(sd15_folder, pickled)
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UserError, match=r"model\.pretrained=.*subfolder unet/ has no safetensors weights.*"
                                        r"diffusion_pytorch_model\.bin"):
        load_pretrained_stack(pickled, "sd15")

    no_cfg = tmp_path / "no-config"
    shutil.copytree(sd15_folder, no_cfg)
    (no_cfg / "vae" / "config.json").unlink()
    with pytest.raises(UserError, match=r"model\.pretrained=.*vae/config\.json is missing"):
        load_pretrained_stack(no_cfg, "sd15")

    truncated = tmp_path / "truncated"
    shutil.copytree(sd15_folder, truncated)
    (truncated / "text_encoder" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(UserError, match=r"model\.pretrained=.*could not load text_encoder/"):
        load_pretrained_stack(truncated, "sd15")

    # an SD 1.5 folder read as SDXL lacks the second text encoder
    with pytest.raises(UserError, match=r"subfolder text_encoder_2/ is missing"):
        load_pretrained_stack(sd15_folder, "sdxl")


def test_kind_and_objective_are_checked_from_the_configs(tmp_path, sd15_folder, sdxl_folder):
    """Before anything loads (train's preflight): the folder's kind against model=, and an objective kgface trains
    (epsilon or v); a v folder (SD 2.x-768) trains and samples as v unless model.schedule says otherwise."""
    from kgface.diffusion.backbones import build_backbone
    from kgface.diffusion.models import check_pretrained_folder

    with pytest.raises(UserError, match=r"unet/ is an SDXL UNet \(addition_embed_type='text_time'\); use model=sdxl"):
        check_pretrained_folder(sdxl_folder, "sd15")
    single = tmp_path / "v1-5-pruned.safetensors"  # the common mistake: it exists, but is not a folder
    single.write_bytes(b"weights")
    with pytest.raises(UserError, match=r"is a single-file checkpoint; kgface loads a diffusers folder"):
        check_pretrained_folder(single, "sd15")
    v_pred = tmp_path / "v-pred"
    shutil.copytree(sd15_folder, v_pred)
    path = v_pred / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "v_prediction",
                                "timestep_spacing": "linspace"}))
    check_pretrained_folder(v_pred, "sd15")
    backbone = build_backbone({"name": "sd15", "pretrained": str(v_pred), "lora_rank": 0}, with_adapter=False)
    # the folder's objective, but the leading ladder every pretrained run sampled on (the folder's spacing is its
    # own sampler's) unless model.schedule.timestep_spacing says otherwise
    assert backbone.scheduler.config.prediction_type == "v_prediction"
    assert backbone.scheduler.config.timestep_spacing == "leading"
    backbone = build_backbone({"name": "sd15", "pretrained": str(v_pred), "lora_rank": 0,
                               "schedule": {"prediction_type": "epsilon", "timestep_spacing": "trailing"}},
                              with_adapter=False)
    assert backbone.scheduler.config.prediction_type == "epsilon"
    assert backbone.scheduler.config.timestep_spacing == "trailing"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_type": "sample"}))
    with pytest.raises(UserError, match=r"prediction_type='sample'; kgface trains and samples epsilon or v_pred"):
        check_pretrained_folder(v_pred, "sd15")
    path.write_text("{not json")
    with pytest.raises(UserError, match=r"scheduler/scheduler_config.json is not readable JSON"):
        check_pretrained_folder(v_pred, "sd15")
    assert check_pretrained_folder(sd15_folder, "sd15") == sd15_folder
    # an inpainting folder (a 9-channel UNet over a 4-channel VAE) failed in conv_in after the data was encoded
    inpaint = tmp_path / "inpaint"
    shutil.copytree(sd15_folder, inpaint)
    path = inpaint / "unet" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "in_channels": 9}))
    with pytest.raises(UserError, match=r"unet/ takes 9 and gives 4 channels, vae/ has 4 latent channels"):
        check_pretrained_folder(inpaint, "sd15")

