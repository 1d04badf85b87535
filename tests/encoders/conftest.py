"""Real profiles, the real MiniLM (loaded once) and one graph builder whose texts are embedded once per session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PANEL = ("ORPHA:870", "ORPHA:904", "ORPHA:648")


@pytest.fixture(scope="session")
def profile_builder(hpo_kg, catalog):
    from kgface.kg import ProfileBuilder

    return ProfileBuilder(hpo_kg, catalog)


@pytest.fixture(scope="session")
def profiles(profile_builder):
    """Down, Williams and Noonan syndromes (real HPO profiles) and the healthy profile."""
    from kgface.kg import healthy_profile

    return [profile_builder.build(q) for q in PANEL] + [healthy_profile("hpo")]


@pytest.fixture(scope="session")
def text_model():
    from kgface.encoders import load_text_model

    return load_text_model()


@pytest.fixture(scope="session")
def graph_builder(profiles, text_model, session_cache_dir):
    from kgface.cache import Cache
    from kgface.encoders import ProfileGraphBuilder, TextFeatureStore

    builder = ProfileGraphBuilder(TextFeatureStore(model=text_model, cache=Cache(session_cache_dir)))
    builder.warm(profiles)
    return builder


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one thread avoids the oversubscription that slows them 10-40x on a shared 2-core box."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
