"""Rebuild a trained generator from a `kgface.train` output directory (docs/training.md, "The run directory").

`load_run(run_dir) -> (backbone, conditioner, profiles, cfg)` reads exactly what `train_generator` saved:

- `config.yaml` (the resolved training config): model kind, conditioning, K tokens, adapter scale;
- model=tiny: `model/unet`, `model/vae`, `model/scheduler` (diffusers folders);
  model=sd15|sdxl: the base folder named by `model.pretrained` + `model/unet_lora.safetensors` (+ `model/scheduler`,
  the schedule it trained with, in runs since 2026-12-07);
- `adapter.safetensors` + `adapter.json` (conditioning kg / kg_text / class) through `load_kg_adapter`;
- `encoder/` (conditioning kg / kg_text) through `KGEncoder.from_pretrained`; `class_tokens.safetensors`
  (conditioning class);
- `profiles.json` (every profile the run knows, held-out ones included; `conditioning_profiles.json` instead where
  profile.source=learned|blend gave the generator learned frequencies) and `data.json` (which were held out).

A baselines run (`experiment=baselines`) keeps one generator per conditioning in `OUT/kg`, `OUT/text`, `OUT/class`,
`OUT/kg_text` (and `OUT/kg_shuffled`) under one `config.yaml`: pass the subfolder (`run=OUT/kg`). Everything is put in
eval mode; nothing is trained.
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import as_number, container
from ..errors import RunError, UserError  # callers import RunError from here too
from ..kg import FacialProfile
from ..run_files import heldout_of, load_profiles_json, run_data, run_file  # noqa: F401  (generate, trial import two)


def run_config(run_dir: str | Path) -> DictConfig:
    """The config a run (or a baselines generator's subfolder) was trained with, read without loading any model:
    generate and trial check their own settings against it before an SD run's minutes of loading."""
    return _locate(Path(run_dir))[0]


def _locate(run_dir: Path) -> tuple[DictConfig, str]:
    """The run's config and the conditioning of the generator stored in run_dir."""
    if not run_dir.is_dir():
        raise RunError(f"run={run_dir} does not exist; pass a kgface.train output directory")
    if (run_dir / "config.yaml").is_file():
        cfg = OmegaConf.load(run_dir / "config.yaml")
        modes = [str(m) for m in cfg.get("baselines") or []]
        if len(modes) > 1 and not (run_dir / "model").is_dir():
            subs = [m for m in modes if (run_dir / m / "model").is_dir()]
            raise RunError(f"run={run_dir} is a baselines run; pass one of its generators: "
                           + ", ".join(f"run={run_dir / s}" for s in subs))
        # a baselines list of one conditioning trains it in the run folder itself (no subfolder)
        return cfg, modes[0] if len(modes) == 1 else str(cfg.get("conditioning", "kg"))
    parent = run_dir.parent
    if (parent / "config.yaml").is_file():
        cfg = OmegaConf.load(parent / "config.yaml")
        if run_dir.name in [str(m) for m in (cfg.get("baselines") or [])]:
            return cfg, run_dir.name
    raise RunError(f"run={run_dir} has no config.yaml; is it a kgface.train output?")


# a generator's final files, written after its training (kgface.train removes them before a rerun trains)
GENERATOR_FILES = ("model", "adapter.safetensors", "adapter.json", "encoder", "class_tokens.safetensors")


def _check_files(run_dir: Path, cfg: DictConfig, mode: str) -> None:
    from .conditioning import KG_MODES

    model = run_dir / "model"
    tiny = cfg.model.name == "tiny"
    needed = ["model/unet/config.json", "model/vae/config.json"] if tiny else []
    if mode != "text":
        needed += ["adapter.safetensors", "adapter.json"]
    if mode in KG_MODES:
        needed += ["encoder/model.safetensors"]
    if mode == "class":
        needed += ["class_tokens.safetensors"]
    missing = [n for n in needed if not (run_dir / n).is_file()]
    if not model.is_dir() or missing:
        ckpt = sorted((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else []
        hint = (f" (it has checkpoints up to {ckpt[-1].name} but no final model: the training did not finish; "
                "resume it with trainer.resume=latest)") if ckpt else ""
        raise RunError(f"run={run_dir} has no model/ or adapter.safetensors "
                       f"(missing: {', '.join(missing) or 'model/'}); is it a kgface.train output?{hint}")


def descriptions_of(run_dir: Path):
    """The run's descriptions.json (the stage sentences its text prompts were trained with), or None for a run
    whose prompts did not read it: those written before 2026-12-01 (their data.json lacks prompts_read_descriptions)
    trained on the template's sentences even beside an LLM's file, which None gives again."""
    from ..prompts import load_descriptions

    if not run_data(run_dir).get("prompts_read_descriptions"):
        return None
    path = run_file(run_dir, "descriptions.json")
    if path is None:
        return None
    try:
        return load_descriptions(path)
    except ValueError as exc:
        raise RunError(f"{path}: {str(exc).splitlines()[0]}") from None


def check_precision_device(backbone, device) -> None:
    """fp16 weights on the CPU are refused, as in training (untested there, and slow); the error says what to use."""
    import torch

    from .sampling import half_weights_dtype

    if device.type == "cpu" and half_weights_dtype(backbone.unet) == torch.float16:
        raise RunError("the base is fp16 (dtype=fp16, or the run's model.dtype) but device=cpu: fp16 runs on a GPU "
                       "only; set dtype=bf16 or dtype=fp32 (or device=cuda)")


# folders a run names in its config.yaml (or its encoder's): generate and trial take no model or encoder group, so
# "set model.pretrained" is advice no override of theirs can follow
_RUN_FOLDER_KEYS = ("model.pretrained", "model.text_model", "encoder.text_model")


def _unreadable(path: Path, exc: Exception) -> "RunError":
    """A weights file a copy cut short or a disk damaged: one line naming it (safetensors' own error names no file)."""
    return RunError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).strip()[:120]}); copy the run folder again "
                    "or retrain")


def _check_lora_scale(lora: Path, model_cfg, run_dir: Path) -> None:
    """The rank and alpha the file records (files since 2026-12-07) against the run's config.yaml: an edited
    model.lora_alpha would load the same weights at another scale, silently."""
    from safetensors import safe_open

    try:
        with safe_open(str(lora), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - SafetensorError (a cut copy) is no RuntimeError or OSError
        raise _unreadable(lora, exc) from None
    alpha = model_cfg.get("lora_alpha")
    want = {"lora_rank": float(model_cfg["lora_rank"]),
            "lora_alpha": float(model_cfg["lora_rank"] if alpha is None else alpha)}
    for key, value in want.items():
        if key in meta and float(meta[key]) != value:
            raise RunError(f"{lora} was trained at {key}={meta[key]} but {run_dir / 'config.yaml'} sets "
                           f"model.{key}={value:g}; set it back to {meta[key]}")


def load_run(run_dir: str | Path, cache=None, adapter_scale: float | None = None, dtype: str | None = None):
    """(backbone, conditioner, profiles, cfg) of a trained run; `profiles` includes held-out diseases. dtype: the
    frozen base's precision for a pretrained run (fp32 | bf16 | fp16; None: the run's model.dtype); what trained
    (LoRA, adapter) loads fp32 either way, and the sampler runs a half-precision base under autocast."""
    try:
        return _load_run(Path(run_dir), cache, adapter_scale, dtype)
    except UserError as exc:
        key = next((k for k in _RUN_FOLDER_KEYS if str(exc).startswith(k)), None)
        if key is None or isinstance(exc, RunError):
            raise
        raise RunError(f"run={run_dir}: a folder it was trained with cannot be loaded ({str(exc).splitlines()[0]}); "
                       f"put it back, or set {key} in the run's config.yaml (the encoder's: encoder/config.json) to "
                       "where it is now") from None


def _load_run(run_dir: Path, cache, adapter_scale, dtype):
    import torch

    from .adapter import load_kg_adapter
    from .backbones import PRECISION_NAMES, PRECISIONS, build_backbone
    from .conditioning import CONTROL, KG_MODES, TEXT_MODES, Conditioner
    from .phenotype_sets import observed_phenotypes_of

    run_dir = Path(run_dir)
    cfg, mode = _locate(run_dir)
    shuffled = mode == CONTROL
    mode = "kg" if shuffled else mode
    _check_files(run_dir, cfg, mode)
    if dtype is not None and str(dtype) not in PRECISIONS:
        raise RunError(f"dtype={dtype} is unknown; use {PRECISION_NAMES} (null: the run's)")
    if cfg.model.name == "tiny":
        if dtype is not None and str(dtype) != "fp32":  # trained whole in fp32 from scratch: no frozen base to halve
            raise RunError(f"dtype={dtype}: run={run_dir} is a model=tiny run, trained whole in fp32; dtype applies "
                           "to model=sd15|sdxl runs (leave it null)")
    else:
        used = str(dtype if dtype is not None else cfg.model.get("dtype", "fp32"))
        if used not in PRECISIONS:
            raise RunError(f"run={run_dir}: config.yaml says model.dtype={used}; expected {PRECISION_NAMES}")
        with open_dict(cfg):
            cfg.model.dtype = used  # what builds the base and what the caller records: the precision drawn in
    model_cfg = container(cfg.model)
    num_tokens = int(model_cfg.get("num_tokens", 8))
    profiles = load_profiles_json(run_dir, conditioning=True)
    if shuffled:  # the control was trained (and draws) with every disease given another disease's phenotypes
        path = run_dir / "shuffled_profiles.json"
        if not path.is_file():
            raise RunError(f"run={run_dir} is a {CONTROL} generator without shuffled_profiles.json")
        profiles = [FacialProfile.from_dict(p) for p in json.loads(path.read_text(encoding="utf-8"))]
    heldout = heldout_of(run_dir)

    if cfg.model.name == "tiny":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        backbone = build_backbone(model_cfg, num_tokens=num_tokens, with_adapter=False)
        try:
            # safetensors only, from this folder only (a model/unet holding a pickled .bin is refused)
            local = {"use_safetensors": True, "local_files_only": True}
            backbone.unet = UNet2DConditionModel.from_pretrained(run_dir / "model" / "unet", **local)
            backbone.vae = AutoencoderKL.from_pretrained(run_dir / "model" / "vae", **local)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise RunError(f"run={run_dir}: model/ cannot be loaded ({str(exc).splitlines()[0]})") from None
    else:
        backbone = build_backbone(model_cfg, num_tokens=num_tokens, with_adapter=False)  # base folder (+ LoRA)
        lora = run_dir / "model" / "unet_lora.safetensors"
        if int(model_cfg.get("lora_rank", 0)) > 0:
            if not lora.is_file():
                raise RunError(f"run={run_dir} has no model/unet_lora.safetensors although it trained LoRA "
                               f"(rank {model_cfg['lora_rank']}); is it a finished kgface.train output?")
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            _check_lora_scale(lora, model_cfg, run_dir)
            try:
                result = set_peft_model_state_dict(backbone.unet, load_file(str(lora)))
            except RuntimeError as exc:  # strict=False still refuses other shapes: another base or LoRA rank
                raise RunError(f"{lora}: its LoRA weights do not fit {cfg.model.pretrained} at model.lora_rank="
                               f"{model_cfg['lora_rank']} in {run_dir / 'config.yaml'} ("
                               f"{str(exc).strip().splitlines()[-1].strip()[:160]}); was the run trained on another "
                               "base model?") from None
            unexpected = getattr(result, "unexpected_keys", None) or []
            if unexpected:
                raise RunError(f"{lora}: {len(unexpected)} LoRA weights do not fit {cfg.model.pretrained} "
                               f"(first: {unexpected[0]}); was the run trained on another base model?")
            # the base weights are "missing" by design (strict=False); a missing LoRA weight would stay at its
            # initial value (lora_B zero: that layer silently untrained)
            missing = [k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k]
            if missing:
                raise RunError(f"{lora}: {len(missing)} of the UNet's LoRA weights are not in the file (first: "
                               f"{missing[0]}); was it saved with other LoRA targets or another kgface version?")
    if (run_dir / "model" / "scheduler").is_dir():  # the schedule it trained with (pretrained runs since 2026-12-07)
        from diffusers import DDPMScheduler

        try:
            backbone.scheduler = DDPMScheduler.from_pretrained(run_dir / "model" / "scheduler")
        except (OSError, ValueError, EnvironmentError) as exc:
            raise RunError(f"run={run_dir}: model/scheduler cannot be loaded ({str(exc).splitlines()[0]})") from None
    backbone.unet.eval().requires_grad_(False)
    backbone.vae.eval().requires_grad_(False)
    backbone.trainable = []

    scale = float(model_cfg.get("adapter_scale", 1.0)) if adapter_scale is None else as_number(adapter_scale,
                                                                                               "adapter_scale")
    if mode == "text" and adapter_scale is not None:  # ignored in silence, a set would pass for a scaled one
        raise RunError(f"adapter_scale={adapter_scale}: {run_dir} is a conditioning=text run, without KG tokens or "
                       "their adapter; leave adapter_scale out")
    if mode != "text":
        load_kg_adapter(backbone.unet, run_dir, scale=scale, dtype=torch.float32)  # as it trained (fp32)
    backbone.unet.requires_grad_(False)

    train_profiles = [p for p in profiles if p.disease_id not in heldout]
    draws = observed_phenotypes_of(cfg)  # its requests draw their phenotype sets
    unknown = float(cfg.data.get("unknown_frequency", 0.5))  # ... as the phantom drew its faces'
    descriptions = descriptions_of(run_dir) if mode in TEXT_MODES else None
    if mode in KG_MODES:
        from ..encoders import KGEncoder

        encoder = KGEncoder.from_pretrained(run_dir / "encoder").eval().requires_grad_(False)
        conditioner = Conditioner(mode, train_profiles, backbone, encoder, encoder.graph_builder(cache=cache),
                                  num_tokens=num_tokens, phenotype_draws=draws, descriptions=descriptions,
                                  unknown_frequency=unknown)
    elif mode == "class":
        from safetensors.torch import load_file

        conditioner = Conditioner("class", train_profiles, backbone, num_tokens=num_tokens)
        try:
            state = load_file(str(run_dir / "class_tokens.safetensors"))
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - SafetensorError: the file cut short
            raise _unreadable(run_dir / "class_tokens.safetensors", exc) from None
        try:
            conditioner.class_tokens.load_state_dict(state)
        except RuntimeError as exc:
            raise RunError(f"{run_dir / 'class_tokens.safetensors'}: does not fit the run's profiles "
                           f"({str(exc).splitlines()[0]})") from None
        conditioner.class_tokens.eval().requires_grad_(False)
    else:
        conditioner = Conditioner("text", train_profiles, backbone, num_tokens=num_tokens, phenotype_draws=draws,
                                  descriptions=descriptions, unknown_frequency=unknown)
    return backbone, conditioner, profiles, cfg
