"""The latent-diffusion stacks kgface trains: a tiny one built from scratch, or a local SD 1.5 / SDXL diffusers folder.

- `build_tiny_stack(cfg)`: a small AutoencoderKL and a ~9M-parameter UNet2DConditionModel (8x8x4 latents for 64x64
  images) whose cross-attention reads frozen MiniLM token states (384-d). Everything trains on the CPU.
- `load_pretrained_stack(path, kind)`: the components of a local diffusers folder, `local_files_only=True` and
  safetensors only; never a download. A missing folder, subfolder or weights file is a UserError naming
  `model.pretrained` and the subfolder.
- `add_unet_lora(unet, rank, alpha)`: LoRA on the UNet's attention projections via peft; `mark_trainable(unet)`
  freezes the base and leaves LoRA + KG adapter trainable; `trainable_parameters(unet)` lists them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from .sampling import PREDICTIONS

KINDS = ("sd15", "sdxl")

# ~9.2M-parameter UNet on 8x8x4 latents (64x64 images through a factor-8 VAE); ~0.2 s per training step at batch 16
# on 2 CPU cores. `unet_heads` is diffusers' `attention_head_dim`, which in UNet2DConditionModel means the NUMBER of
# heads: 2-4 heads at these widths (many narrow heads are ~3x slower on the CPU).
TINY_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "latent_channels": 4,
    "vae_block_out_channels": [32, 64, 64, 64],
    "vae_layers_per_block": 1,
    "unet_block_out_channels": [64, 128, 192],
    "unet_layers_per_block": 1,
    "unet_heads": [2, 4, 4],
    "unet_attention_levels": [True, True, False],  # cross-attention at 8x8 and 4x4, none at 2x2
    "cross_attention_dim": 384,  # MiniLM token states
    "norm_num_groups": 32,
}


def tiny_config(cfg: Mapping | None = None) -> dict[str, Any]:
    """TINY_DEFAULTS overridden by `cfg` (a dict or an OmegaConf node); unknown keys are an error."""
    out = dict(TINY_DEFAULTS)
    for k, v in dict(cfg or {}).items():
        if k not in TINY_DEFAULTS:
            raise UserError(f"model.tiny has no key {k!r}; known keys: {', '.join(sorted(TINY_DEFAULTS))}")
        if v is None:  # list(None) was a bare TypeError
            raise UserError(f"model.tiny.{k}=null: give a value (default {TINY_DEFAULTS[k]})")
        out[k] = v if isinstance(v, (str, int, float, bool)) else list(v)
    lists = [k for k, v in TINY_DEFAULTS.items() if isinstance(v, list)]
    for k in lists:  # a scalar where diffusers wants one entry per block: len() of it was a bare TypeError
        if not isinstance(out[k], list) or not out[k]:
            raise UserError(f"model.tiny.{k}={out[k]!r}: a list, one entry per block (default {TINY_DEFAULTS[k]})")
    groups = out["norm_num_groups"]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise UserError(f"model.tiny.norm_num_groups={groups!r}: a whole number >= 1")
    for k in ("vae_block_out_channels", "unet_block_out_channels"):  # GroupNorm's own error named no key
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 or c % groups for c in out[k]):
            raise UserError(f"model.tiny.{k}={out[k]}: each a whole number divisible by model.tiny.norm_num_groups="
                            f"{groups} (GroupNorm), e.g. lower norm_num_groups")
    n = len(out["unet_block_out_channels"])
    for k in ("unet_heads", "unet_attention_levels"):
        if len(out[k]) != n:
            raise UserError(f"model.tiny.{k} needs {n} entries (one per unet_block_out_channels), got {out[k]}")
    factor = 2 ** (len(out["vae_block_out_channels"]) - 1)
    if out["image_size"] % factor:
        raise UserError(f"model.tiny.image_size={out['image_size']} is not a multiple of the VAE's factor {factor}")
    return out


def build_tiny_stack(cfg: Mapping | None = None):
    """(vae, unet) with random weights, sized by `tiny_config(cfg)`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    c = tiny_config(cfg)
    nv = len(c["vae_block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=c["latent_channels"],
        down_block_types=("DownEncoderBlock2D",) * nv, up_block_types=("UpDecoderBlock2D",) * nv,
        block_out_channels=tuple(c["vae_block_out_channels"]), layers_per_block=c["vae_layers_per_block"],
        norm_num_groups=c["norm_num_groups"], sample_size=c["image_size"],
    )
    levels = c["unet_attention_levels"]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels))
    unet = UNet2DConditionModel(
        sample_size=c["image_size"] // 2 ** (nv - 1), in_channels=c["latent_channels"],
        out_channels=c["latent_channels"], block_out_channels=tuple(c["unet_block_out_channels"]),
        layers_per_block=c["unet_layers_per_block"], down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if any(levels) else None,
        cross_attention_dim=c["cross_attention_dim"], attention_head_dim=tuple(c["unet_heads"]),
        norm_num_groups=c["norm_num_groups"],
    )
    return vae, unet


# ---------------------------------------------------------------------------------------------- pretrained folders

@dataclass
class PretrainedStack:
    """Components of a local SD 1.5 / SDXL diffusers folder (text encoders frozen by `load_pretrained_stack`)."""
    kind: str
    path: Path
    vae: nn.Module
    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any
    text_encoder_2: nn.Module | None = None
    tokenizer_2: Any = None

    def pipeline(self, img2img: bool = False):
        """The stock diffusers pipeline over these components (no safety checker, no image encoder)."""
        import diffusers

        if self.kind == "sd15":
            cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
            return cls(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                       scheduler=self.scheduler, safety_checker=None, feature_extractor=None, image_encoder=None,
                       requires_safety_checker=False)
        cls = diffusers.StableDiffusionXLImg2ImgPipeline if img2img else diffusers.StableDiffusionXLPipeline
        # the unconditional branch is the empty prompt's encoding, as kgface trains and samples it (SDXL's
        # default zeroes it when no negative prompt is given, a condition the KG adapter never trained beside)
        return cls(vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                   tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=self.scheduler,
                   image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=False)


_SUBFOLDERS = {
    "sd15": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
}
_CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
                 "text_encoder_2": "config.json", "scheduler": "scheduler_config.json"}
_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _weights_variant(sub: Path, name: str) -> str | None:
    """None for `<stem>.safetensors` (or its shard index), "fp16" etc. for `<stem>.<variant>.safetensors`; a
    UserError when the subfolder holds no safetensors weights (pickle .bin files are never loaded)."""
    stems = ("diffusion_pytorch_model", "model")
    for stem in stems:
        if (sub / f"{stem}.safetensors").is_file() or (sub / f"{stem}.safetensors.index.json").is_file():
            return None
    for stem in stems:
        # <stem>.<variant>.safetensors, <stem>.<variant>-00001-of-00002.safetensors,
        # <stem>.safetensors.index.<variant>.json
        for f in sorted(sub.glob(f"{stem}.*.safetensors")):
            return f.name[len(stem) + 1:].split(".")[0].split("-")[0]
        for f in sorted(sub.glob(f"{stem}.safetensors.index.*.json")):
            return f.name.split(".")[-2]
    bins = sorted(p.name for p in sub.glob("*.bin"))
    hint = (f" (found only pickle weights {', '.join(bins)}; kgface loads safetensors only: convert them, e.g. "
            "load and save_pretrained(..., safe_serialization=True))") if bins else ""
    raise UserError(f"model.pretrained={name}: subfolder {sub.name}/ has no safetensors weights "
                    f"(diffusion_pytorch_model.safetensors or model.safetensors){hint}")


def check_pretrained_folder(path: str | Path, kind: str = "sd15") -> Path:
    """Validate a local diffusers folder before loading anything; return it as a Path."""
    if kind not in KINDS:
        raise UserError(f"model={kind!r} is not a pretrained kind; choose one of {', '.join(KINDS)}")
    if path is None or str(path) in ("", "None", "null", "???"):
        raise UserError(f"model.pretrained is not set; set model.pretrained to a local diffusers folder "
                        f"(e.g. {'stable-diffusion-v1-5' if kind == 'sd15' else 'stable-diffusion-xl-base-1.0'})")
    root = Path(path).expanduser()
    if root.is_file():  # a single-file checkpoint (v1-5-pruned.safetensors): "does not exist" would be wrong
        raise UserError(f"model.pretrained={path} is a single-file checkpoint; kgface loads a diffusers folder "
                        "(unet/, vae/, text_encoder/, ...): convert it once with diffusers' "
                        "StableDiffusionPipeline.from_single_file(...).save_pretrained(FOLDER) and set "
                        "model.pretrained=FOLDER")
    if not root.is_dir():
        example = "stable-diffusion-v1-5" if kind == "sd15" else "stable-diffusion-xl-base-1.0"
        raise UserError(f"model.pretrained={path} does not exist; set model.pretrained to a local diffusers folder "
                        f"(e.g. {example}); kgface never downloads weights")
    for name in _SUBFOLDERS[kind]:
        sub = root / name
        if not sub.is_dir():
            raise UserError(f"model.pretrained={path} is incomplete: subfolder {name}/ is missing (a {kind} "
                            f"diffusers folder holds {', '.join(s + '/' for s in _SUBFOLDERS[kind])})")
        if name.startswith("tokenizer"):
            lacking = [f for f in _TOKENIZER_FILES if not (sub / f).is_file()]
            if lacking and not (sub / "tokenizer.json").is_file():
                raise UserError(f"model.pretrained={path}: {name}/ lacks {', '.join(lacking)}")
            continue
        if not (sub / _CONFIG_FILES[name]).is_file():
            raise UserError(f"model.pretrained={path}: {name}/{_CONFIG_FILES[name]} is missing")
        if name != "scheduler":
            _weights_variant(sub, str(path))
    _check_kind_and_objective(root, str(path), kind)
    return root


def _read_json(path: Path, name: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"model.pretrained={name}: {path.parent.name}/{path.name} is not readable JSON "
                        f"({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"model.pretrained={name}: {path.parent.name}/{path.name} is not a JSON object")
    return data


def scheduler_config(root: Path, name: str) -> dict:
    """A pretrained folder's scheduler/scheduler_config.json (the noise levels and the objective it was trained for)."""
    return _read_json(root / "scheduler" / "scheduler_config.json", name)


def _check_kind_and_objective(root: Path, name: str, kind: str) -> None:
    """From the configs alone (before data, VAE and evaluator are built): the folder is the kind model= names, and
    its scheduler predicts noise or velocity, the objectives the trainer and samplers implement."""
    unet = _read_json(root / "unet" / "config.json", name)
    is_sdxl = unet.get("addition_embed_type") == "text_time"
    if kind == "sdxl" and not is_sdxl:
        raise UserError(f"model.pretrained={name}: unet/ is not an SDXL UNet (addition_embed_type="
                        f"{unet.get('addition_embed_type')!r}); use model=sd15 for this folder")
    if kind == "sd15" and is_sdxl:
        raise UserError(f"model.pretrained={name}: unet/ is an SDXL UNet (addition_embed_type='text_time'); "
                        "use model=sdxl for this folder")
    vae = _read_json(root / "vae" / "config.json", name)
    latent = vae.get("latent_channels", 4)
    channels = {k: unet.get(k, 4) for k in ("in_channels", "out_channels")}
    if any(v != latent for v in channels.values()):  # an inpainting UNet (9 in) failed in conv_in, after encoding
        raise UserError(f"model.pretrained={name}: unet/ takes {channels['in_channels']} and gives "
                        f"{channels['out_channels']} channels, vae/ has {latent} latent channels; kgface fine-tunes "
                        "text-to-image folders (not inpainting or depth ones): use such a folder")
    prediction = scheduler_config(root, name).get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise UserError(f"model.pretrained={name}: scheduler/ says prediction_type={prediction!r}; kgface trains "
                        "and samples epsilon or v_prediction (SD 1.x, SD 2.x, SDXL base); use such a folder")


def _tf_dtype_kwargs(dtype: torch.dtype | None) -> dict:
    if dtype is None:  # transformers 5 would load in the config's dtype ("auto"), diffusers in fp32: keep them alike
        dtype = torch.float32
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def load_pretrained_stack(path: str | Path, kind: str = "sd15", dtype: torch.dtype | None = None,
                          vae_dtype: torch.dtype | None = None) -> PretrainedStack:
    """Load a local diffusers SD 1.5 / SDXL folder: safetensors only, local files only, text encoders frozen.
    `dtype`: the weights' (fp32 when None); `vae_dtype`: the VAE's, when it differs (kgface trains with an fp32 VAE
    over a half-precision UNet: SDXL's VAE overflows in fp16, and it is small)."""
    import diffusers
    import transformers

    root = check_pretrained_folder(path, kind)
    name = str(path)

    def load(subfolder, loader, **kw):
        sub = root / subfolder
        variant = None if subfolder.startswith("tokenizer") or subfolder == "scheduler" else \
            _weights_variant(sub, name)
        if variant:
            kw["variant"] = variant
        try:
            return loader(str(root), subfolder=subfolder, local_files_only=True, **kw)
        except Exception as e:  # noqa: BLE001 - any failure here is a broken folder: name the subfolder
            raise UserError(f"model.pretrained={name}: could not load {subfolder}/ ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else e})") from e

    diff_kw = {"use_safetensors": True, **({"torch_dtype": dtype} if dtype is not None else {})}
    tf_kw = {"use_safetensors": True, **_tf_dtype_kwargs(dtype)}
    unet = load("unet", diffusers.UNet2DConditionModel.from_pretrained, **diff_kw)
    vae = load("vae", diffusers.AutoencoderKL.from_pretrained,
               **({**diff_kw, "torch_dtype": vae_dtype} if vae_dtype is not None else diff_kw))
    sched_cfg = scheduler_config(root, name)
    sched_cls = getattr(diffusers, str(sched_cfg.get("_class_name", "")), None) or diffusers.DDPMScheduler
    scheduler = load("scheduler", sched_cls.from_pretrained)
    text_encoder = load("text_encoder", transformers.CLIPTextModel.from_pretrained, **tf_kw)
    tokenizer = load("tokenizer", transformers.CLIPTokenizer.from_pretrained)
    te2 = tok2 = None
    if kind == "sdxl":
        te2 = load("text_encoder_2", transformers.CLIPTextModelWithProjection.from_pretrained, **tf_kw)
        tok2 = load("tokenizer_2", transformers.CLIPTokenizer.from_pretrained)
    expected = unet.config.cross_attention_dim
    got = text_encoder.config.hidden_size + (te2.config.hidden_size if te2 is not None else 0)
    if kind == "sdxl" and unet.config.addition_embed_type != "text_time":
        raise UserError(f"model.pretrained={name}: unet/ is not an SDXL UNet (addition_embed_type="
                        f"{unet.config.addition_embed_type!r}); use model=sd15 for this folder")
    if isinstance(expected, int) and expected != got:
        raise UserError(f"model.pretrained={name}: the text encoders give {got}-d states but unet/ expects "
                        f"cross_attention_dim={expected}; is model={kind} the right kind for this folder?")
    for m in (vae, text_encoder, te2):
        if m is not None:
            m.requires_grad_(False)
            m.eval()
    return PretrainedStack(kind=kind, path=root, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                           scheduler=scheduler, text_encoder_2=te2, tokenizer_2=tok2)


# ---------------------------------------------------------------------------------------------- trainable parts

LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


def add_unet_lora(unet: nn.Module, rank: int = 8, alpha: float | None = None,
                  target_modules: tuple[str, ...] | list[str] = LORA_TARGETS, adapter_name: str = "default") -> None:
    """LoRA (peft) on the UNet's attention projections; B starts at zero, so the UNet is unchanged at step 0."""
    from peft import LoraConfig

    if rank < 1:
        raise UserError(f"model.lora_rank must be >= 1, got {rank}")
    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                     init_lora_weights="gaussian", target_modules=list(target_modules))
    unet.add_adapter(cfg, adapter_name=adapter_name)


def _is_trainable_name(name: str) -> bool:
    return "lora_" in name or ".to_k_ip." in name or ".to_v_ip." in name


def mark_trainable(unet: nn.Module, train_base: bool = False) -> dict[str, nn.Parameter]:
    """Freeze the base UNet (unless `train_base`, as for model=tiny trained from scratch) and leave LoRA and KG
    adapter weights trainable; return the trainable parameters by name."""
    for name, p in unet.named_parameters():
        p.requires_grad_(train_base or _is_trainable_name(name))
    return trainable_parameters(unet)


def trainable_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if p.requires_grad}


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights as peft names them in the UNet (what a run's model/unet_lora.safetensors holds).
    diffusers' `pipe.load_lora_weights` reads UNet keys prefixed `unet.`: prefix them to load the file there, at
    the scale lora_alpha / lora_rank that the file's metadata records (`lora_metadata`)."""
    from peft.utils import get_peft_model_state_dict

    if "default" not in getattr(unet, "peft_config", {}):  # model.lora_rank=0: the KG adapter alone trained
        return {}
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def lora_metadata(unet: nn.Module) -> dict[str, str]:
    """The LoRA file's safetensors metadata (strings only): rank, alpha and target modules of the UNet's adapter."""
    import json

    cfg = unet.peft_config["default"]
    return {"format": "kgface-unet-lora", "lora_rank": str(int(cfg.r)), "lora_alpha": repr(float(cfg.lora_alpha)),
            "target_modules": json.dumps(sorted(cfg.target_modules))}
