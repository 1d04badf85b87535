"""What the training loop needs from a model, for every scale: `model=tiny` (built from scratch, MiniLM text
states) and `model=sd15|sdxl` (a local diffusers folder, LoRA on the UNet, frozen CLIP text encoders).

A Backbone holds the VAE, the UNet (with the KG adapter attached), the noise scheduler and a frozen text encoder, and
answers `text_states(prompts) -> (encoder_hidden_states, added_cond_kwargs)`; the loop never asks which it is.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .adapter import attach_kg_adapter
from .models import add_unet_lora, build_tiny_stack, load_pretrained_stack, lora_metadata, lora_state_dict

log = logging.getLogger(__name__)

TEXT_LENGTH = 77  # text tokens per prompt, as CLIP's context length
# model.dtype / generate's dtype= -> the frozen base's weights (what trains stays fp32); the one list of names
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_NAMES = ", ".join(list(PRECISIONS)[:-1]) + " or " + list(PRECISIONS)[-1]  # "fp32, bf16 or fp16"


@dataclass
class Backbone:
    kind: str
    vae: nn.Module
    unet: nn.Module
    scheduler: object  # the DDPM noise schedule used in training and (as alphas_cumprod) by the samplers
    text_encoder: nn.Module
    tokenizer: object
    text_encoder_2: nn.Module | None = None
    tokenizer_2: object = None
    image_size: int = 64
    trainable: list = field(default_factory=list)
    _text_cache: dict = field(default_factory=dict)
    _warned_truncation: bool = field(default=False, repr=False)

    @property
    def cross_attention_dim(self) -> int:
        dim = self.unet.config.cross_attention_dim
        return int(dim if isinstance(dim, int) else dim[0])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.unet.config.in_channels, self.image_size // factor, self.image_size // factor)

    def _warn_truncated(self, prompts: list[str]) -> None:
        """A prompt longer than the text encoder's context loses its end (as in diffusers, which warns too): a prompt
        naming every phenotype of a face can lose the last ones. Said once per backbone, with a count."""
        if self._warned_truncation:
            return
        limit = TEXT_LENGTH if self.kind == "tiny" else self.tokenizer.model_max_length
        lengths = [len(ids) for ids in self.tokenizer(prompts, truncation=False)["input_ids"]]
        long = [p for p, n in zip(prompts, lengths) if n > limit]
        if long:
            self._warned_truncation = True
            log.warning("%d of %d prompts exceed the text encoder's %d tokens and lose their end (e.g. %r ...)",
                        len(long), len(prompts), limit, long[0][:80])

    @torch.no_grad()
    def text_states(self, prompts: list[str]) -> tuple[torch.Tensor, dict]:
        """Frozen text-encoder states [B, L, D] (and SDXL's pooled text_embeds / time_ids); cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            for p, value in zip(missing, self._encode(missing)):
                self._text_cache[p] = value
        states = torch.stack([self._text_cache[p][0] for p in prompts])
        added = {}
        if self.kind == "sdxl":
            added["text_embeds"] = torch.stack([self._text_cache[p][1] for p in prompts])
            s = self.image_size
            added["time_ids"] = torch.tensor([[s, s, 0, 0, s, s]], dtype=states.dtype).repeat(len(prompts), 1)
        return states, added

    def _encode(self, prompts: list[str]) -> list[tuple]:
        self._warn_truncated(prompts)
        if self.kind == "tiny":  # MiniLM token states: the sentence-transformers model's transformer
            tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=TEXT_LENGTH,
                                 return_tensors="pt")
            out = self.text_encoder(**tok).last_hidden_state
            return [(o.float(),) for o in out]
        tok = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt")
        if self.kind == "sd15":
            out = self.text_encoder(tok.input_ids).last_hidden_state
            return [(o,) for o in out]
        # SDXL: penultimate states of both encoders, concatenated; pooled output of the second
        h1 = self.text_encoder(tok.input_ids, output_hidden_states=True).hidden_states[-2]
        tok2 = self.tokenizer_2(prompts, padding="max_length", truncation=True,
                                max_length=self.tokenizer_2.model_max_length, return_tensors="pt")
        out2 = self.text_encoder_2(tok2.input_ids, output_hidden_states=True)
        states = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
        return [(s, p) for s, p in zip(states, out2.text_embeds)]


def schedule_settings(schedule: dict | None, base: dict | None = None) -> dict:
    """`model.schedule` -> DDPMScheduler settings: prediction_type (epsilon | v_prediction), zero_terminal_snr
    (rescale the betas so the last timestep is pure noise; Lin et al. 2024) and timestep_spacing (the sampler's
    ladder: leading | trailing | linspace). A null key keeps the base's value (a pretrained folder's scheduler);
    with no base: epsilon, no rescale, leading (what kgface trained before these keys existed)."""
    from .sampling import PREDICTIONS, SPACINGS

    base = base or {}
    s = {k: v for k, v in (schedule or {}).items() if v is not None}
    unknown = sorted(set(s) - {"prediction_type", "zero_terminal_snr", "timestep_spacing"})
    if unknown:
        raise UserError(f"model.schedule.{unknown[0]} is unknown; the keys are prediction_type, zero_terminal_snr, "
                        "timestep_spacing")
    out = {"prediction_type": s.get("prediction_type", base.get("prediction_type", "epsilon")),
           "rescale_betas_zero_snr": bool(s.get("zero_terminal_snr", base.get("rescale_betas_zero_snr", False))),
           "timestep_spacing": s.get("timestep_spacing", base.get("timestep_spacing", "leading"))}
    if out["prediction_type"] not in PREDICTIONS:
        raise UserError(f"model.schedule.prediction_type={out['prediction_type']!r}: kgface trains and samples "
                        f"{' or '.join(PREDICTIONS)}")
    if out["timestep_spacing"] not in SPACINGS:
        raise UserError(f"model.schedule.timestep_spacing={out['timestep_spacing']!r}: use one of "
                        f"{', '.join(SPACINGS)}")
    if out["rescale_betas_zero_snr"] and out["prediction_type"] == "epsilon":
        # at zero SNR the clean latent implied by a noise estimate is a division by zero
        raise UserError("model.schedule.zero_terminal_snr=true needs model.schedule.prediction_type=v_prediction")
    return out


def _ddpm(schedule: dict | None = None, num_train_timesteps: int = 1000):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         clip_sample=False, **schedule_settings(schedule))


def build_backbone(model_cfg: dict, vae=None, num_tokens: int = 8, with_adapter: bool = True) -> Backbone:
    """The backbone a `model` config names. `vae`: the cached, trained tiny VAE (model=tiny)."""
    name = model_cfg.get("name", "tiny")
    if name == "tiny":
        from ..encoders.text import check_token_width, load_text_model

        fresh_vae, unet = build_tiny_stack(model_cfg.get("tiny") or {})
        st = load_text_model(model_cfg.get("text_model"), key="model.text_model")
        text_encoder = st[0].auto_model.eval().requires_grad_(False)
        check_token_width(getattr(text_encoder.config, "hidden_size", None), unet.config.cross_attention_dim)
        backbone = Backbone("tiny", vae if vae is not None else fresh_vae, unet, _ddpm(model_cfg.get("schedule")),
                            text_encoder, st.tokenizer, image_size=int(unet.config.sample_size) *
                            2 ** (len((vae or fresh_vae).config.block_out_channels) - 1))
        backbone.vae.requires_grad_(False)
        trainable = list(unet.parameters())  # from scratch: the whole UNet learns
    elif name in ("sd15", "sdxl"):
        dtype = PRECISIONS[model_cfg.get("dtype", "fp32")]
        # the VAE stays fp32 under a half-precision UNet: SDXL's VAE overflows in fp16 (NaN images); it is small
        stack = load_pretrained_stack(model_cfg.get("pretrained"), name, dtype=dtype, vae_dtype=torch.float32)
        scheduler = _ddpm_from(stack.scheduler, model_cfg.get("schedule"))
        backbone = Backbone(name, stack.vae, stack.unet, scheduler, stack.text_encoder, stack.tokenizer,
                            stack.text_encoder_2, stack.tokenizer_2,
                            image_size=int(model_cfg.get("resolution") or stack.unet.config.sample_size *
                                           2 ** (len(stack.vae.config.block_out_channels) - 1)))
        backbone.unet.requires_grad_(False)
        trainable = []
        if int(model_cfg.get("lora_rank", 0)) > 0:
            alpha = model_cfg.get("lora_alpha")  # null: the rank (a LoRA scale of 1)
            add_unet_lora(backbone.unet, rank=int(model_cfg["lora_rank"]),
                          alpha=float(model_cfg["lora_rank"] if alpha is None else alpha))
            trainable = [p for n, p in backbone.unet.named_parameters() if "lora" in n]
    else:
        raise UserError(f"model.name '{name}' is unknown; use model=tiny, model=sd15 or model=sdxl")
    if with_adapter:
        attach_kg_adapter(backbone.unet, num_tokens=num_tokens, scale=float(model_cfg.get("adapter_scale", 1.0)),
                          dtype=torch.float32)
        from .adapter import adapter_parameters

        trainable += list(adapter_parameters(backbone.unet).values())
    seen, unique = set(), []
    for p in trainable:
        if id(p) not in seen:
            seen.add(id(p))
            p.requires_grad_(True)
            # what trains stays fp32 over frozen half-precision weights (model.dtype=bf16|fp16): AdamW's small
            # updates would round away in bf16, and fp16 gradients cannot be unscaled; autocast joins the two
            p.data = p.data.float()
            unique.append(p)
    backbone.trainable = unique
    if model_cfg.get("gradient_checkpointing"):
        backbone.unet.enable_gradient_checkpointing()
    return backbone


def pretrained_schedule(folder_config: dict, schedule: dict | None = None) -> dict:
    """schedule_settings over a pretrained folder's scheduler: its prediction type (SD 2.x-768 predicts v) and
    rescaling unless model.schedule sets them; the ladder is leading unless model.schedule.timestep_spacing says
    otherwise (what kgface sampled every pretrained run with before the key; a folder's own spacing is often
    another sampler's, e.g. EulerDiscreteScheduler's linspace)."""
    return schedule_settings(schedule, {**folder_config, "timestep_spacing": "leading"})


def _ddpm_from(scheduler, schedule: dict | None = None):
    """A DDPM training schedule with the pretrained scheduler's betas (SD uses scaled_linear)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config, **pretrained_schedule(dict(scheduler.config), schedule))


def save_model_folder(backbone: Backbone, folder: Path) -> None:
    """model/ in diffusers layout for what the run trained: the tiny UNet and VAE (the adapter is saved apart)."""
    from ..cache import atomic_folder

    with atomic_folder(folder) as tmp:  # a crash mid-save leaves the old folder or none, never half of one
        _write_model_files(backbone, tmp)


def _write_model_files(backbone: Backbone, folder: Path) -> None:
    from .adapter import detach_kg_adapter, has_kg_adapter

    if backbone.kind == "tiny":
        unet = backbone.unet
        had = has_kg_adapter(unet)
        if had:  # the UNet is saved without the adapter's processors, then the very same modules go back on (new
            # tensors would leave an optimizer or EMA that holds the old ones training nothing)
            procs, proj = dict(unet.attn_processors), unet.encoder_hid_proj
            hid_type = unet.config.encoder_hid_dim_type
            detach_kg_adapter(unet)
        try:
            unet.save_pretrained(folder / "unet", safe_serialization=True)
        finally:  # a failed save leaves the model in memory as it was
            if had:
                unet.set_attn_processor(procs)
                unet.encoder_hid_proj = proj
                unet.config.encoder_hid_dim_type = hid_type
        backbone.vae.save_pretrained(folder / "vae", safe_serialization=True)
    else:  # pretrained: only the LoRA weights are new
        from safetensors.torch import save_file

        state = lora_state_dict(backbone.unet)
        if state:  # the file names its own scale: a reader outside kgface needs rank and alpha to apply it
            save_file(state, str(folder / "unet_lora.safetensors"), metadata=lora_metadata(backbone.unet))
    # the noise schedule it trained with, for every kind: a base folder whose scheduler_config.json changed since
    # (another prediction type, zero-terminal SNR) must not change how the run's model is sampled
    backbone.scheduler.save_pretrained(folder / "scheduler")
