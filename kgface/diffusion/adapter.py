"""KG adapter: decoupled cross-attention (IP-Adapter style) that lets KG tokens [B, K, D] steer a diffusers UNet.

Every cross-attention module (`attn2`) of the UNet gets diffusers' own `IPAdapterAttnProcessor2_0`: the text
attention runs unchanged, a second attention with the same query runs over the KG tokens through new bias-free
`to_k_ip` / `to_v_ip` projections, and `scale * result` is added. Sizes are read from each attention module, so one
code path serves a tiny UNet, SD 1.5 (768) and SDXL (2048). `to_v_ip` starts at zero, so the adapted UNet equals the
base UNet at step 0; scale 0 skips the branch. Since the projections have no bias, all-zero tokens also add exactly
nothing: zeros are the "no KG condition" input (classifier-free guidance's negative).

The tokens reach the processors through the UNet's stock IP-Adapter route: `unet.encoder_hid_proj` is a
`MultiIPAdapterImageProjection` holding one `TokenPassThrough`, and `unet.config.encoder_hid_dim_type` is
"ip_image_proj". So `unet(..., added_cond_kwargs={"image_embeds": [tokens]})` works, and so do the stock pipelines'
`ip_adapter_image_embeds=[torch.cat([null_tokens, tokens])]` (no image encoder needed).

Files: `adapter.safetensors` (keys "<attention module path>.to_k_ip.weight" / ".to_v_ip.weight") and `adapter.json`
(the `KGAdapterConfig` plus each layer's shapes). Loading reads safetensors only, never pickle.

Identity stacking (`stack_ip_adapter`): a user's IP-Adapter checkpoint (e.g. a face adapter) joins the KG adapter on
the same processors as a second entry of their `to_k_ip` / `to_v_ip` / `scale` lists and of the projection's
`image_projection_layers`, so one attention call serves both (diffusers' multi-IP-Adapter layout). The stock
`load_ip_adapter` would replace the KG processors, hence this. The reference face's image embeddings are fed by a UNet
forward pre-hook (`added_cond_kwargs["image_embeds"] += [identity]`), so every caller of the UNet (kgface's sampler,
the stock pipelines) gets them without a new argument.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from torch import nn

from ..errors import UserError

WEIGHTS_NAME = "adapter.safetensors"
CONFIG_NAME = "adapter.json"
FORMAT = "kgface-kg-adapter"
FORMAT_VERSION = 1


class AdapterError(UserError, ValueError):
    """An adapter file or KG-token input that does not fit the UNet; the message names the file, key or shape."""


@dataclass
class KGAdapterConfig:
    num_tokens: int = 8          # K, the number of KG tokens per sample (the weights do not depend on it)
    token_dim: int = 768         # D, the width of each KG token (default: the UNet's cross-attention width)
    scale: float = 1.0           # weight of the KG branch; 0 = base model
    layers: dict[str, dict[str, int]] = field(default_factory=dict)  # attention path -> {hidden_size, token_dim}
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, source: str = CONFIG_NAME) -> "KGAdapterConfig":
        if not isinstance(d, dict):
            raise AdapterError(f"{source}: not a kgface KG adapter config (a JSON {type(d).__name__}, expected an "
                               "object)")
        if d.get("format") != FORMAT:
            raise AdapterError(f"{source}: not a kgface KG adapter config (format={d.get('format')!r}, "
                               f"expected {FORMAT!r})")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise AdapterError(f"{source}: format_version {d['format_version']} is newer than this kgface "
                               f"understands ({FORMAT_VERSION}); upgrade kgface")
        missing = [k for k in ("num_tokens", "token_dim") if k not in d]
        if missing:  # a default would read as "saved from another base model" at the first shape check
            raise AdapterError(f"{source}: lacks {missing[0]}; the file is incomplete (save it again with "
                               "save_kg_adapter)")
        known = {k: d[k] for k in ("num_tokens", "token_dim", "scale", "layers", "format", "format_version") if k in d}
        return cls(**known)


class TokenPassThrough(nn.Module):
    """The 'image projection' of the KG route: KG tokens are already in the UNet's token space, so it only checks
    their width and casts them to the UNet's dtype (the empty buffer follows `.to(dtype/device)`)."""

    def __init__(self, token_dim: int):
        super().__init__()
        self.token_dim = int(token_dim)
        self.register_buffer("_probe", torch.empty(0), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.token_dim:
            raise AdapterError(f"KG tokens have width {tokens.shape[-1]} but the adapter expects token_dim="
                               f"{self.token_dim} (shape [B, K, {self.token_dim}])")
        return tokens.to(device=self._probe.device, dtype=self._probe.dtype)


def _cross_attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Attention path -> module for every cross-attention (`attn2`) layer, in `unet.attn_processors` order."""
    out = {}
    for name in unet.attn_processors:
        path = name[: -len(".processor")]
        if not path.endswith("attn2") or "motion_modules" in path:
            continue
        attn = unet.get_submodule(path)
        if not getattr(attn, "is_cross_attention", True):
            continue
        out[path] = attn
    return out


def _linear(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)  # see through a peft LoRA wrapper


def _kg_processors(unet: nn.Module) -> dict[str, IPAdapterAttnProcessor2_0]:
    """The KG branch's processors: IP-Adapter processors whose first token route is the KG tokens' pass-through. A
    conditioning=text UNet with a stacked identity adapter has IP-Adapter processors too, and no KG branch."""
    hid = getattr(unet, "encoder_hid_proj", None)
    layers = getattr(hid, "image_projection_layers", None)
    if not layers or not isinstance(layers[0], TokenPassThrough):
        return {}
    return {n[: -len(".processor")]: p for n, p in unet.attn_processors.items()
            if isinstance(p, IPAdapterAttnProcessor2_0)}


def has_kg_adapter(unet: nn.Module) -> bool:
    return bool(_kg_processors(unet))


def attach_kg_adapter(unet: nn.Module, num_tokens: int = 8, scale: float = 1.0, token_dim: int | None = None,
                      init_keys_from_text: bool = True, dtype: torch.dtype | None = None) -> KGAdapterConfig:
    """Give every cross-attention layer of `unet` a zero-initialised KG branch; return the adapter's config.

    token_dim: width of the KG tokens (default: each layer's own cross-attention width, i.e. the text width).
    init_keys_from_text: start `to_k_ip` as a copy of the layer's text `to_k` where the shapes allow (IP-Adapter's
    initialisation), so KG tokens are keyed like text from the first step; `to_v_ip` always starts at zero.
    The new weights are trainable (requires_grad=True); nothing else of the UNet is touched. dtype: theirs (None:
    the UNet's, as diffusers' IP-Adapter; kgface keeps them fp32 over a half-precision base and runs it in autocast).
    """
    if any(isinstance(p, IPAdapterAttnProcessor2_0) for p in unet.attn_processors.values()):
        raise AdapterError("this UNet already has a KG adapter (or an IP-Adapter); call detach_kg_adapter first")
    modules = _cross_attention_modules(unet)
    if not modules:
        raise AdapterError(f"{type(unet).__name__} has no cross-attention (attn2) layers to attach a KG adapter to")
    widths = {_linear(a.to_k).in_features for a in modules.values()}
    if token_dim is None:
        if len(widths) != 1:
            raise AdapterError(f"the UNet's cross-attention layers have different widths {sorted(widths)}; "
                               "pass token_dim explicitly")
        token_dim = widths.pop()
    ref = next(unet.parameters())
    procs, layers = {}, {}
    for name, proc in unet.attn_processors.items():
        path = name[: -len(".processor")]
        if path not in modules:
            procs[name] = proc  # self-attention keeps its processor
            continue
        attn = modules[path]
        to_k = _linear(attn.to_k)
        hidden = to_k.out_features  # heads * head_dim, what the processor's view(..., heads, head_dim) needs
        p = IPAdapterAttnProcessor2_0(hidden_size=hidden, cross_attention_dim=token_dim, num_tokens=(num_tokens,),
                                      scale=float(scale))
        with torch.no_grad():
            if init_keys_from_text and to_k.in_features == token_dim:
                p.to_k_ip[0].weight.copy_(to_k.weight.detach().float())
            p.to_v_ip[0].weight.zero_()
        p.to(device=ref.device, dtype=dtype or ref.dtype)
        p.requires_grad_(True)
        procs[name] = p
        layers[path] = {"hidden_size": hidden, "token_dim": token_dim}
    unet.set_attn_processor(procs)
    proj = MultiIPAdapterImageProjection([TokenPassThrough(token_dim)]).to(device=ref.device, dtype=ref.dtype)
    unet.encoder_hid_proj = proj
    unet.config.encoder_hid_dim_type = "ip_image_proj"  # runtime only: does not serialise (diffusers does the same)
    return KGAdapterConfig(num_tokens=num_tokens, token_dim=token_dim, scale=float(scale), layers=layers)


def detach_kg_adapter(unet: nn.Module) -> None:
    """Remove the KG branch: cross-attention gets the stock processor back and the token route is unset."""
    procs = {}
    for name, proc in unet.attn_processors.items():
        procs[name] = AttnProcessor2_0() if isinstance(proc, IPAdapterAttnProcessor2_0) else proc
    unet.set_attn_processor(procs)
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None


def set_adapter_scale(unet: nn.Module, scale: float) -> None:
    """Weight of the KG branch in every layer (0 = base model exactly: the branch is skipped)."""
    procs = _kg_processors(unet)
    if not procs:
        raise AdapterError("this UNet has no KG adapter; call attach_kg_adapter or load_kg_adapter first")
    for p in procs.values():
        p.scale = [float(scale)] + list(p.scale[1:])  # a stacked identity adapter keeps its own scale


def get_adapter_scale(unet: nn.Module) -> float:
    procs = _kg_processors(unet)
    if not procs:
        raise AdapterError("this UNet has no KG adapter")
    return float(next(iter(procs.values())).scale[0])


def adapter_scale_or_none(unet: nn.Module) -> float | None:
    """The KG branch's weight as a run's record states it: None for a UNet without the adapter (conditioning=text)."""
    return get_adapter_scale(unet) if has_kg_adapter(unet) else None


def adapter_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter's own parameters, keyed as in adapter.safetensors."""
    out = {}
    for path, p in _kg_processors(unet).items():
        out[f"{path}.to_k_ip.weight"] = p.to_k_ip[0].weight
        out[f"{path}.to_v_ip.weight"] = p.to_v_ip[0].weight
    return out


def adapter_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in adapter_parameters(unet).items()}


def kg_added_cond_kwargs(tokens: torch.Tensor, added_cond_kwargs: dict | None = None) -> dict:
    """`added_cond_kwargs` for a direct UNet call (training): the KG tokens [B, K, D] plus any others (SDXL's
    text_embeds / time_ids)."""
    if tokens.ndim != 3:
        raise AdapterError(f"KG tokens must have shape [B, K, D], got {tuple(tokens.shape)}")
    return {**(added_cond_kwargs or {}), "image_embeds": [tokens]}


def pipeline_token_embeds(tokens: torch.Tensor, do_classifier_free_guidance: bool = True,
                          null_tokens: torch.Tensor | None = None) -> list[torch.Tensor]:
    """`ip_adapter_image_embeds` for a stock diffusers pipeline call.

    The pipelines repeat this tensor for every prompt and image (`torch.cat([embeds] * batch)`), so one call carries
    one KG condition: `tokens` is [1, K, D] (or [K, D]). Under CFG the pipeline splits the tensor with `.chunk(2)`
    into (negative, positive). The negative defaults to zeros (no KG condition); a kgface-trained generator learned
    its own null tokens (`Conditioner.null(1)`): pass them as `null_tokens`, since zeros are a branch it never saw.
    """
    if tokens.ndim == 2:
        tokens = tokens[None]
    if tokens.ndim != 3 or tokens.shape[0] != 1:
        raise AdapterError(f"a pipeline call takes one KG condition: tokens of shape [1, K, D], got "
                           f"{tuple(tokens.shape)}; call the pipeline once per condition")
    if not do_classifier_free_guidance:
        return [tokens]
    null = torch.zeros_like(tokens) if null_tokens is None else null_tokens.reshape(tokens.shape).to(tokens)
    return [torch.cat([null, tokens], dim=0)]


def save_kg_adapter(unet: nn.Module, folder: str | Path, config: KGAdapterConfig | None = None) -> Path:
    """Write `adapter.safetensors` + `adapter.json` into `folder` (created if needed); return the folder."""
    from safetensors.torch import save_file

    state = adapter_state_dict(unet)
    if not state:
        raise AdapterError("this UNet has no KG adapter to save")
    procs = _kg_processors(unet)
    first = next(iter(procs.values()))
    # a copy: the caller's config keeps its own scale and layers
    cfg = dataclasses.replace(config) if config is not None else KGAdapterConfig(
        num_tokens=int(first.num_tokens[0]), token_dim=int(first.cross_attention_dim))
    cfg.scale = get_adapter_scale(unet)
    cfg.layers = {path: {"hidden_size": int(p.hidden_size), "token_dim": int(p.cross_attention_dim)}
                  for path, p in procs.items()}
    from ..cache import atomic_path, write_text_atomic

    folder = Path(folder)
    # each file whole or not at all (the folder may be a run's top folder, shared with other files)
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    write_text_atomic(folder / CONFIG_NAME, cfg.to_json() + "\n")
    return folder


def read_kg_adapter(folder: str | Path) -> tuple[KGAdapterConfig, dict[str, torch.Tensor]]:
    """Config and weights of a saved adapter (safetensors only; no pickle is ever read)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"KG adapter folder {folder} does not exist (expected {WEIGHTS_NAME} + {CONFIG_NAME})")
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise AdapterError(f"{p} is missing: a KG adapter folder holds {WEIGHTS_NAME} + {CONFIG_NAME}")
    try:
        cfg = KGAdapterConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")), source=str(cfg_path))
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}: not valid JSON ({e})") from e
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{w_path}: not a readable safetensors file ({e})") from e
    return cfg, state


def load_kg_adapter(unet: nn.Module, folder: str | Path, scale: float | None = None,
                    dtype: torch.dtype | None = None) -> KGAdapterConfig:
    """Attach a saved adapter to a freshly loaded base UNet (one without an adapter); return its config. dtype: the
    adapter weights' (None: the UNet's; see attach_kg_adapter).

    Every layer's key and shape is checked against the UNet before anything changes; a mismatch is an
    AdapterError naming the file and the key (typically: the adapter was trained on another base model).
    """
    cfg, state = read_kg_adapter(folder)
    w_path = Path(folder) / WEIGHTS_NAME
    modules = _cross_attention_modules(unet)
    expected = {}
    for path, attn in modules.items():
        hidden, width = _linear(attn.to_k).out_features, cfg.token_dim
        expected[f"{path}.to_k_ip.weight"] = (hidden, width)
        expected[f"{path}.to_v_ip.weight"] = (hidden, width)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        what = "lacks" if missing else "has a key the UNet has no layer for:"
        raise AdapterError(f"{w_path} {what} {key!r} ({len(missing)} missing, {len(unexpected)} unexpected keys): "
                           "the adapter was saved from a UNet with other attention layers")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise AdapterError(f"{w_path}: {k!r} has shape {tuple(state[k].shape)} but this UNet needs {shape}: "
                               "the adapter was saved from another base model")
    attach_kg_adapter(unet, num_tokens=cfg.num_tokens, scale=cfg.scale if scale is None else scale,
                      token_dim=cfg.token_dim, init_keys_from_text=False, dtype=dtype)
    params = adapter_parameters(unet)
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(device=params[k].device, dtype=params[k].dtype))
    if scale is not None:
        cfg.scale = float(scale)
    return cfg


# ----------------------------------------------------------------------------------------------- identity stacking
IP_ADAPTER_FORMAT = ("one safetensors file with keys 'image_proj.<name>' (the image projection, as h94/IP-Adapter "
                     "writes it) and 'ip_adapter.<n>.to_k_ip.weight' / '.to_v_ip.weight' (n = 1, 3, 5, ...: the "
                     "cross-attention layers in the UNet's order), the format diffusers' load_ip_adapter reads")


@dataclass
class IdentityAdapter:
    """An IP-Adapter stacked beside the KG adapter: its position in every processor's lists, its checkpoint, its image
    projection and the reference embeddings the UNet hook feeds it ([1 or B, 1, D], or [.., 1, S, D] for projections
    that take the encoder's hidden states)."""
    index: int
    path: str
    projection: nn.Module
    num_tokens: int
    embeds: torch.Tensor | None = None
    handle: object = field(default=None, repr=False)

    @property
    def wants_hidden_states(self) -> bool:
        """Which CLIP output the projection takes (diffusers' rule): `image_embeds` for the plain `ImageProjection`,
        the penultimate hidden states for the others (Plus, Full face)."""
        from diffusers.models.embeddings import ImageProjection

        return not isinstance(self.projection, ImageProjection)


def read_ip_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(image_proj, ip_adapter) state dicts of an IP-Adapter checkpoint (IP_ADAPTER_FORMAT); safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"identity_adapter={path} does not exist (expected {IP_ADAPTER_FORMAT})")
    if path.suffix != ".safetensors":
        raise AdapterError(f"identity_adapter={path}: only .safetensors checkpoints are read (never pickle); "
                           "convert it with safetensors' save_file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"identity_adapter={path}: not a readable safetensors file ({e})") from None
    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter."):]: v for k, v in state.items() if k.startswith("ip_adapter.")}
    if not proj or not ip:
        raise AdapterError(f"identity_adapter={path} has no {'image_proj.*' if not proj else 'ip_adapter.*'} keys; "
                           f"expected {IP_ADAPTER_FORMAT}")
    return proj, ip


def _projection_tokens(projection: nn.Module) -> int:
    for name in ("num_image_text_embeds", "num_tokens"):
        if isinstance(getattr(projection, name, None), int):
            return int(getattr(projection, name))
    latents = getattr(projection, "latents", None)
    return int(latents.shape[1]) if isinstance(latents, torch.Tensor) else 4


def stack_ip_adapter(unet: nn.Module, path: str | Path, scale: float = 1.0) -> IdentityAdapter:
    """Stack an IP-Adapter checkpoint onto `unet` beside its KG adapter (or alone, on a UNet without one).

    Every cross-attention processor gets the checkpoint's `to_k_ip` / `to_v_ip` as one more entry of its lists, and
    the UNet's `MultiIPAdapterImageProjection` one more projection; all keys and shapes are checked first, and a
    mismatch names the file and the key. Feed the reference with `set_identity_embeds`; `set_identity_scale(.., 0)`
    skips the branch (the output is then exactly the KG-only one). Returns the stacked adapter.
    """
    image_proj, ip = read_ip_adapter(path)
    modules = _cross_attention_modules(unet)
    expected = {}
    for i, (attn_path, attn) in enumerate(modules.items()):
        to_k = _linear(attn.to_k)
        for kind in ("to_k_ip", "to_v_ip"):
            expected[f"{2 * i + 1}.{kind}.weight"] = (attn_path, (to_k.out_features, to_k.in_features))
    missing = [k for k in expected if k not in ip]
    unexpected = [k for k in ip if k not in expected]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise AdapterError(f"identity_adapter={path} {'lacks' if missing else 'has an unexpected key'} "
                           f"'ip_adapter.{key}' ({len(missing)} missing, {len(unexpected)} unexpected of "
                           f"{len(expected)}): it was trained for a UNet with other cross-attention layers")
    for key, (attn_path, shape) in expected.items():
        if tuple(ip[key].shape) != shape:
            raise AdapterError(f"identity_adapter={path}: 'ip_adapter.{key}' has shape {tuple(ip[key].shape)} but "
                               f"{attn_path} needs {shape}: it was trained for another base model")
    try:
        projection = unet._convert_ip_adapter_image_proj_to_diffusers(image_proj, low_cpu_mem_usage=False)
    except (KeyError, RuntimeError, ValueError, IndexError, AttributeError) as e:
        why = str(e).splitlines()[0] if str(e) else ""
        raise AdapterError(f"identity_adapter={path}: its image_proj.* weights are not an image projection "
                           f"diffusers knows ({type(e).__name__}: {why})") from None
    hid = getattr(unet, "encoder_hid_proj", None)
    if hid is not None and not isinstance(hid, MultiIPAdapterImageProjection):
        raise AdapterError(f"this UNet's encoder_hid_proj is a {type(hid).__name__}; an identity adapter cannot be "
                           "stacked on it")
    index = len(hid.image_projection_layers) if hid is not None else 0
    ref = next(unet.parameters())
    n_tok = _projection_tokens(projection)
    procs = {}
    for name, proc in unet.attn_processors.items():
        attn_path = name[: -len(".processor")]
        if attn_path not in modules:
            procs[name] = proc
            continue
        i = list(modules).index(attn_path)
        k_w, v_w = ip[f"{2 * i + 1}.to_k_ip.weight"], ip[f"{2 * i + 1}.to_v_ip.weight"]
        if not isinstance(proc, IPAdapterAttnProcessor2_0):  # no KG adapter (conditioning=text): a fresh one
            proc = IPAdapterAttnProcessor2_0(hidden_size=k_w.shape[0], cross_attention_dim=k_w.shape[1],
                                             num_tokens=(), scale=[])
        if len(proc.to_k_ip) != index:
            raise AdapterError(f"{attn_path} holds {len(proc.to_k_ip)} adapters but the UNet's projection "
                               f"{index}; the UNet's adapters are inconsistent")
        for layers, w in ((proc.to_k_ip, k_w), (proc.to_v_ip, v_w)):
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False).to(device=ref.device, dtype=ref.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
            layers.append(lin.requires_grad_(False))
        proc.num_tokens = list(proc.num_tokens) + [n_tok]
        proc.scale = list(proc.scale) + [float(scale)]
        procs[name] = proc
    unet.set_attn_processor(procs)
    projection = projection.to(device=ref.device, dtype=ref.dtype).requires_grad_(False).eval()
    if hid is None:
        unet.encoder_hid_proj = MultiIPAdapterImageProjection([projection])
        unet.config.encoder_hid_dim_type = "ip_image_proj"  # runtime only, as attach_kg_adapter
    else:
        hid.image_projection_layers.append(projection)
    adapter = IdentityAdapter(index=index, path=str(path), projection=projection, num_tokens=n_tok)
    adapter.handle = unet.register_forward_pre_hook(_identity_hook(adapter), with_kwargs=True)
    return adapter


def _identity_hook(adapter: IdentityAdapter):
    """Appends the reference embeddings to `added_cond_kwargs["image_embeds"]` of every UNet call, tiled to the batch
    (a classifier-free-guidance batch [negative; positive] gets the reference in both halves)."""

    def hook(module, args, kwargs):
        e = adapter.embeds
        if e is None:
            raise AdapterError(f"identity adapter {adapter.path} is stacked but has no reference: call "
                               "set_identity_embeds first")
        sample = args[0] if args else kwargs["sample"]
        n = sample.shape[0]
        if e.shape[0] == 1:
            e = e.expand(n, *e.shape[1:])
        elif n % e.shape[0] == 0:
            e = e.repeat(n // e.shape[0], *[1] * (e.ndim - 1))
        else:
            raise AdapterError(f"identity embeddings for {e.shape[0]} images do not tile a UNet batch of {n}")
        added = dict(kwargs.get("added_cond_kwargs") or {})
        embeds = list(added.get("image_embeds") or [])
        if len(embeds) != adapter.index:
            raise AdapterError(f"the UNet call passes {len(embeds)} image_embeds but the identity adapter expects "
                               f"{adapter.index} before its own")
        added["image_embeds"] = embeds + [e]
        kwargs["added_cond_kwargs"] = added
        return args, kwargs

    return hook


def set_identity_embeds(adapter: IdentityAdapter, embeds: torch.Tensor) -> None:
    """The reference(s): CLIP image embeddings [D] / [B, D] / [B, 1, D], or hidden states [S, D] / [B, S, D] /
    [B, 1, S, D] when the projection takes them; B = 1 (one face for every output) or the sampled batch. The
    embeddings are run through the projection here, once, so a wrong width fails now, not inside an attention call."""
    if adapter.wants_hidden_states:
        embeds = embeds[None] if embeds.ndim == 2 else embeds  # one reference's [S, D]
        embeds = embeds[:, None] if embeds.ndim == 3 else embeds
        want = 4
    else:
        embeds = embeds[None] if embeds.ndim == 1 else embeds  # one reference's [D]
        embeds = embeds[:, None] if embeds.ndim == 2 else embeds
        want = 3
    if embeds.ndim != want:
        raise AdapterError(f"identity embeddings of shape {tuple(embeds.shape)} do not fit {adapter.path}'s "
                           f"{type(adapter.projection).__name__} (it takes "
                           f"{'hidden states [B, S, D]' if want == 4 else 'image embeddings [B, D]'})")
    ref = next(adapter.projection.parameters())
    embeds = embeds.to(device=ref.device, dtype=ref.dtype)
    try:
        with torch.no_grad():
            adapter.projection(embeds[:1].reshape((-1,) + tuple(embeds.shape[2:])))
    except RuntimeError as e:
        raise AdapterError(f"identity embeddings of shape {tuple(embeds.shape)} do not fit {adapter.path}'s image "
                           f"projection ({str(e).splitlines()[0]}); was it trained with another image encoder?"
                           ) from None
    adapter.embeds = embeds


def set_identity_scale(unet: nn.Module, adapter: IdentityAdapter, scale: float) -> None:
    """Weight of the identity branch in every layer (0 = skipped: the output is the KG-only one exactly)."""
    for p in unet.attn_processors.values():  # a conditioning=text UNet's processors carry the identity branch only
        if isinstance(p, IPAdapterAttnProcessor2_0):
            p.scale[adapter.index] = float(scale)


def load_identity_encoder(folder: str | Path):
    """(CLIPVisionModelWithProjection, CLIPImageProcessor) from a local folder written by `save_pretrained` (e.g.
    h94/IP-Adapter's `models/image_encoder`); the processor comes from the folder's preprocessor_config.json when it
    has one, else CLIP's normalisation at the model's image size."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise AdapterError(f"identity_encoder={folder} is not a CLIP vision model folder (no config.json); give the "
                           "folder saved with save_pretrained (h94/IP-Adapter: models/image_encoder)")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(folder, use_safetensors=True).eval()
    except (OSError, ValueError) as e:
        raise AdapterError(f"identity_encoder={folder}: cannot load ({str(e).splitlines()[0]})") from None
    model.requires_grad_(False)
    if (folder / "preprocessor_config.json").is_file():
        processor = CLIPImageProcessor.from_pretrained(folder)
    else:
        s = int(model.config.image_size)
        processor = CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    return model, processor


@torch.no_grad()
def identity_image_embeds(encoder, processor, images, hidden_states: bool) -> torch.Tensor:
    """CLIP embeddings of reference faces (PIL images or uint8 [B, 3, H, W]): `image_embeds` [B, D], or the
    penultimate hidden states [B, S, D] (`hidden_states=True`, for Plus / Full-face projections)."""
    if isinstance(images, torch.Tensor):
        images = [im.permute(1, 2, 0).cpu().numpy() for im in images]
    pixels = processor(images=images, return_tensors="pt").pixel_values.to(encoder.dtype)
    if hidden_states:
        return encoder(pixels, output_hidden_states=True).hidden_states[-2]
    return encoder(pixels).image_embeds


def read_identity_embeds(path: str | Path) -> torch.Tensor:
    """Precomputed reference embeddings: a safetensors file holding `image_embeds` ([D] or [1, D]; [S, D] or
    [1, S, D] for projections that take hidden states), computed once with the adapter's own image encoder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"identity_image={path}: not a readable safetensors file ({e})") from None
    if "image_embeds" not in state:
        raise AdapterError(f"identity_image={path} has no 'image_embeds' tensor (keys: {', '.join(sorted(state))})")
    return state["image_embeds"].float()  # set_identity_embeds adds the batch / image axes
