"""Tiny random-weight SD 1.5- and SDXL-layout diffusers folders, written with the stock `save_pretrained`.

Sizes follow diffusers' own pipeline tests (UNet block_out_channels (32, 64), CLIP text models with hidden size 32).
The CLIP tokenizer files are built from open_clip's bundled BPE list (`bpe_simple_vocab_16e6.txt.gz`), the same
vocabulary as openai/clip-vit-large-patch14's, so no hub access is needed. `num_merges` truncates the merge list
(a smaller but valid CLIP BPE vocabulary: words split into more pieces) to keep the text embeddings small.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer_files(folder: Path, num_merges: int | None = None) -> tuple[Path, Path, int]:
    """vocab.json + merges.txt in the layout of transformers' CLIPTokenizer; returns (vocab, merges, vocab_size)."""
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1: 49152 - 256 - 2 + 1]
    if num_merges is not None:
        merges = merges[:num_merges]
    units = list(_bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file, len(vocab)


def clip_tokenizer(work: Path, num_merges: int | None = 2000, pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    vocab_file, merges_file, _ = write_clip_tokenizer_files(work, num_merges)
    return CLIPTokenizer(str(vocab_file), str(merges_file), pad_token=pad_token, model_max_length=77)


def _text_config(vocab_size: int, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    # bos/eos are the tokenizer's <|startoftext|>/<|endoftext|>, the last two ids
    return CLIPTextConfig(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                          hidden_size=hidden, intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4,
                          num_hidden_layers=2, vocab_size=vocab_size, hidden_act="gelu",
                          projection_dim=projection_dim, max_position_embeddings=77)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                         up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4,
                         sample_size=32, norm_num_groups=32)


def build_sd15_folder(path: Path, seed: int = 0) -> Path:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), norm_num_groups=32)
    vae = _vae()
    tok = clip_tokenizer(path.parent / f"{path.name}-tok")
    text_encoder = CLIPTextModel(_text_config(len(tok)))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def build_sdxl_folder(path: Path, seed: int = 0) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    # SDXL layout: text_time added conditioning; cross-attention = 32 + 32 (two text encoders' states);
    # projection_class_embeddings_input_dim = 6 time ids * 8 + 32 pooled text = 80.
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=32)
    vae = _vae()
    tok = clip_tokenizer(path.parent / f"{path.name}-tok")
    tok2 = clip_tokenizer(path.parent / f"{path.name}-tok2", pad_token="!")
    text_encoder = CLIPTextModel(_text_config(len(tok)))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tok2)))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
                                     tokenizer_2=tok2, unet=unet, scheduler=scheduler, image_encoder=None,
                                     feature_extractor=None)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path
