"""The evaluator's CLIP: a tiny open_clip model trained from scratch on real images and their captions, or a
pretrained open_clip model loaded from a local file (never downloaded).

- `build_clip(cfg)` returns (model, tokenizer, image_size). `cfg.name == "tiny_clip"` registers a custom open_clip
  model config (`kgface-tiny-clip-<hash>`, built from `cfg.vision` / `cfg.text` / `cfg.embed_dim`) at run time;
  `cfg.vision.tower=cnn` swaps its image tower for a full-resolution CNN (towers.py);
  `cfg.name == "openclip"` builds `cfg.model` and loads `cfg.pretrained`, a local file path.
- `train_clip(model, tokenizer, images, captions, cfg)` trains contrastively. Images whose captions are identical are
  all positives of each other (soft targets), so the many healthy or stage-0 images of a batch are not pushed apart.
- `ImageEncoder(model, image_size)` is the frozen image feature extractor: uint8 (or float in [0,1]) NCHW images in,
  L2-normalised features out; `num_features` is set, so torchmetrics' FID/KID take it as their `feature=` module.
"""
from __future__ import annotations

import copy
import os
import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from ..cache import stable_hash
from ..errors import UserError
from . import clip_state
from .towers import TOWERS, FullResolutionCNN, vision_tower

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EvaluatorConfigError(UserError):
    """An evaluator setting that cannot work (unknown model, missing weights file)."""


def plain_config(cfg) -> dict:
    """An evaluator config (DictConfig or dict) as a plain dict, interpolations resolved; evaluator.pretrained and
    a config .json evaluator.model as absolute paths (the saved evaluator rereads them from any directory: relative
    ones resolved against wherever kgface.evaluate ran)."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in ("pretrained", "model"):
        value = c.get(key)
        if isinstance(value, str) and value and (key == "pretrained" or is_config_file(value)):
            c[key] = os.path.abspath(os.path.expanduser(value))  # not resolve(): a linked file keeps its path
    return c


# every setting an evaluator config is read for, per evaluator.name (conf/evaluator/*.yaml; `train.class_weight` is
# documented, not in the file): a key outside them is a typo whose only effect was a new cache key (a refit)
EVALUATOR_KEYS = {
    "tiny_clip": {"name": None, "image_size": None, "embed_dim": None, "seed": None, "phenotype_threshold": None,
                  "phenotype_heads": None, "probe": ("l2", "min_stage", "blur"),
                  "vision": ("width", "layers", "patch_size", "head_width", "tower"),
                  "text": ("width", "heads", "layers", "context_length"),
                  "train": ("steps", "batch_size", "lr", "weight_decay", "warmup", "supervised_weight",
                            "disease_weight", "class_weight", "shift", "blur_share", "blur_sigma")},
    "openclip": {"name": None, "model": None, "pretrained": None, "seed": None, "phenotype_threshold": None,
                 "phenotype_heads": None, "probe": ("l2", "min_stage", "blur")},
}


def check_evaluator_keys(c: dict) -> None:
    """Refuse an evaluator setting no code reads (`+evaluator.train.class_wieght=0.5`), naming it and the known ones;
    an unknown evaluator.name is left to the builder's own error."""
    known = EVALUATOR_KEYS.get(str(c.get("name")))
    if known is None:
        return
    for key, value in c.items():
        if key not in known:
            raise EvaluatorConfigError(f"evaluator.{key} is not a setting of evaluator={c['name']}; known: "
                                       f"{', '.join(known)}")
        if known[key] is not None and isinstance(value, dict):
            extra = sorted(set(value) - set(known[key]))
            if extra:
                raise EvaluatorConfigError(f"evaluator.{key}.{extra[0]} is not a setting of evaluator={c['name']}; "
                                           f"known: {', '.join(f'{key}.{k}' for k in known[key])}")


def tiny_model_config(cfg) -> dict:
    """The open_clip model config of `evaluator=tiny_clip`."""
    c = plain_config(cfg)
    v, t = c["vision"], c["text"]
    # vision.layers: an int = a ViT of that depth; a list of 4 ints = open_clip's ModifiedResNet (a CNN)
    vision_cfg = {"image_size": int(c["image_size"]),
                  "layers": [int(n) for n in v["layers"]] if isinstance(v["layers"], (list, tuple))
                  else int(v["layers"]), "width": int(v["width"]),
                  "patch_size": int(v.get("patch_size", 16)), "head_width": int(v.get("head_width", 64))}
    if vision_tower(c) == "cnn":  # a small placeholder open_clip builds and build_clip replaces (vision.width is the
        vision_cfg = {"image_size": int(c["image_size"]), "layers": [1, 1, 1, 1], "width": 8}  # CNN's, not its)
    return {
        "embed_dim": int(c["embed_dim"]),
        "vision_cfg": vision_cfg,
        "text_cfg": {"context_length": int(t["context_length"]), "vocab_size": 49408, "width": int(t["width"]),
                     "heads": int(t["heads"]), "layers": int(t["layers"])},
    }


def register_tiny(cfg) -> str:
    """Register the tiny config with open_clip under a name derived from its content; return the name."""
    from open_clip import factory

    mc = tiny_model_config(cfg)
    name = f"kgface-tiny-clip-{stable_hash(mc, 8)}"
    factory._MODEL_CONFIGS[name] = copy.deepcopy(mc)  # open_clip 2.x-3.x: the registry add_model_config fills
    return name


HF_KEYS = ("hf_model_name", "hf_tokenizer_name")


def is_config_file(model: str) -> bool:
    """evaluator.model names an open_clip config JSON (e.g. BiomedCLIP's open_clip_config.json), not a built-in."""
    return str(model).lower().endswith(".json")


def register_config_file(model: str) -> str:
    """Register the open_clip model config in this JSON file (a bare config, or open_clip_config.json's
    `model_cfg`) under a name keyed by its content, its Hugging Face text model and tokenizer read from local
    folders (relative paths from the file's folder); returns the name. Names that are not local folders would be
    fetched from the hub: a one-line error says how to put them on disk."""
    import json

    from open_clip import factory

    path = Path(model).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvaluatorConfigError(f"evaluator.model={model}: file not found (an open_clip model config JSON)") from None
    except (OSError, ValueError) as exc:
        raise EvaluatorConfigError(f"evaluator.model={model}: not a readable JSON file ({exc})") from None
    mc = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(mc, dict) or not all(k in mc for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise EvaluatorConfigError(f"evaluator.model={model}: needs embed_dim, vision_cfg and text_cfg (an open_clip "
                                   "model config, or open_clip_config.json with them under model_cfg)")
    mc = copy.deepcopy(mc)
    timm_name = str((mc.get("vision_cfg") or {}).get("timm_model_name") or "")
    if timm_name.startswith(("hf-hub:", "hf_hub:")):  # timm fetches such a config even without weights
        raise EvaluatorConfigError(f"{path}: vision_cfg.timm_model_name={timm_name} is fetched from the Hugging "
                                   "Face hub by timm; kgface downloads nothing: name a timm architecture instead")
    if timm_name:  # open_clip 2.x would download timm's ImageNet weights first; the CLIP weights replace them anyway
        mc["vision_cfg"]["timm_model_pretrained"] = False
    pre = data.get("preprocess_cfg") or {}
    try:  # the normalisation its weights were trained with (CLIP's unless the file says otherwise)
        norm = _other_norm(pre.get("mean", CLIP_MEAN), pre.get("std", CLIP_STD))
    except (TypeError, ValueError):
        raise EvaluatorConfigError(f"{path}: preprocess_cfg.mean / std must be three numbers each") from None
    text_files, written = {}, copy.deepcopy(mc)  # the name hashes the config as written, not where it was read
    for key in HF_KEYS:
        value = mc["text_cfg"].get(key)
        if value:
            folder = path.parent / Path(str(value)).expanduser()
            if not folder.is_dir():
                raise EvaluatorConfigError(
                    f"{path}: text_cfg.{key}={value} is not a local folder, and open_clip would download it from "
                    "the Hugging Face hub; kgface downloads nothing: save that model's config.json and tokenizer "
                    f"files in a folder and write its path as text_cfg.{key}")
            mc["text_cfg"][key] = str(folder.resolve())
            # the text model's config and tokenizer files shape the text features: they key the name too
            text_files[key] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())
                               if f.suffix in (".json", ".txt", ".model") and f.stat().st_size < (64 << 20)}
    # the folders' files key the name by their bytes: the same files at another absolute path (another checkout, a
    # shared cache) give the same name, so a saved evaluator loads and a cached one is found
    keyed = {'config': written, 'text_files': text_files, **({"normalisation": norm} if norm else {})}
    name = f"kgface-openclip-{stable_hash(keyed, 8)}"
    factory._MODEL_CONFIGS[name] = mc  # open_clip 2.x-3.x: the registry add_model_config fills
    _REGISTERED_NORMS[name] = norm
    return name


_REGISTERED_NORMS: dict[str, tuple | None] = {}  # register_config_file's names -> their normalisation


def _other_norm(mean, std) -> tuple | None:
    """(mean, std) as float tuples where they are not CLIP's, else None (CLIP's: every tiny CLIP's, most models')."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("three channels")
    if np.allclose(mean, CLIP_MEAN, atol=1e-6) and np.allclose(std, CLIP_STD, atol=1e-6):
        return None
    return mean, std


def builtin_normalisation(name: str) -> tuple | None:
    """The normalisation an open_clip built-in model's released weights were trained with, from open_clip's
    table of its pretrained tags (nothing is downloaded): MobileCLIP's and PE-Core's are not CLIP's, and a local
    weights file passed to open_clip gets CLIP's unless told. None: CLIP's. Tags that disagree (one of ViT-L-14's):
    CLIP's, with a warning naming the others."""
    import open_clip

    norms = {}
    for tag in open_clip.list_pretrained_tags_by_model(name):
        cfg = open_clip.get_pretrained_cfg(name, tag) or {}
        if cfg.get("mean") is not None and cfg.get("std") is not None:
            norms[tag] = _other_norm(cfg["mean"], cfg["std"])
    distinct = set(norms.values())
    if len(distinct) == 1:
        return distinct.pop()
    if len(distinct) > 1:
        others = sorted(t for t, n in norms.items() if n is not None)
        log.warning(f"evaluator.model={name}: its released weights {others} were trained with another image "
                    "normalisation than the rest; kgface gives every image CLIP's, so weights of those tags would "
                    "be read with features off their training")
    return None


def model_normalisation(c: dict, registered: str | None = None) -> tuple | None:
    """(mean, std) an evaluator config's images are normalised with where it is not CLIP's (None: CLIP's): an
    openclip config .json's preprocess_cfg, a built-in model's released weights'; the tiny CLIP: CLIP's."""
    if c.get("name") != "openclip":
        return None
    model = str(c.get("model") or "")
    if is_config_file(model):
        name = registered if registered in _REGISTERED_NORMS else register_config_file(model)
        return _REGISTERED_NORMS[name]
    return builtin_normalisation(model)


def registered_config_name(cfg: dict, given: str | None = None) -> str | None:
    """The name register_config_file gives an evaluator=openclip config's evaluator.model .json (`given`: the name
    the caller already has, so nothing is read again); None for a built-in model or the tiny CLIP."""
    if cfg.get("name") != "openclip" or not is_config_file(cfg.get("model") or ""):
        return None
    return given or register_config_file(cfg["model"])


def build_clip(cfg, load_pretrained: bool = True, registered: str | None = None):
    """(model, tokenizer, image_size) for an evaluator config; the model is in eval mode on CPU. `registered`: the
    name register_config_file just returned for cfg.model in this process (its files are not read again)."""
    import open_clip
    from open_clip import factory

    c = plain_config(cfg)
    if c["name"] == "tiny_clip":
        tower = vision_tower(c)
        if tower not in TOWERS:
            raise EvaluatorConfigError(f"evaluator.vision.tower={tower!r}: expected one of {', '.join(TOWERS)}")
        name = register_tiny(c)
        model = open_clip.create_model(name, pretrained=None)
        image_size = int(c["image_size"])
        if tower == "cnn":  # open_clip's text tower and projection kept; the image tower replaced (towers.py)
            model.visual = FullResolutionCNN(int(c["embed_dim"]), int(c["vision"]["width"]), image_size)
    elif c["name"] == "openclip":
        name = str(c.get("model") or "")
        if is_config_file(name):
            # a name this process registered is reused as is; any other would fail deep in open_clip
            name = registered if registered in factory._MODEL_CONFIGS else register_config_file(name)
        elif name not in open_clip.list_models():
            raise EvaluatorConfigError(f"evaluator.model={name!r} is not an open_clip model "
                                       f"(e.g. ViT-B-16, ViT-B-32; open_clip.list_models()) nor a config .json")
        else:
            text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg") or {}
            hub = next((text_cfg[k] for k in HF_KEYS if text_cfg.get(k)), None)
            if hub:  # open_clip would fetch this tokenizer / text model from the Hugging Face hub: never at run time
                raise EvaluatorConfigError(
                    f"evaluator.model={name}: its text tower or tokenizer is the Hugging Face model {hub}, which "
                    "open_clip downloads; kgface downloads nothing: use a model with open_clip's own text tower "
                    "(e.g. ViT-B-16), or a config .json naming local folders (docs/evaluation.md, BiomedCLIP)")
        path = c.get("pretrained")
        if load_pretrained:
            if not path:
                raise EvaluatorConfigError("evaluator=openclip needs evaluator.pretrained=PATH, a local weights file "
                                           "(nothing is downloaded)")
            if not Path(str(path)).expanduser().is_file():
                raise EvaluatorConfigError(f"evaluator.pretrained={path}: file not found (a local open_clip weights "
                                           "file; nothing is downloaded)")
        if load_pretrained:
            # absolute: open_clip looks a relative name up as a pretrained tag first ("openai" would download); not
            # resolved: open_clip picks its loader by the name's extension, and a Hugging Face cache's
            # x.safetensors is a link to an extensionless blob
            model = open_clip.create_model(name, pretrained=str(Path(str(path)).expanduser().absolute()))
        else:  # a Hugging Face text tower would otherwise load base weights from its (local) folder
            model = open_clip.create_model(name, pretrained=None, pretrained_hf=False)  # the 2.x name, 3.x keeps it
        image_size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list))
                         else model.visual.image_size)
    else:
        raise EvaluatorConfigError(f"evaluator.name={c['name']!r}: expected tiny_clip or openclip")
    # the tiny CLIP's own context: ViT-B-32's tokenizer pads to 77, where a longer text.context_length's position
    # table would not broadcast against it
    tokenizer = open_clip.get_tokenizer(name) if c["name"] == "openclip" else open_clip.get_tokenizer(
        "ViT-B-32", context_length=int(((c.get("text") or {}).get("context_length")) or 77))
    # the feature width, which a timm image tower beside a Hugging Face text tower does not expose
    model.kgface_embed_dim = int(open_clip.get_model_config(name)["embed_dim"])
    model.kgface_norm = model_normalisation(c, name)  # every image the model reads: encoding and training
    model.eval()
    return model, tokenizer, image_size


def captions_cut(tokenizer, captions: list[str]) -> float:
    """Share of `captions` longer than the tokenizer's context (start and end tokens included), 0 when unknown."""
    encode, context = getattr(tokenizer, "encode", None), getattr(tokenizer, "context_length", None)
    if encode is None or not context or not captions:
        return 0.0
    length = {cap: len(encode(cap)) + 2 for cap in set(captions)}
    return sum(length[cap] > int(context) for cap in captions) / len(captions)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_model_input(images: torch.Tensor, image_size: int, norm: tuple | None = None) -> torch.Tensor:
    """uint8 NCHW (or float in [0,1]) -> float, resized to the model's size, normalised (norm: (mean, std) where
    the model's weights want other than CLIP's)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 1)
    mean, std = norm or (CLIP_MEAN, CLIP_STD)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class ImageEncoder(torch.nn.Module):
    """Frozen CLIP image features (L2-normalised); the feature extractor of every score and of FID/KID."""

    def __init__(self, model: torch.nn.Module, image_size: int, batch_size: int = 128):
        super().__init__()
        self.model = model
        self.image_size = int(image_size)
        self.batch_size = batch_size
        if getattr(model, "kgface_embed_dim", None):  # build_clip's models: their config's embed_dim
            self.num_features = int(model.kgface_embed_dim)
        elif getattr(model, "text_projection", None) is not None:
            self.num_features = int(model.text_projection.shape[1])
        else:
            self.num_features = int(model.visual.output_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        out = []
        for i in range(0, len(images), self.batch_size):
            x = to_model_input(images[i:i + self.batch_size], self.image_size,
                               getattr(self.model, "kgface_norm", None))
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.num_features)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    model.eval()
    return F.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1)


def _augment(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a translation of up to `shift` px (edge-replicated padding); x is float NCHW."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if shift > 0:
        h, w = x.shape[-2:]
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return x


def gaussian_kernel_size(sigma: float) -> int:
    """The odd kernel width (covering +-3 sigma) of every Gaussian blur of the evaluator."""
    return 2 * math.ceil(3 * sigma) + 1


def gaussian_blur_float(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Float NCHW images through a Gaussian blur of `sigma` px (gaussian_kernel_size, reflect-padded)."""
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, kernel_size=gaussian_kernel_size(sigma), sigma=sigma)


def train_blur(train_cfg: dict | None, image_size: int | None = None) -> tuple[float, float]:
    """evaluator.train.blur_share and blur_sigma, checked before the CLIP trains: the share of training faces blurred
    in each batch (0 = off; blur_sigma is then not read) and the largest Gaussian sigma (px at the CLIP's input size)
    drawn for them."""
    t = train_cfg or {}

    def number(key, default):
        v = t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise EvaluatorConfigError(f"evaluator.train.{key}={v!r}: give a finite number, e.g. "
                                       "evaluator.train.blur_share=0.5 evaluator.train.blur_sigma=1.0")
        return float(v)

    share = number("blur_share", 0.0)
    if not 0.0 <= share <= 1.0:
        raise EvaluatorConfigError(f"evaluator.train.blur_share={share}: must be a share of the batch in [0, 1] "
                                   "(0 = off)")
    if share == 0:
        return 0.0, 1.0
    sigma = number("blur_sigma", 1.0)
    if not sigma > 0:
        raise EvaluatorConfigError(f"evaluator.train.blur_sigma={sigma}: must be > 0 (px) when blur_share > 0")
    if image_size is not None and gaussian_kernel_size(sigma) > image_size:
        raise EvaluatorConfigError(f"evaluator.train.blur_sigma={sigma} px is too wide for the CLIP's {image_size} px "
                                   f"input (kernel {gaussian_kernel_size(sigma)} px): lower it")
    return share, sigma


def _blur_some(x: torch.Tensor, share: float, max_sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Each face of float NCHW `x` is blurred with probability `share`, by a Gaussian of sigma uniform in
    (0, max_sigma] px: the features learn that softness (a VAE round trip, a soft photo) is not a disease. Share 0
    draws nothing from `gen`, so runs without it keep their random stream."""
    if share <= 0:
        return x
    n = x.shape[0]
    pick = torch.rand(n, generator=gen) < share
    sigma = max_sigma * (1.0 - torch.rand(n, generator=gen))  # (0, max_sigma]
    x = x.clone()
    for i in torch.nonzero(pick).flatten().tolist():
        x[i:i + 1] = gaussian_blur_float(x[i:i + 1], float(sigma[i]))
    return x


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, groups: torch.Tensor,
                     classes: torch.Tensor | None = None, class_weight: float = 0.0) -> torch.Tensor:
    """Symmetric CLIP loss with soft targets: items of the same group (same caption) are all positives; with
    `classes`, pairs of the same class (disease) but different captions are partial positives (`class_weight`)."""
    logits = logit_scale.exp().clamp(max=100) * img @ txt.t()
    same = (groups.view(-1, 1) == groups.view(1, -1)).float()
    if classes is not None and class_weight > 0:  # class -1: no disease (atlas faces), never a partial positive
        both = (classes.view(-1, 1) == classes.view(1, -1)) & (classes.view(-1, 1) >= 0)
        same = torch.maximum(same, class_weight * both.float())
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean())


class AuxiliaryHeads(torch.nn.Module):
    """Linear heads on the image embedding used only while training the CLIP (then discarded): disease (softmax),
    phenotype presence (sigmoid) and stage (regression). From scratch on ~1k images, the contrastive loss alone
    learns *who* a face is rather than its small phenotype effects; these labels point the features at them."""

    def __init__(self, dim: int, num_classes: int, num_phenotypes: int):
        super().__init__()
        self.disease = torch.nn.Linear(dim, num_classes)
        self.phenotypes = torch.nn.Linear(dim, max(1, num_phenotypes))
        self.stage = torch.nn.Linear(dim, 1)

    def loss(self, emb: torch.Tensor, classes: torch.Tensor, presence: torch.Tensor | None,
             stages: torch.Tensor | None, disease_weight: float = 1.0) -> torch.Tensor:
        """classes -1 and stages NaN (phenotype-atlas faces) are left out of the disease and stage terms, presence
        rows of NaN (photos whose phenotypes are not labelled) out of the phenotype term."""
        out = emb.new_zeros(())
        known = classes >= 0
        if known.any():
            out = out + disease_weight * F.cross_entropy(self.disease(emb[known]), classes[known])
        if presence is not None and presence.shape[1] > 0:
            labelled = ~torch.isnan(presence).any(1)
            if labelled.all():
                out = out + F.binary_cross_entropy_with_logits(self.phenotypes(emb), presence)
            elif labelled.any():
                out = out + F.binary_cross_entropy_with_logits(self.phenotypes(emb[labelled]), presence[labelled])
        if stages is not None and torch.isfinite(stages).any():
            ok = torch.isfinite(stages)
            out = out + F.mse_loss(self.stage(emb[ok]).squeeze(-1), stages[ok])
        return out


def train_clip(model, tokenizer, images: torch.Tensor, captions: list[str], cfg, progress: bool = True,
               labels: list[str] | None = None, presence: np.ndarray | None = None,
               stages: np.ndarray | None = None, state_dir: Path | None = None, state_every: int = 0,
               fingerprint: str = "") -> dict:
    """Train `model` contrastively on uint8 NCHW images and their captions; returns a small training log.

    labels: the disease per image; same-disease pairs are partial positives with weight `train.class_weight`, and
    with `train.supervised_weight` > 0 an auxiliary head classifies it (plus `presence` [N, P] phenotype labels and
    `stages` [N], when given). A label None (stage NaN) marks a face without a disease (the phenotype atlas).
    state_dir / state_every: the training state is saved there every `state_every` steps, and a call that finds a
    state saved under the same `fingerprint` resumes from it, ending with the weights of an uninterrupted run
    (clip_state.py)."""
    from tqdm import tqdm

    c = plain_config(cfg)
    t = c["train"]
    image_size = int(c["image_size"])
    seed = int(c.get("seed", 0))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    if n < 2:
        raise UserError("the evaluator needs at least 2 training images")
    batch = min(int(t["batch_size"]), n)
    steps = int(t["steps"])
    uniq = {cap: k for k, cap in enumerate(dict.fromkeys(captions))}
    groups = torch.tensor([uniq[cap] for cap in captions])
    tokens = tokenizer(list(uniq))  # each distinct caption once
    cut = captions_cut(tokenizer, captions)
    if cut > 0:  # the text tower reads the first context_length tokens: later phenotype names are lost to the
        # contrastive term (the auxiliary heads still get every label; docs/evaluation.md, "Captions")
        log.info("%.1f%% of the evaluator's training captions are longer than the tokenizer's %d tokens and are cut",
                 100 * cut, getattr(tokenizer, "context_length", 77))
    cls_index = {c: k for k, c in enumerate(dict.fromkeys(x for x in labels if x is not None))} \
        if labels is not None else None
    classes = torch.tensor([-1 if c is None else cls_index[c] for c in labels]) if labels is not None else None
    class_weight = float(t.get("class_weight", 0.0))
    sup_weight = float(t.get("supervised_weight", 0.0)) if classes is not None else 0.0
    disease_weight = float(t.get("disease_weight", 1.0))
    aux = None
    if sup_weight > 0:
        emb_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
            else int(model.visual.output_dim)
        aux = AuxiliaryHeads(emb_dim, len(cls_index), 0 if presence is None else presence.shape[1])
        pres_t = None if presence is None else torch.as_tensor(presence, dtype=torch.float32)
        stage_t = None if stages is None else torch.as_tensor(np.asarray(stages, dtype=np.float32))
    blur_share, blur_sigma = train_blur(t, image_size)
    x_all = images.float() / 255.0
    if tuple(x_all.shape[-2:]) != (image_size, image_size):  # as to_model_input: a non-square photo too
        x_all = F.interpolate(x_all, size=(image_size, image_size), mode="bicubic", antialias=True).clamp(0, 1)
    norm = getattr(model, "kgface_norm", None) or (CLIP_MEAN, CLIP_STD)  # as ImageEncoder reads these images
    mean, std = torch.tensor(norm[0]).view(1, 3, 1, 1), torch.tensor(norm[1]).view(1, 3, 1, 1)
    named = list(model.named_parameters()) + ([] if aux is None else list(aux.named_parameters("aux")))
    decay = [p for n_, p in named if p.ndim >= 2 and "embedding" not in n_]
    no_decay = [p for n_, p in named if not (p.ndim >= 2 and "embedding" not in n_)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(t["weight_decay"])},
                             {"params": no_decay, "weight_decay": 0.0}], lr=float(t["lr"]), betas=(0.9, 0.98))
    warmup = max(1, int(float(t.get("warmup", 0.1)) * steps))

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    order, pos, losses, start, first, before = torch.randperm(n, generator=gen), 0, [], time.time(), 0, 0.0
    modules = {"model": model, **({"aux": aux} if aux is not None else {})}
    if state_dir is not None:
        resumed = clip_state.load_state(Path(state_dir), fingerprint, modules, opt, sched, gen, n, steps)
        if resumed is not None:
            first, pos, order, losses, before = (resumed[k] for k in ("step", "pos", "order", "losses", "seconds"))
            log.info("evaluator CLIP: resuming at step %d of %d from %s", first, steps, state_dir)
    bar = tqdm(range(first, steps), desc="training evaluator CLIP", disable=not progress, unit="step",
               initial=first, total=steps)
    for step in bar:
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        x = _augment(x_all[idx], int(t.get("shift", 0)), gen)
        x = _blur_some(x, blur_share, blur_sigma, gen)  # share 0: no draw, the random stream of runs without it
        x = (x - mean) / std
        g = groups[idx]
        ug, inv = torch.unique(g, return_inverse=True)
        emb = model.encode_image(x)
        img = F.normalize(emb, dim=-1)
        txt = F.normalize(model.encode_text(tokens[ug]), dim=-1)[inv]
        loss = contrastive_loss(img, txt, model.logit_scale, g, None if classes is None else classes[idx],
                                class_weight)
        if aux is not None:
            loss = loss + sup_weight * aux.loss(emb, classes[idx], None if pres_t is None else pres_t[idx],
                                                None if stage_t is None else stage_t[idx], disease_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if state_dir is not None and state_every > 0 and (step + 1) % state_every == 0 and step + 1 < steps:
            try:  # a failed save (a full disk) costs only the ability to resume, not the run
                clip_state.save_state(Path(state_dir), step + 1, fingerprint, modules, opt, sched, gen, order, pos,
                                      losses, before + time.time() - start)
            except Exception as exc:  # noqa: BLE001 - safetensors and torch.save report a full disk as their own
                log.warning("%s: the evaluator CLIP's training state was not saved at step %d (%s)", state_dir,
                            step + 1, exc)
    model.eval()
    seconds = before + time.time() - start  # a resumed run counts the time its state had
    return {"steps": steps, "batch_size": batch, "supervised_weight": sup_weight, "seconds": round(seconds, 3),
            "final_loss": float(np.mean(losses[-20:])), "first_loss": float(np.mean(losses[:5])),
            "parameters": count_parameters(model), "distinct_captions": len(uniq),
            "captions_cut": round(cut, 4), **({"blur_share": blur_share, "blur_sigma": blur_sigma} if blur_share else {})}
