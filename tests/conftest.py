"""Shared fixtures: an isolated cache root per test session, the real HPO graph loaded once, and one evaluated micro
training run shared by the tests that read a finished run (trials, bench scripts)."""
from __future__ import annotations

import pytest
import torch

# One intra-op thread: the models in tests are tiny, and on a shared 2-core machine two OpenMP threads per process
# oversubscribe the cores (measured here: a tiny training step 0.16 s with one thread, 9 s with two under load).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kgface-cache")


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_cache(session_cache_dir):
    # tests never read or write the user's ~/.cache/kgface: set before any module- or session-scoped fixture builds a
    # run (those are set up before the function-scoped fixture below, and used to train into the user's cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, session_cache_dir):
    # again per test: a test that points KGFACE_CACHE_DIR elsewhere leaves the next one the session's cache
    monkeypatch.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))


@pytest.fixture(scope="session")
def hpo_kg():
    from kgface.kg import load_kg
    from kgface.resources import kg_data_dir

    return load_kg("hpo", kg_data_dir=kg_data_dir())


@pytest.fixture(scope="session")
def catalog():
    from kgface.kg import VisibleCatalog
    from kgface.resources import kg_data_dir

    return VisibleCatalog.load(kg_data_dir())


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory, session_cache_dir):
    """One micro kgface.train run with its micro evaluator and evaluation report (~25 s), trained once per session."""
    from kgface.train import main
    from tests.test_train_smoke import MICRO, MICRO_EVALUATOR

    out = tmp_path_factory.mktemp("evaluated-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))
        main(list(MICRO) + list(MICRO_EVALUATOR) + [f"hydra.run.dir={out}"])
    return out


@pytest.fixture(scope="session")
def baselines_run(tmp_path_factory, session_cache_dir):
    """A micro baselines run with an evaluator (~20 s): OUT/text, OUT/class, OUT/kg_text, OUT/kg_shuffled and
    OUT/evaluator."""
    from kgface.train import main
    from tests.test_train_smoke import MICRO, MICRO_EVALUATOR

    out = tmp_path_factory.mktemp("gen-baselines") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))
        main(list(MICRO) + MICRO_EVALUATOR + ["experiment=baselines", "baselines=[text,class,kg_text,kg_shuffled]",
                                              "trainer.steps=2",
                                              "trainer.checkpoint_every=0", f"hydra.run.dir={out}"])
    return out
