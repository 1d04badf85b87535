"""Settings of a `kgface.train` run that cannot work, refused before any data, VAE or evaluator is built
(`preflight`), and the trainer options that `preflight` and `kgface.train.train_generator` both read as numbers."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from .config import as_eta, as_number, container, disease_list
from .runtime import KG_FILE_KEYS
from .errors import UserError

log = logging.getLogger(__name__)


def atlas_share_of(cfg: DictConfig) -> float:
    """trainer.atlas_share as a number (null = 0)."""
    return as_number(cfg.trainer.get("atlas_share", 0.0) or 0.0, "trainer.atlas_share", "a share in [0, 1)")


def mark_weight_of(cfg: DictConfig) -> float:
    """trainer.mark_weight as a number (null = 0)."""
    return as_number(cfg.trainer.get("mark_weight", 0.0) or 0.0, "trainer.mark_weight", "a weight >= 0")


def _whole_at_least(value, key: str, low: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key}={value!r}: a whole number >= {low}" + (f" ({what})" if what else ""))
    return value


def _check_dropout_shares(trainer) -> None:
    """Guidance dropout carves one uniform draw per sample into both / tokens / text shares (trainer.guidance_dropout):
    shares outside [0, 1], or summing past 1, would overlap and drop what nobody asked for."""
    shares = {}
    for key in ("cfg_drop_tokens", "cfg_drop_text", "cfg_drop_both", "age_drop"):
        value = trainer.get(key, 0.0)
        try:
            shares[key] = float(value)
        except (TypeError, ValueError, OverflowError):  # float() of a huge integer overflows
            raise UserError(f"trainer.{key}={value!r}: a share of the training samples in [0, 1]") from None
        if not 0.0 <= shares[key] <= 1.0:
            raise UserError(f"trainer.{key}={value}: a share of the training samples in [0, 1]")
    total = shares["cfg_drop_tokens"] + shares["cfg_drop_text"] + shares["cfg_drop_both"]
    if total > 1.0:
        raise UserError(f"trainer.cfg_drop_tokens + cfg_drop_text + cfg_drop_both = {total:g}: the three shares of "
                        "guidance dropout are disjoint, so together at most 1 (default 0.1 + 0 + 0.05)")


def _check_trainer_numbers(cfg: DictConfig) -> None:
    """The loop's counts and rates: a bad one failed with a traceback, some only after the data, VAE and evaluator
    were built, and trainer.steps=0 saved an untrained generator with a final loss of 0."""
    t = cfg.trainer
    _whole_at_least(t.get("steps"), "trainer.steps", 1, "optimiser steps, e.g. 1200")
    for name, what in (("warmup_steps", "0: none"), ("checkpoint_every", "0: no checkpoints"),
                       ("keep_checkpoints", "0 keeps all"), ("val_every", "0: no validation grids")):
        # null is read as off by checkpoint_every / val_every; the loop casts the other two (a TypeError, late)
        if t.get(name) is not None or (name in ("warmup_steps", "keep_checkpoints") and name in t):
            _whole_at_least(t.get(name), f"trainer.{name}", 0, what)
    _whole_at_least(cfg.get("num_threads", 0) or 0, "num_threads", 0, "0 = torch's default")
    if t.get("num_threads") not in (None, 0):  # old runs' config.yaml hold 0
        # the loop set it process-wide from its first step: data, VAE and evaluator ran at num_threads, training and
        # everything after it at this, so num_threads=1 no longer repeated a run bit for bit
        raise UserError(f"trainer.num_threads={t.get('num_threads')!r}: set num_threads= instead (torch's threads "
                        "for the whole job)")
    if _whole_at_least(cfg.get("seed"), "seed", 0) >= 2 ** 44:
        # the loop's step seeds (seed * 1,000,003 + step) must fit torch's 64 bits: an overflow at step 0 otherwise
        raise UserError(f"seed={cfg.seed}: at most 2^44 - 1 (17,592,186,044,415): the training loop derives each "
                        "step's seed from it within torch's 64 bits")
    rates = {}
    for name in ("lr", "encoder_lr", "adapter_lr"):
        if name == "adapter_lr" and t.get(name) is None:
            continue  # null: the UNet's rate
        rates[name] = as_number(t.get(name), f"trainer.{name}", "a learning rate, e.g. 3e-4")
        if rates[name] < 0:  # 0 freezes that group (trainer.lr=0 trainer.adapter_lr=1e-3: the adapter alone)
            raise UserError(f"trainer.{name}={t.get(name)}: a learning rate >= 0, e.g. 3e-4 (0 freezes that group)")
    if not any(rates.values()):
        raise UserError("trainer.lr, encoder_lr and adapter_lr are all 0: nothing would train; give one a rate > 0")
    if "weight_decay" in t and t.get("weight_decay") is None:  # cast by the optimiser: a TypeError after the data
        raise UserError("trainer.weight_decay=null: a number >= 0 (0 switches it off)")
    if "adapter_scale" in cfg.model:  # null: a TypeError late; nan: a "loss became nan" that blamed trainer.lr
        scale = as_number(cfg.model.adapter_scale, "model.adapter_scale", "the KG adapter's scale, e.g. 1.0")
        modes = list(cfg.baselines) if cfg.get("baselines") else [cfg.conditioning]
        if scale == 0 and any(str(m) != "text" for m in modes):  # diffusers skips a branch at scale 0: no gradient
            raise UserError("model.adapter_scale=0 trains nothing of the token branch (the adapter, the KG encoder or "
                            "the class tokens get no gradient) and ships a generator whose tokens change nothing; "
                            "set it > 0 (scale 0 is for generation: kgface.generate adapter_scale=0)")
    for name in ("weight_decay", "max_grad_norm", "min_snr_gamma"):
        if t.get(name) is not None and as_number(t.get(name), f"trainer.{name}", "a number >= 0") < 0:
            raise UserError(f"trainer.{name}={t.get(name)}: a number >= 0 (0 switches it off)")
    if t.get("ema") and not 0.0 <= as_number(t.get("ema_decay"), "trainer.ema_decay", "in [0, 1)") < 1.0:
        raise UserError(f"trainer.ema_decay={t.get('ema_decay')}: a decay in [0, 1), e.g. 0.999")
    baselines = cfg.get("baselines")
    if baselines:
        if not OmegaConf.is_list(baselines):  # baselines=kg would be read letter by letter
            raise UserError(f"baselines={baselines}: a list of conditionings, e.g. baselines=[kg,text,class]")
        doubled = sorted({str(m) for m in baselines if list(baselines).count(m) > 1})
        if doubled:  # the second trained into the first's folder and overwrote its metrics
            raise UserError(f"baselines lists {doubled[0]} twice; name each conditioning once")


def _folder_resolution(folder: Path) -> int | None:
    """A diffusers folder's native side in pixels (unet sample_size x 2^(VAE blocks - 1)); None when unreadable
    (the folder check, earlier, names what is missing)."""
    import json

    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def preflight(cfg: DictConfig) -> None:
    """Refuse, with one line naming the key, every setting that cannot work and needs no heavy work to find out:
    conditioning names, atlas / mark-weight / observed-phenotype settings against the data, sample stages, VAE
    training options, a multi-process launch, the pretrained folder's layout and dtype, data.size against the model's
    side. Two side effects the run relies on: dlib's models load here once when evaluating (`face_identity`), and
    `cfg.model.pretrained`, `encoder.text_model` and `model.text_model` become absolute paths (config.yaml records
    them so: kgface.generate / evaluate / trial load the run from any directory)."""
    from .diffusion.conditioning import CONTROL, KG_MODES, MODES
    from .diffusion.phenotype_sets import observed_phenotypes_of
    from .runtime import learned_table

    for key in ("encoder.text_model", "model.text_model", *(f"kg.{k}" for k in KG_FILE_KEYS)):
        # the encoder reloads from the text model wherever the run is used; generate and trial compare the KG files
        value = OmegaConf.select(cfg, key)
        if value not in (None, ""):
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(str(value))), force_add=True)
            if key.endswith("text_model") and (key == "encoder.text_model" or cfg.model.name == "tiny"):
                from .encoders.text import resolve_text_model_path

                resolve_text_model_path(OmegaConf.select(cfg, key), key)  # a typo failed after the VAE was trained
    learned_table(cfg)  # profile.source / learned / blend: a missing file failed after the run folder was reset
    _check_trainer_numbers(cfg)
    # keys the job sets from one place: an override of the copy was silently replaced
    for key, source in (("trainer.seed", "seed"), ("encoder.num_tokens", "model.num_tokens")):
        value = OmegaConf.select(cfg, key)
        if value is not None and value != OmegaConf.select(cfg, source):
            raise UserError(f"{key}={value} is not read: the run takes it from {source} "
                            f"({OmegaConf.select(cfg, source)}); set {source}={value} instead")
    out_dim = OmegaConf.select(cfg, "encoder.out_dim")
    if out_dim is not None:  # from_config replaced it by the UNet's width in silence
        raise UserError(f"encoder.out_dim={out_dim} is not read: the KG tokens take the UNet's cross-attention width "
                        "(the model's); leave encoder.out_dim null")
    modes = list(cfg.baselines) if cfg.get("baselines") else [cfg.conditioning]
    # a typo in an encoder key was dropped, minutes later, by from_config (text and class runs never read them)
    if cfg.get("encoder") is not None and any(m in (*KG_MODES, CONTROL) for m in modes):
        from .encoders import KGEncoder

        enc = container(cfg.encoder)
        KGEncoder.check_settings(enc)
        from .encoders.text import check_sentence_width, resolve_text_model_path, text_model_widths

        folder = resolve_text_model_path(enc.get("text_model"))  # found once the texts were embedded, after the VAE
        check_sentence_width(folder, text_model_widths(folder)[1], enc.get("in_dim", 384))
        import torch

        from .encoders.graph import check_graph_settings

        with torch.random.fork_rng(devices=[]):  # its values (tokens, conv, heads, ...) checked by building it once,
            # minutes before the real one; the global seed stream is left as it was
            tokens = _whole_at_least(cfg.model.get("num_tokens", 8), "model.num_tokens", 1, "KG tokens, e.g. 8")
            KGEncoder.from_config({**enc, "num_tokens": tokens}, out_dim=8)
        check_graph_settings(enc.get("disease_text", "generic"), enc.get("unknown_frequency", 0.5))
        from .data.phantom.identity import AGE_GROUPS

        ages = _whole_at_least(cfg.encoder.get("age_groups", 0), "encoder.age_groups", 0, f"0 or {len(AGE_GROUPS)}")
        if ages not in (0, len(AGE_GROUPS)):  # the data's age index runs over every group: a shorter table failed
            raise UserError(f"encoder.age_groups={ages}: the faces carry {len(AGE_GROUPS)} age groups "  # at step 1
                            f"({', '.join(AGE_GROUPS)}); set encoder.age_groups={len(AGE_GROUPS)} or 0 (no age input)")
        batch = cfg.trainer.get("batch_size")
        if (cfg.encoder.get("center_tokens") and cfg.encoder.get("tokens", "pooled") == "pooled"
                and str(batch).isdigit() and int(batch) < 2):  # one profile gives no batch statistics to learn
            raise UserError(f"encoder.center_tokens=true with trainer.batch_size={batch}: the running statistics "
                            "never move at one profile a step, so nothing is centred; set encoder.center_tokens=false "
                            "or trainer.batch_size >= 2")
    if "text" in modes:  # text prompts train the UNet alone (no tokens, no adapter): its rate and LoRA are all
        pretrained = cfg.model.name != "tiny"
        drop = "drop text from baselines" if cfg.get("baselines") else "use another conditioning"
        if pretrained and str(cfg.model.get("lora_rank")) == "0":
            raise UserError("model.lora_rank=0 with conditioning text: a pretrained UNet trains only its LoRA under "
                            f"text prompts, so nothing would train; set model.lora_rank > 0 or {drop}")
        if as_number(cfg.trainer.get("lr"), "trainer.lr") == 0:
            raise UserError(f"trainer.lr=0 with conditioning text: text prompts train only the UNet ("
                            f"{'its LoRA' if pretrained else 'model=tiny: all of it'}), so nothing would train; give "
                            f"trainer.lr a rate > 0 or {drop}")
    as_eta(cfg.model.sample.get("eta", 0.0), "model.sample.eta")  # the samples are drawn after training
    # ... and so are these: a bad one failed after the whole training, with a traceback
    _whole_at_least(cfg.model.sample.get("steps"), "model.sample.steps", 1, "DDIM steps, e.g. 20")
    as_number(cfg.model.sample.get("guidance"), "model.sample.guidance", "e.g. 3")
    _whole_at_least(cfg.samples.get("per_cell"), "samples.per_cell", 1, "images per disease and stage")
    for key in ("transform_identities", "control_seeds"):
        _whole_at_least(cfg.samples.get(key, 0), f"samples.{key}", 0, "0 leaves them out")
    strength = as_number(cfg.samples.get("transform_strength"), "samples.transform_strength", "in (0, 1]")
    if not 0.0 < strength <= 1.0:
        raise UserError(f"samples.transform_strength={strength}: an SDEdit strength in (0, 1] (0.6: the default)")
    from .prompts.backends import make_backend

    llm = container(cfg.llm) or {}
    make_backend(llm)  # llm=openai without llm.model, an unknown llm.* key: refused before the run folder is written
    if CONTROL in modes:  # the control swaps phenotypes between diseases: with one, it would be kg itself
        listed = disease_list(cfg.data.get("diseases"), "data.diseases")  # one id is a list of one, not its letters
        if listed is None and cfg.kg.get("panel") is not None:
            from .runtime import panel_queries

            listed = [p["id"] for p in panel_queries(cfg)]  # kg.panel=ORPHA:870 is a panel of one
        if listed is not None and sum(str(d).strip().lower() != "healthy" for d in listed) < 2:
            raise UserError(f"baselines={CONTROL} needs at least 2 diseases to swap phenotypes between (the panel "
                            f"lists {len(listed)}); drop {CONTROL} from baselines")
    resume = cfg.trainer.get("resume")
    if len(modes) > 1 and resume not in (None, "", "latest"):
        # one path for every conditioning: the kg_shuffled control would continue kg's weights, text fail on them
        raise UserError(f"trainer.resume={resume} with baselines of {len(modes)} conditionings: each trains in its "
                        "own folder; use trainer.resume=latest (every one continues its own last checkpoint)")
    bad = [str(m) for m in modes if m not in (*MODES, CONTROL)]
    if bad:
        key = "baselines" if cfg.get("baselines") else "conditioning"
        raise UserError(f"{key}={bad[0]} is unknown; use one of {', '.join((*MODES, CONTROL))}")
    atlas_faces = 0
    if cfg.data.name == "phantom":
        from .data.phantom.dataset import atlas_settings

        atlas = cfg.data.get("atlas")
        atlas_faces = atlas_settings(OmegaConf.to_container(atlas, resolve=True) if OmegaConf.is_config(atlas)
                                     else atlas)[0]
    from .evaluation.clip_model import check_evaluator_keys
    from .evaluation.fitting import PHENOTYPE_HEADS

    check_evaluator_keys(container(cfg.evaluator))  # a typo keyed another cache entry: a refit reading the defaults
    if cfg.get("evaluate", True):
        from .evaluation.inputs import min_stage_of

        min_stage_of(container(cfg.evaluator).get("probe"))  # read after the data and VAE otherwise
    heads = str(cfg.evaluator.get("phenotype_heads", "all"))
    if heads not in PHENOTYPE_HEADS:
        raise UserError(f"evaluator.phenotype_heads={heads}: use all, atlas or zero_shot")
    if cfg.get("evaluate", True) and heads == "atlas":
        if cfg.data.name != "phantom":  # a train run rebuilds real data into the run folder, without an atlas
            raise UserError(f"evaluator.phenotype_heads=atlas needs the phantom's phenotype atlas; with "
                            f"data={cfg.data.name} set evaluator.phenotype_heads=all (or zero_shot: no labels needed)")
        if not atlas_faces:
            raise UserError("evaluator.phenotype_heads=atlas needs a phenotype atlas: set data.atlas.faces > 0 "
                            "(experiment=benchmark: 16000) or evaluator.phenotype_heads=all")
    if cfg.get("evaluate", True) and cfg.evaluator.get("name") == "tiny_clip":
        from .evaluation.towers import TOWERS, vision_tower

        if vision_tower(container(cfg.evaluator)) not in TOWERS:
            raise UserError(f"evaluator.vision.tower={vision_tower(container(cfg.evaluator))!r}: expected one of "
                            f"{', '.join(TOWERS)}")
    stages = list(cfg.samples.stages or [])
    if not stages or any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= 3 for s in stages):
        # the samples' rows label each image by its stage: a 1.5 would be drawn at 1.5 and labelled 1
        raise UserError(f"samples.stages={stages}: whole stages in 0-3, e.g. [0,1,2,3] (continuous severities: "
                        f"python -m kgface.generate stages=...)")
    share = atlas_share_of(cfg)
    if not 0.0 <= share < 1.0:
        raise UserError(f"trainer.atlas_share={share}: use a share of the batches in [0, 1)")
    if share > 0 and (cfg.data.name != "phantom" or not atlas_faces):
        raise UserError(f"trainer.atlas_share={share} needs the phantom's phenotype atlas: set data.atlas.faces > 0 "
                        "with data=phantom, or trainer.atlas_share=0")
    _check_dropout_shares(cfg.trainer)
    marks = mark_weight_of(cfg)
    if not (math.isfinite(marks) and marks >= 0):
        raise UserError(f"trainer.mark_weight={marks}: use a weight >= 0 (0 = the plain loss; 10 weighs a face's "
                        "marks about as much as the rest of it)")
    if marks > 0 and cfg.data.name != "phantom":  # photos have no aligned unmarked twin to find their marks by
        raise UserError(f"trainer.mark_weight={marks} needs rendered faces with a stage-0 twin (data=phantom); with "
                        f"data={cfg.data.name} set trainer.mark_weight=0")
    if observed_phenotypes_of(cfg) and cfg.data.name != "phantom":
        # a real photo's `{}` means "not labelled", not "shows nothing": conditioning on it would be a wrong label
        raise UserError(f"trainer.observed_phenotypes=true needs per-image phenotype labels that are complete, as "
                        f"the phantom's are (data=phantom); with data={cfg.data.name} set it to false")
    if cfg.get("evaluate", True):  # dlib's models load here once (a second) and are reused by the evaluation
        from .evaluation.face_identity import load_face_identity

        load_face_identity(cfg.get("face_identity", "auto"))
    if cfg.model.name == "tiny":  # its VAE is trained here; a bad setting must not wait for the data
        from .diffusion.vae import VAE_DEFAULTS, adversarial_active, check_discriminator_size, check_vae_train

        vae_train = check_vae_train({**VAE_DEFAULTS, **container(cfg.model.vae_train)})
        if adversarial_active(vae_train):
            size = int(cfg.model.tiny.get("image_size") or cfg.data.size)
            check_discriminator_size((size, size), vae_train["adv_weight"])
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:  # refused again in the trainer; here before any data is built
        raise UserError(f"WORLD_SIZE={world}: kgface trains on one device per run for now; launch one process "
                        "(python -m kgface.train or accelerate launch --num_processes 1)")
    if cfg.model.name == "tiny":
        from .diffusion.backbones import schedule_settings

        schedule = schedule_settings(container(cfg.model.get("schedule")))
        lr = float(cfg.trainer.lr)
        if schedule["prediction_type"] == "v_prediction" and schedule["rescale_betas_zero_snr"] and lr > 1e-3:
            # a warning, not a refusal: one measurement on one model size (docs/generation.md)
            log.warning(f"model.schedule: v_prediction with zero_terminal_snr at trainer.lr={lr:g}: on the default "
                        "tiny model at 2e-3 the loss jumped at step ~200 and the samples held no faces, where "
                        "trainer.lr=1e-3 trained; consider trainer.lr=1e-3 or lower")
    else:
        from .diffusion.models import check_pretrained_folder, scheduler_config

        folder = check_pretrained_folder(cfg.model.get("pretrained"), cfg.model.name)
        rank = _whole_at_least(cfg.model.get("lora_rank"), "model.lora_rank", 0, "0 trains the KG adapter only")
        if rank and cfg.model.get("lora_alpha") is not None and not as_number(
                cfg.model.get("lora_alpha"), "model.lora_alpha", "a LoRA scale numerator, e.g. the rank") > 0:
            raise UserError(f"model.lora_alpha={cfg.model.get('lora_alpha')}: a number > 0 (null: the rank)")
        # config.yaml records it absolute: kgface.generate / evaluate / trial load the run from any directory
        with open_dict(cfg):
            cfg.model.pretrained = os.path.abspath(folder)  # not resolve(): a symlinked folder keeps its path
        from .diffusion.backbones import pretrained_schedule

        pretrained_schedule(scheduler_config(folder, str(folder)), container(cfg.model.get("schedule")))
        import torch

        from .diffusion.backbones import PRECISION_NAMES, PRECISIONS

        dtype, precision = str(cfg.model.get("dtype", "fp32")), str(cfg.trainer.get("mixed_precision", "no"))
        if dtype not in PRECISIONS:
            raise UserError(f"model.dtype={dtype} is unknown; use {PRECISION_NAMES}")
        if dtype == "fp16" and not torch.cuda.is_available():
            # accelerate has no fp16 autocast or loss scaling on the CPU: fp32 inputs would meet fp16 weights
            raise UserError("model.dtype=fp16 needs a CUDA GPU (accelerate runs no fp16 autocast or loss scaling on "
                            "the CPU); use model.dtype=bf16 trainer.mixed_precision=bf16, or model.dtype=fp32")
        if dtype != "fp32" and precision != dtype:
            # frozen half-precision weights meet fp32 latents, tokens and LoRA weights: only autocast in the same
            # precision joins them (the trainable weights stay fp32)
            raise UserError(f"model.dtype={dtype} needs trainer.mixed_precision={dtype} (it is {precision}): the "
                            "frozen weights are half precision and only autocast runs them beside the fp32 LoRA and "
                            "adapter weights; set both, or model.dtype=fp32")
    precision = str(cfg.trainer.get("mixed_precision") or "no")  # null: accelerate's default, no
    if precision not in ("no", "bf16", "fp16"):
        raise UserError(f"trainer.mixed_precision={precision} is unknown; use no, bf16 or fp16")
    if precision == "fp16":
        import torch

        if not torch.cuda.is_available():  # accelerate would quietly train in fp32 under a config saying fp16
            raise UserError("trainer.mixed_precision=fp16 needs a CUDA GPU (accelerate runs no fp16 autocast on the "
                            "CPU); use bf16 or no")
    for name in ("grad_accum", "batch_size", "log_every"):
        if name in cfg.trainer:  # null too: the loop casts each (a TypeError after the data, VAE and evaluator)
            _whole_at_least(cfg.trainer.get(name), f"trainer.{name}", 1)
    key = "model.tiny.image_size" if cfg.model.name == "tiny" else "model.resolution"
    resolution = (cfg.model.get("tiny") or {}).get("image_size") if cfg.model.name == "tiny" \
        else cfg.model.get("resolution")
    pretrained = OmegaConf.select(cfg, "model.pretrained", throw_on_missing=False)
    if not resolution and cfg.model.name != "tiny" and pretrained not in (None, "", "???"):
        # null: the folder's own side (its UNet's sample size x the VAE's factor), as build_backbone reads it; the
        # check was skipped and a 512-px set trained SDXL's 1024-px time ids, then sampled at 1024
        resolution = _folder_resolution(Path(str(pretrained)))
        key = "model.resolution (null: model.pretrained's own side)"
    size = cfg.data.get("size")
    if resolution and size and int(resolution) != int(size):
        # training would see data.size latents while sampling draws the model's (SDXL's time ids too)
        raise UserError(f"data.size={size} but {key} is {resolution}: the model trains on data.size images and "
                        f"samples at {resolution}; set both to the same side (e.g. data.size={resolution})")

    if cfg.model.name == "tiny":  # shapes diffusers cannot build failed in GroupNorm / len() after the data was built
        from .diffusion.models import tiny_config
        from .encoders.text import check_token_width, resolve_text_model_path, text_model_widths

        tiny = tiny_config(container(cfg.model.get("tiny")))
        if not any(tiny["unet_attention_levels"]):  # a UNet without cross-attention never reads its condition (here,
            # not in tiny_config: a run trained so, an unconditioned ablation, still loads)
            raise UserError(f"model.tiny.unet_attention_levels={tiny['unet_attention_levels']}: at least one level "
                            "needs attention (true), or nothing conditions the UNet")
        folder = resolve_text_model_path(cfg.model.get("text_model"), "model.text_model")
        check_token_width(text_model_widths(folder)[0], tiny["cross_attention_dim"])  # else when the UNet is built
    # last, so the checks above keep their own messages: a kg file the source does not read, a phantom key it does
    # not, or a phantom value it cannot honour failed after the run folder was reset
    from .runtime import check_kg_settings

    check_kg_settings(cfg)
    if cfg.data.name == "phantom":
        from .data.build import phantom_config

        phantom_config(container(cfg.data))
