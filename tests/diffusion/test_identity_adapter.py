"""Identity stacking: a user's IP-Adapter checkpoint beside the KG adapter on the same processors (tiny random
adapters and a tiny random CLIP vision model in diffusers' / transformers' own formats)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from kgface.diffusion.adapter import (
    AdapterError,
    attach_kg_adapter,
    get_adapter_scale,
    identity_image_embeds,
    kg_added_cond_kwargs,
    load_identity_encoder,
    set_adapter_scale,
    set_identity_embeds,
    set_identity_scale,
    stack_ip_adapter,
)
from kgface.diffusion.adapter import _cross_attention_modules, _linear

from .test_adapter import kg_tokens, perturb_adapter, run, small_unet, unet_inputs

CLIP_DIM = 16  # the tiny CLIP vision model's projection width (SD 1.5's IP-Adapter: 1024)


def write_tiny_ip_adapter(unet, path: Path, clip_dim: int = CLIP_DIM, tokens: int = 4, seed: int = 0) -> Path:
    """A random IP-Adapter checkpoint for `unet` in the single-file format diffusers' load_ip_adapter reads:
    `image_proj.proj.*` / `image_proj.norm.*` (the plain ImageProjection: clip_dim -> tokens x width) and
    `ip_adapter.<1, 3, 5, ...>.to_k_ip.weight` / `.to_v_ip.weight`, one pair per cross-attention layer."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    modules = list(_cross_attention_modules(unet).values())
    width = _linear(modules[0].to_k).in_features
    state = {"image_proj.proj.weight": torch.randn(tokens * width, clip_dim, generator=g) * 0.2,
             "image_proj.proj.bias": torch.zeros(tokens * width),
             "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    for i, attn in enumerate(modules):
        to_k = _linear(attn.to_k)
        for kind in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * i + 1}.{kind}.weight"] = torch.randn(to_k.out_features, to_k.in_features,
                                                                         generator=g) * 0.2
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_tiny_clip_vision(folder: Path, projection_dim: int = CLIP_DIM, image_size: int = 32, seed: int = 0) -> Path:
    """A random CLIPVisionModelWithProjection, written with save_pretrained (safetensors)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8, projection_dim=projection_dim)
    CLIPVisionModelWithProjection(cfg).eval().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture
def kg_unet():
    unet = small_unet()
    attach_kg_adapter(unet, num_tokens=8)
    perturb_adapter(unet)  # a KG branch that does something
    return unet


def test_stacked_identity_changes_the_output_and_scale_zero_is_kg_only(kg_unet, tmp_path):
    inputs, tokens = unet_inputs(kg_unet), kg_tokens(kg_unet)
    kg_only = run(kg_unet, inputs, tokens)
    adapter = stack_ip_adapter(kg_unet, write_tiny_ip_adapter(kg_unet, tmp_path / "ip.safetensors"), scale=0.0)
    set_identity_embeds(adapter, torch.randn(1, CLIP_DIM))
    assert adapter.index == 1 and not adapter.wants_hidden_states
    assert torch.equal(run(kg_unet, inputs, tokens), kg_only)  # identity scale 0: the KG-only output, bit for bit
    set_identity_scale(kg_unet, adapter, 1.0)
    with_id = run(kg_unet, inputs, tokens)
    assert (with_id - kg_only).abs().max() > 1e-3
    set_adapter_scale(kg_unet, 0.5)  # the KG scale leaves the identity's alone
    assert get_adapter_scale(kg_unet) == 0.5
    procs = [p for p in kg_unet.attn_processors.values() if hasattr(p, "to_k_ip")]
    assert procs and all(p.scale == [0.5, 1.0] and len(p.to_k_ip) == 2 for p in procs)
    # one reference per sample: a batch of 2 references tiles a CFG batch of 4 ([negative; positive])
    set_identity_embeds(adapter, torch.randn(2, CLIP_DIM))
    pair = run(kg_unet, inputs, tokens)  # references r0, r1 for samples 0, 1
    sample, t, text, added = inputs
    with torch.no_grad():  # the same two samples twice: each half must see r0, r1 in that order (not r0, r0, r1, r1)
        out = kg_unet(torch.cat([sample, sample]), torch.cat([t, t]), encoder_hidden_states=torch.cat([text, text]),
                      added_cond_kwargs=kg_added_cond_kwargs(torch.cat([tokens, tokens]),
                                                             {k: torch.cat([v, v]) for k, v in added.items()})).sample
    assert out.shape[0] == 4
    assert torch.allclose(out[:2], pair, atol=1e-5) and torch.allclose(out[2:], pair, atol=1e-5)


def test_identity_alone_matches_diffusers_own_loader(tmp_path):
    """On a UNet without a KG adapter (conditioning=text) the stacked checkpoint is exactly what diffusers'
    `_load_ip_adapter_weights` (behind `load_ip_adapter`) makes of the same file: the format is read alike."""
    from kgface.diffusion.adapter import read_ip_adapter

    unet = small_unet()
    stock = copy.deepcopy(unet)
    inputs = unet_inputs(unet)
    base = run(unet, inputs)
    path = write_tiny_ip_adapter(unet, tmp_path / "ip.safetensors")
    adapter = stack_ip_adapter(unet, path, scale=0.0)
    ref = torch.randn(1, CLIP_DIM)
    set_identity_embeds(adapter, ref)
    assert adapter.index == 0 and torch.equal(run(unet, inputs), base)
    from kgface.diffusion.adapter import AdapterError, has_kg_adapter, set_adapter_scale

    # its processors are IP-Adapter ones, yet there is no KG branch: generation.json's adapter_scale stays null and
    # an adapter scale cannot silence the identity branch
    assert not has_kg_adapter(unet)
    with pytest.raises(AdapterError, match="no KG adapter"):
        set_adapter_scale(unet, 0.0)
    set_identity_scale(unet, adapter, 1.0)
    ours = run(unet, inputs)
    assert (ours - base).abs().max() > 1e-3
    image_proj, ip = read_ip_adapter(path)
    stock._load_ip_adapter_weights([{"image_proj": image_proj, "ip_adapter": ip}], low_cpu_mem_usage=False)
    sample, t, text, added = inputs
    with torch.no_grad():
        theirs = stock(sample, t, encoder_hidden_states=text,
                       added_cond_kwargs={**added, "image_embeds": [ref[:, None].expand(2, 1, CLIP_DIM)]}).sample
    torch.testing.assert_close(ours, theirs)


def test_the_clip_vision_folder_encodes_a_reference(tmp_path):
    from PIL import Image

    encoder, processor = load_identity_encoder(write_tiny_clip_vision(tmp_path / "image_encoder"))
    faces = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    e = identity_image_embeds(encoder, processor, faces, hidden_states=False)
    h = identity_image_embeds(encoder, processor, [Image.new("RGB", (50, 50), "tan")], hidden_states=True)
    assert e.shape == (2, CLIP_DIM) and h.shape == (1, (32 // 8) ** 2 + 1, 32)
    # a uint8 tensor is read as the same picture as its PIL image (channels last, not scrambled); faces differ
    pil = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in faces]
    assert torch.allclose(identity_image_embeds(encoder, processor, pil, hidden_states=False), e, atol=1e-5)
    assert not torch.allclose(e[0], e[1], atol=1e-3)
    # hidden states are the penultimate layer's (IP-Adapter Plus), not the last
    px = processor(images=[Image.new("RGB", (50, 50), "tan")], return_tensors="pt").pixel_values
    with torch.no_grad():
        out = encoder(px, output_hidden_states=True)
    assert torch.allclose(h, out.hidden_states[-2]) and not torch.allclose(h, out.last_hidden_state, atol=1e-4)


def test_mismatched_checkpoints_name_the_file_and_key(kg_unet, tmp_path):
    from safetensors.torch import load_file, save_file

    good = write_tiny_ip_adapter(kg_unet, tmp_path / "ip.safetensors")
    state = load_file(str(good))
    broken = dict(state)
    del broken["ip_adapter.3.to_v_ip.weight"]
    save_file(broken, str(tmp_path / "missing.safetensors"))
    with pytest.raises(AdapterError, match=r"missing\.safetensors lacks 'ip_adapter\.3\.to_v_ip\.weight'"):
        stack_ip_adapter(copy.deepcopy(kg_unet), tmp_path / "missing.safetensors")
    wide = dict(state, **{"ip_adapter.1.to_k_ip.weight": torch.zeros(3, 5)})
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(AdapterError, match=r"'ip_adapter\.1\.to_k_ip\.weight' has shape \(3, 5\)"):
        stack_ip_adapter(copy.deepcopy(kg_unet), tmp_path / "wide.safetensors")
    with pytest.raises(AdapterError, match=r"identity_adapter=.*nope\.safetensors does not exist"):
        stack_ip_adapter(kg_unet, tmp_path / "nope.safetensors")
    (tmp_path / "ip.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match="only .safetensors"):
        stack_ip_adapter(kg_unet, tmp_path / "ip.bin")
    adapter = stack_ip_adapter(kg_unet, good)
    with pytest.raises(AdapterError, match="do not fit"):
        set_identity_embeds(adapter, torch.randn(1, CLIP_DIM + 1))  # an encoder of another width
