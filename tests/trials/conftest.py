"""The trial tests read the session's evaluated micro run (tests/conftest.py: `evaluated_run`)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def trial_run(evaluated_run):
    return evaluated_run


@pytest.fixture(scope="session")
def trial_manifest(trial_run):
    import json

    return json.loads((trial_run / "data.json").read_text())["manifest"]
