"""One micro kgface.train run (with its micro evaluator) per session, shared by the trial tests (~25 s)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def trial_run(tmp_path_factory, session_cache_dir):
    from kgface.train import main
    from tests.test_train_smoke import MICRO, MICRO_EVALUATOR

    out = tmp_path_factory.mktemp("trial-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KGFACE_CACHE_DIR", str(session_cache_dir))
        main(list(MICRO) + list(MICRO_EVALUATOR) + [f"hydra.run.dir={out}"])
    return out


@pytest.fixture(scope="session")
def trial_manifest(trial_run):
    import json

    return json.loads((trial_run / "data.json").read_text())["manifest"]
