"""A tiny phantom panel (32 px, acne, Cushing, acromegaly, healthy) and a tiny evaluator trained on it, per session."""
from __future__ import annotations

import pytest

TINY_EVALUATOR = [
    "evaluator.image_size=32", "evaluator.embed_dim=32",
    "evaluator.vision.width=64", "evaluator.vision.layers=2", "evaluator.vision.patch_size=8",
    "evaluator.vision.head_width=32",
    "evaluator.text.width=32", "evaluator.text.layers=1", "evaluator.text.heads=2",
    "evaluator.train.steps=12", "evaluator.train.batch_size=32",
    # contrastive only at this size: with the auxiliary label heads a 12-step model's phenotype heads read the
    # disease instead of the phenotype, and learned profiles echo the KG (the check below would rightly fail);
    # docs/evaluation.md gives the default evaluator's perturbation check
    "evaluator.train.supervised_weight=0",
]
DISEASES = "[MONDO:0011438,ORPHA:96253,ORPHA:963]"
DATA = [f"data.diseases={DISEASES}", "data.heldout=[ORPHA:963]", "data.size=32", "data.supersample=2",
        "data.per_class=8", "data.healthy_per_class=16", "data.identities=120", "data.atlas.faces=0"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, session_cache_dir):
    """OUT folder of `python -m kgface.dataset` on the tiny panel (its manifest.csv and images)."""
    from kgface.dataset import main

    out = tmp_path_factory.mktemp("tiny-phantom")
    main([*DATA, f"hydra.run.dir={out}"])
    return out


@pytest.fixture(scope="session")
def tiny_cfg(session_cache_dir):
    from kgface.config import compose

    return compose("evaluate", TINY_EVALUATOR)


@pytest.fixture(scope="session")
def tiny_profiles(tiny_cfg, hpo_kg, catalog):
    from kgface.runtime import load_profiles

    return load_profiles(tiny_cfg, ["MONDO:0011438", "ORPHA:96253", "ORPHA:963", "healthy"],
                         knowledge=(hpo_kg, catalog))


@pytest.fixture(scope="session")
def tiny_evaluator(tiny_cfg, tiny_data, tiny_profiles, session_cache_dir):
    from kgface.cache import Cache
    from kgface.evaluation import fit_evaluator

    return fit_evaluator(tiny_cfg.evaluator, tiny_data / "manifest.csv", tiny_profiles, Cache(session_cache_dir),
                         progress=False)
