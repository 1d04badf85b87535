"""A tiny phantom panel (32 px, acne, Cushing, acromegaly, healthy) and a tiny evaluator trained on it, per session;
"generated" sets made of its test images (generated_manifest, edits_of)."""
from __future__ import annotations

import pandas as pd
import pytest

from kgface.data.manifest import write_manifest

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


def generated_manifest(tiny_data, tmp_path, n=None):
    """A 'generated' set: real test images relabelled as requests (mode sample) plus one transformation of the
    first (a copy of it)."""
    df = pd.read_csv(tiny_data / "manifest.csv", dtype=str, keep_default_na=False)
    test = df[df["split"] == "test"].copy()
    test["path"] = [str(tiny_data / p) for p in test["path"]]
    gdir = tmp_path / "gen"
    gdir.mkdir(exist_ok=True)
    import shutil
    rows = []
    for i, r in enumerate(test.to_dict("records")[:n]):
        dst = gdir / f"g{i:03d}.png"
        shutil.copy(r["path"], dst)
        rows.append({**r, "path": dst.name, "split": "test", "source": "generated", "mode": "sample",
                     "requested_disease": r["disease"], "requested_stage": r["stage"], "seed": i,
                     "source_image": ""})
    shutil.copy(rows[0]["abspath"] if "abspath" in rows[0] else gdir / rows[0]["path"], gdir / "t000.png")
    rows.append({**rows[0], "path": "t000.png", "mode": "transform", "source_image": test.iloc[0]["path"]})
    return write_manifest(rows, gdir / "manifest.csv")


def edits_of(tiny_data, test: pd.DataFrame, gdir, modes: list[str], absolute: bool = False):
    """A generated manifest of copies of real test images, one row per mode; an edit (any mode but sample) gets a
    copy of its own image as its source_image, src/s<i>.png relative to the manifest. absolute: rows' `path`
    absolute (inside the folder), else relative."""
    import shutil

    (gdir / "src").mkdir(parents=True)
    rows = []
    for i, (r, mode) in enumerate(zip(test.to_dict("records"), modes)):
        shutil.copy(tiny_data / r["path"], gdir / f"g{i}.png")
        edit = mode != "sample"
        if edit:
            shutil.copy(tiny_data / r["path"], gdir / "src" / f"s{i}.png")
        rows.append(r | {"path": str(gdir / f"g{i}.png") if absolute else f"g{i}.png", "source": "generated",
                         "mode": mode, "requested_disease": r["disease"], "requested_stage": r["stage"], "seed": i,
                         "source_image": f"src/s{i}.png" if edit else ""})
    return write_manifest(rows, gdir / "manifest.csv")
