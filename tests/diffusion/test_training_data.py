"""The generator's training set: disease faces and phenotype-atlas faces as latents with their conditions."""
import json
from pathlib import Path

import pytest

from tests.test_train_smoke import MICRO


def test_atlas_faces_become_profiles_of_exactly_their_phenotypes(tmp_path):
    import pandas as pd
    from omegaconf import OmegaConf

    from kgface.diffusion.training_data import ATLAS_NAME, atlas_training_rows
    from kgface.kg.profiles import FacialProfile
    from kgface.train import main

    out = tmp_path / "run"
    main(MICRO + ["trainer.steps=1", "trainer.checkpoint_every=0", "samples.stages=[3]", f"hydra.run.dir={out}"])
    manifest = Path(json.loads((out / "data.json").read_text())["manifest"])
    profiles = [FacialProfile.from_dict(p) for p in json.loads((out / "profiles.json").read_text())["profiles"]]
    data_cfg = OmegaConf.create({"intensity_min": 0.7})
    rows, atlas = atlas_training_rows(manifest, profiles, data_cfg)
    table = pd.read_csv(manifest.parent / "phenotype_atlas.csv", dtype=str)
    assert len(rows) == len(atlas) == len(table) == 8
    panel = {p.hpo_id for prof in profiles for p in prof.phenotypes}
    for row, prof, (_, truth) in zip(rows, atlas, table.iterrows()):
        shown = json.loads(truth["phenotypes"])
        assert {p.hpo_id for p in prof.phenotypes} == set(shown) <= panel  # the held-out diseases' terms included
        assert all(p.frequency == 1.0 for p in prof.phenotypes) and prof.name == ATLAS_NAME
        assert row["path"] == truth["path"]
        assert abs(row["severity"] - min(3.0, 3 * sum(shown.values()) / len(shown) / 0.85)) < 1e-9
        assert row["stage"] == min(3, max(1, round(row["severity"])))
    assert len({p.disease_id for p in atlas}) == 8
    # the LatentSet: disease rows, then atlas rows indexed after the training profiles, drawn at the given share
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from kgface.diffusion.training_data import latent_set

    train_profiles = [p for p in profiles if p.disease_id != "ORPHA:648"]
    vae = AutoencoderKL.from_pretrained(out / "model" / "vae")
    data = latent_set(manifest, train_profiles, SimpleNamespace(vae=vae), {"ORPHA:648"}, (rows, atlas), 0.25)
    n = len(data) - 8
    assert data.index[n:].tolist() == list(range(len(train_profiles), len(train_profiles) + 8))
    assert int(data.index[:n].max()) < len(train_profiles)
    assert data.severity[n:].tolist() == pytest.approx([r["severity"] for r in rows])
    assert data.stage[n:].tolist() == [r["stage"] for r in rows]
    assert float(data.weights[n:].sum()) == pytest.approx(0.25) and float(data.weights.sum()) == pytest.approx(1.0)
    assert latent_set(manifest, train_profiles, SimpleNamespace(vae=vae), {"ORPHA:648"}).weights is None
    (manifest.parent / "phenotype_atlas.csv").rename(tmp_path / "moved.csv")
    try:
        with pytest.raises(Exception, match="data.atlas.faces"):
            atlas_training_rows(manifest, profiles, data_cfg)
    finally:
        (tmp_path / "moved.csv").rename(manifest.parent / "phenotype_atlas.csv")
