"""kgface.evaluation.towers: `evaluator.vision.tower=cnn` (a full-resolution CNN image tower inside the tiny CLIP)
trains, caches and reloads through the evaluator's own code; the default tower keeps the cache keys it had."""
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kgface.data.manifest import read_manifest
from kgface.evaluation import Evaluator, build_clip, fit_evaluator, load_images
from kgface.evaluation.clip_model import EvaluatorConfigError
from kgface.evaluation.towers import FullResolutionCNN

from tests.evaluation.conftest import TINY_EVALUATOR

TINY = {"name": "tiny_clip", "image_size": 32, "embed_dim": 16, "vision": {"width": 4, "layers": [1, 1, 1, 1]},
        "text": {"width": 16, "heads": 2, "layers": 1, "context_length": 77}}


def test_the_cnn_tower_replaces_the_image_tower_and_keeps_every_pixel_before_pooling():
    model, _, size = build_clip({**TINY, "vision": {**TINY["vision"], "tower": "cnn"}})
    assert isinstance(model.visual, FullResolutionCNN) and size == 32 and model.visual.output_dim == 16
    convs = [m for m in model.visual if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16] and all(c.stride == (1, 1) for c in convs)
    # the first two convolutions come before any pooling: full resolution
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in list(model.visual)[:6])
    x = torch.randn(3, 3, 32, 32)
    assert model.encode_image(x).shape == (3, 16)
    default, _, _ = build_clip(TINY)
    assert type(default.visual).__name__ == "ModifiedResNet"
    with pytest.raises(EvaluatorConfigError, match=r"^evaluator\.vision\.tower='vit2': expected one of open_clip, "
                                                   r"cnn$"):
        build_clip({**TINY, "vision": {**TINY["vision"], "tower": "vit2"}})


def test_the_bench_detector_is_the_tower_it_always_was():
    """bench/phenotype_detectability.py --arch cnnN trains this class; its layers are the ones its figures came from
    (docs/evaluation.md): conv c, conv c, pool, conv 2c, pool, conv 2c, pool, conv 4c, global max pool, linear."""
    net = FullResolutionCNN(7, width=24)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["MaxPool2d", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
                                                            "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d",
                                                            "BatchNorm2d", "ReLU", "AdaptiveMaxPool2d", "Flatten",
                                                            "Linear"]
    assert [m.out_channels for m in net if isinstance(m, torch.nn.Conv2d)] == [24, 24, 48, 48, 96]
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_a_cnn_tower_evaluator_trains_caches_and_reloads(tiny_evaluator, tiny_data, tiny_profiles, session_cache_dir,
                                                        tmp_path):
    from kgface.cache import Cache
    from kgface.config import compose

    cfg = compose("evaluate", [*TINY_EVALUATOR, "evaluator.vision.tower=cnn", "evaluator.vision.width=4"])
    cache = Cache(session_cache_dir)
    ev = fit_evaluator(cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert isinstance(ev.model.visual, FullResolutionCNN)
    # trained, not the default tower's entry (which the session's tiny_evaluator put in this cache)
    assert "cache_entry" in ev.info
    images = load_images(list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:8]))
    # from the cache, also with the ModifiedResNet's settings changed: the CNN does not read them
    unused = ["evaluator.vision.layers=[2,2,2,2]", "evaluator.vision.patch_size=4", "evaluator.vision.head_width=8"]
    again = fit_evaluator(compose("evaluate", [*TINY_EVALUATOR, "evaluator.vision.tower=cnn", "evaluator.vision.width=4",
                                               *unused]).evaluator,
                          tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
    assert "cache_entry" not in again.info
    # BatchNorm's running statistics (moved by training) are saved with the tower: same eval-mode features reloaded
    loaded = Evaluator.load(ev.save(tmp_path / "ev"))
    stats = loaded.model.visual[1].running_mean
    assert stats.abs().sum() > 0 and torch.equal(stats, ev.model.visual[1].running_mean)
    for other in (again, loaded):
        assert np.allclose(other.features(images), ev.features(images), atol=1e-5)
    assert not np.allclose(ev.features(images), tiny_evaluator.features(images), atol=1e-3)


def test_the_default_tower_keeps_the_cache_entries_made_before_the_key(tiny_evaluator, tiny_cfg, tiny_data,
                                                                      tiny_profiles, session_cache_dir, tmp_path):
    from kgface.cache import Cache

    assert tiny_cfg.evaluator.vision.tower == "open_clip"
    before = OmegaConf.to_container(tiny_cfg.evaluator, resolve=True)  # and one written before vision.tower existed
    cache = Cache(session_cache_dir)
    for tower in (None, "absent"):  # tower: null is the default too
        if tower is None:
            before["vision"]["tower"] = None
        else:
            del before["vision"]["tower"]
        ev = fit_evaluator(before, tiny_data / "manifest.csv", tiny_profiles, cache, progress=False)
        assert "cache_entry" not in ev.info  # the default's entry: not trained again
    # and a saved evaluator whose config has no tower loads with open_clip's
    folder = tiny_evaluator.save(tmp_path / "ev")
    meta = json.loads((folder / "evaluator.json").read_text())
    del meta["config"]["vision"]["tower"]
    (folder / "evaluator.json").write_text(json.dumps(meta))
    images = load_images(list(read_manifest(tiny_data / "manifest.csv")[0]["abspath"][:4]))
    assert np.allclose(Evaluator.load(folder).features(images), tiny_evaluator.features(images), atol=1e-5)
