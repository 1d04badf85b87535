"""The generator's training set: disease faces and phenotype-atlas faces as latents with their conditions."""
import json
from pathlib import Path

import pytest
import torch

from tests.test_train_smoke import MICRO


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """A one-step micro run trained on observed phenotype sets, with one KG token per phenotype and the loss
    weighted towards the disease marks."""
    from kgface.train import main

    out = tmp_path_factory.mktemp("training-data") / "run"
    main(MICRO + ["trainer.steps=1", "trainer.checkpoint_every=0", "samples.stages=[3]",
                  "trainer.observed_phenotypes=true", "encoder.tokens=phenotypes", "model.num_tokens=24",
                  "trainer.mark_weight=10",
                  f"hydra.run.dir={out}"])
    return out


def test_atlas_faces_become_profiles_of_exactly_their_phenotypes(micro_run, tmp_path):
    import pandas as pd
    from omegaconf import OmegaConf

    from kgface.diffusion.training_data import ATLAS_NAME, atlas_training_rows
    from kgface.kg.profiles import FacialProfile
    from kgface.prompts.wording import stage_of

    out = micro_run
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
        assert abs(row["severity"] - min(3.0, max(0.5, 3 * sum(shown.values()) / len(shown) / 0.85))) < 1e-9
        assert row["stage"] == stage_of(row["severity"]) >= 1  # the prompt's stage is the tokens' severity's
    assert len({p.disease_id for p in atlas}) == 8
    # faint atlas faces (data.atlas.intensity below ~0.15): severity floored at stage 1's bin, not 0.1 under stage 1
    faint = tmp_path / "faint"
    faint.mkdir()
    low = table.assign(phenotypes=[json.dumps({h: 0.05 for h in json.loads(p)}) for p in table["phenotypes"]])
    low.to_csv(faint / "phenotype_atlas.csv", index=False)
    rows, _ = atlas_training_rows(faint / "manifest.csv", profiles, data_cfg)
    assert {(r["stage"], r["severity"]) for r in rows} == {(1, 0.5)}
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
    marked = latent_set(manifest, train_profiles, SimpleNamespace(vae=vae), {"ORPHA:648"}, (rows, atlas), 0.25,
                        marks=True)
    assert marked.marks.shape == (len(data), 1, *data.latents.shape[-2:])
    assert marked.marks[n:].abs().sum() == 0 and float(marked.marks[:n].amax()) == 1.0  # atlas faces: no twin
    assert latent_set(manifest, train_profiles, SimpleNamespace(vae=vae), {"ORPHA:648"}).weights is None
    (manifest.parent / "phenotype_atlas.csv").rename(tmp_path / "moved.csv")
    try:
        from kgface.errors import UserError

        with pytest.raises(UserError, match=r"atlas_share > 0 needs the phenotype atlas .* data\.atlas\.faces > 0"):
            atlas_training_rows(manifest, profiles, data_cfg)
    finally:
        (tmp_path / "moved.csv").rename(manifest.parent / "phenotype_atlas.csv")


def test_observed_sets_condition_each_face_on_what_it_shows_and_the_run_draws_sets(micro_run):
    from types import SimpleNamespace

    import pandas as pd
    from diffusers import AutoencoderKL
    from omegaconf import OmegaConf

    from kgface.diffusion.generator import Generator, Request
    from kgface.diffusion.run_loading import load_run
    from kgface.diffusion.training_data import ATLAS_NAME, atlas_training_rows, latent_set, observed_training_sets
    from kgface.kg.profiles import FacialProfile

    out = micro_run
    assert json.loads((out / "metrics.json").read_text())["train"]["observed_phenotype_sets"] > 1
    manifest = Path(json.loads((out / "data.json").read_text())["manifest"])
    profiles = [FacialProfile.from_dict(p) for p in json.loads((out / "profiles.json").read_text())["profiles"]]
    train_profiles = [p for p in profiles if p.disease_id != "ORPHA:648"]
    observed = observed_training_sets(manifest, train_profiles, {"ORPHA:648"})
    atlas = atlas_training_rows(manifest, profiles, OmegaConf.create({"intensity_min": 0.7}))
    vae = AutoencoderKL.from_pretrained(out / "model" / "vae")
    data = latent_set(manifest, train_profiles, SimpleNamespace(vae=vae), {"ORPHA:648"}, atlas, 0.5, observed)
    listed = train_profiles + observed[1] + atlas[1]  # the conditioner's list, in this order
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df = df[(df["split"] == "train") & (df["disease"] != "ORPHA:648")]
    assert len(data) == len(df) + 8
    for (_, row), i in zip(df.iterrows(), data.index[:len(df)].tolist()):
        prof = listed[i]
        assert i >= len(train_profiles) and prof.disease_id == row["disease"]
        assert {p.hpo_id for p in prof.phenotypes} == set(json.loads(row["phenotypes"] or "{}"))
        assert all(p.frequency == 1.0 for p in prof.phenotypes)
    assert all(listed[i].name == ATLAS_NAME for i in data.index[len(df):].tolist())  # atlas after observed sets

    backbone, conditioner, run_profiles, _ = load_run(out)
    assert conditioner.phenotype_draws
    gen = Generator(backbone, conditioner)
    down = next(p for p in run_profiles if p.disease_id == "ORPHA:870")
    drawn = gen.request_profiles([Request(down, 3.0, seed) for seed in range(20)])
    assert len({tuple(p.hpo_id for p in d.phenotypes) for d in drawn}) > 1  # each request its own individual
    sets = [{p.hpo_id for p in d.phenotypes} for d in drawn]
    assert all(s <= {p.hpo_id for p in down.phenotypes} for s in sets)
    assert gen.request_profiles([Request(down, 0.0, 1)])[0].phenotypes == []
    # one KG token per drawn phenotype (encoder.tokens=phenotypes): the slots after them hold one constant
    assert conditioner.encoder.token_mode == "phenotypes" and conditioner.encoder.num_tokens == 24
    reqs = [Request(down, 3.0, seed) for seed in range(3)]
    with torch.no_grad():
        tokens = gen._tokens(reqs)
    for row, prof in zip(tokens, gen.request_profiles(reqs)):
        n = len(prof.phenotypes)
        empty = row[1 + n:]
        assert 0 < n < 23 and torch.allclose(empty, empty[:1].expand_as(empty))
        assert not torch.allclose(row[n], empty[0])
    # the run's samples record the set each image was drawn with (what profile match compares the image with)
    samples = pd.read_csv(out / "samples" / "manifest.csv", dtype=str, keep_default_na=False)
    by_id = {p.disease_id: {q.hpo_id for q in p.phenotypes} for p in run_profiles}
    asked = [set(json.loads(r["requested_phenotypes"])) for _, r in samples.iterrows()]
    assert all(a <= by_id[d] for a, d in zip(asked, samples["disease"])) and any(asked)


def test_generate_from_an_observed_sets_run_records_each_images_set(micro_run, tmp_path):
    import pandas as pd

    from kgface.generate import main

    main([f"run={micro_run}", f"hydra.run.dir={tmp_path / 'g'}", "progress=false", "diseases=[ORPHA:870]",
          "stages=[0,3]", "seeds=[0,1,2,3]"])
    df = pd.read_csv(tmp_path / "g" / "manifest.csv", dtype=str, keep_default_na=False)
    asked = {(r["seed"], r["stage"]): json.loads(r["requested_phenotypes"]) for _, r in df.iterrows()}
    assert all(asked[(s, "0")] == [] for s in "0123")  # stage 0 shows no signs
    assert len({tuple(asked[(s, "3")]) for s in "0123"}) > 1  # each seed is another individual


def test_compose_on_an_observed_sets_run_draws_a_custom_set_as_given(micro_run, tmp_path):
    import pandas as pd

    from kgface.generate import main

    main([f"run={micro_run}", f"hydra.run.dir={tmp_path / 'c'}", "progress=false", "mode=compose", "stages=[0,3]",
          'phenotypes=["HP:0000316=0.3","HP:0000508=0.8"]'])
    df = pd.read_csv(tmp_path / "c" / "manifest.csv", dtype=str, keep_default_na=False)
    # the user's phenotypes are not a frequency draw: every one is asked for, whatever the intensity or stage
    assert [sorted(json.loads(v)) for v in df["requested_phenotypes"]] == [["HP:0000316", "HP:0000508"]] * 2


def test_ungraded_faces_train_with_an_unknown_stage_not_their_placeholder(micro_run, tmp_path, caplog):
    """stage_known=False rows (real photos without a grade carry placeholder stage 2) enter the generator's set
    as stage -1 / severity NaN, which the stage embeddings and text prompts read as unknown."""
    import logging
    import math
    from types import SimpleNamespace

    import pandas as pd
    from diffusers import AutoencoderKL

    from kgface.diffusion.training_data import latent_set
    from kgface.kg.profiles import FacialProfile

    out = micro_run
    manifest = Path(json.loads((out / "data.json").read_text())["manifest"])
    profiles = [FacialProfile.from_dict(p) for p in json.loads((out / "profiles.json").read_text())["profiles"]]
    train_profiles = [p for p in profiles if p.disease_id != "ORPHA:648"]
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    sick = (df["split"] == "train") & (df["disease"] == "ORPHA:870")
    assert sick.sum() >= 2
    df["stage_known"] = "True"
    # as kgface.data.real writes them: placeholder stage 2, empty severity (it crashed the cast to float)
    df.loc[sick, ["stage", "stage_known", "severity"]] = ["2", "False", ""]
    graded = df.index[(df["split"] == "train") & (df["disease"] == "MONDO:0011438")][0]
    df.loc[graded, "severity"] = ""  # a known stage with an empty severity reads as the stage (docs/data.md)
    (tmp_path / "images").symlink_to(manifest.parent / "images")
    df.to_csv(tmp_path / "manifest.csv", index=False)
    vae = AutoencoderKL.from_pretrained(out / "model" / "vae")
    with caplog.at_level(logging.INFO, logger="kgface.diffusion.training_data"):
        data = latent_set(tmp_path / "manifest.csv", train_profiles, SimpleNamespace(vae=vae), {"ORPHA:648"})
    assert f"{int(sick.sum())} of {len(data)} train images have no known stage" in caplog.text
    train = df[(df["split"] == "train") & (df["disease"] != "ORPHA:648")]
    unknown = (train["stage_known"] == "False").to_numpy()
    assert data.stage[unknown].eq(-1).all() and data.severity[unknown].isnan().all()
    assert data.stage[~unknown].tolist() == train.loc[~unknown, "stage"].astype(int).tolist()
    assert all(math.isfinite(v) for v in data.severity[~unknown].tolist())
    assert data.severity[list(train.index).index(graded)].item() == float(df.loc[graded, "stage"])


def test_mark_maps_find_each_faces_marks_against_its_stage0_twin(tmp_path):
    """trainer.mark_weight: a face's map is where it differs from the same identity's stage-0 render, on the latent
    grid, scaled to 1; healthy faces, stage 0 and photos without an aligned twin get none."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from kgface.diffusion.training_data import mark_maps
    from kgface.errors import UserError

    plain = np.full((32, 32, 3), 120, np.uint8)
    marked = plain.copy()
    marked[0:8, 24:32] = [200, 40, 40]  # a red mark in the top-right 8x8 block
    faint = plain.copy()
    faint[0:8, 24:32] = [140, 110, 110]  # the same mark, fainter (stage 1): scaled to 1 as well
    speck = plain.copy()
    speck[0, 0] = 130  # a few grey levels on one pixel: below a grey level per latent cell, no map
    for name, img in {"s0": plain, "s3": marked, "s1": faint, "h": plain, "photo": marked, "speck": speck}.items():
        Image.fromarray(img).save(tmp_path / f"{name}.png")
    rows = [("s0.png", "p1", "ORPHA:870", "0", "phantom", "{}", ""),
            ("s3.png", "p1", "ORPHA:870", "3", "phantom", '{"HP:0000160": 0.9}', ""),
            ("s1.png", "p1", "ORPHA:870", "1", "phantom", '{"HP:0000160": 0.3}', ""),
            ("h.png", "p2", "healthy", "0", "phantom", "{}", ""),
            ("photo.png", "p1", "ORPHA:870", "2", "upload", "{}", ""),
            ("speck.png", "p1", "ORPHA:870", "2", "phantom", '{"HP:0000160": 0.01}', ""),
            # acne: stage 0 is mild acne, so its stage-0 face is no unmarked twin
            ("s0.png", "p3", "MONDO:0011438", "0", "phantom", '{"HP:0001061": 0.2}', "2"),
            ("s3.png", "p3", "MONDO:0011438", "3", "phantom", '{"HP:0001061": 0.9}', "20")]
    df = pd.DataFrame(rows, columns=["path", "identity", "disease", "stage", "source", "phenotypes", "lesion_count"])
    maps = mark_maps(tmp_path / "manifest.csv", df, (8, 8))
    assert maps.shape == (8, 1, 8, 8)
    expected = torch.zeros(8, 8)
    expected[0:2, 6:8] = 1.0
    assert torch.equal(maps[1, 0], expected) and torch.equal(maps[2, 0], expected)
    # stage 0 itself, a healthy face, a photo (not pixel-aligned), a speck, acne against its marked stage 0
    assert maps[[0, 3, 4, 5, 6, 7]].abs().sum() == 0
    with pytest.raises(UserError, match="trainer.mark_weight"):
        mark_maps(tmp_path / "manifest.csv", df.iloc[[0, 3, 4]], (8, 8))
    twice = pd.concat([df.iloc[[0]], df.iloc[[0]].assign(path="h.png"), df.iloc[[1]]])
    with pytest.raises(UserError, match="identity p1 of ORPHA:870 has two stage-0 train faces"):
        mark_maps(tmp_path / "manifest.csv", twice, (8, 8))


def test_the_marked_run_weighs_its_disease_faces_by_their_marks(micro_run):
    """The wiring: trainer.mark_weight reaches the training set (the micro run above trains with it)."""
    from types import SimpleNamespace

    import pandas as pd
    from diffusers import AutoencoderKL

    from kgface.diffusion.training_data import latent_set
    from kgface.kg.profiles import FacialProfile

    out = micro_run
    train = json.loads((out / "metrics.json").read_text())["train"]
    manifest = Path(json.loads((out / "data.json").read_text())["manifest"])
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df = df[(df["split"] == "train") & (df["disease"] != "ORPHA:648")]
    diseased = int(((df["stage"] != "0") & (df["disease"] != "healthy")).sum())
    assert train["mark_weight"] == 10.0 and 0 < train["marked_faces"] <= diseased
    profiles = [FacialProfile.from_dict(p) for p in json.loads((out / "profiles.json").read_text())["profiles"]]
    vae = AutoencoderKL.from_pretrained(out / "model" / "vae")
    data = latent_set(manifest, [p for p in profiles if p.disease_id != "ORPHA:648"], SimpleNamespace(vae=vae),
                      {"ORPHA:648"}, marks=True)
    assert data.marks.shape == (len(data), 1, *data.latents.shape[-2:])
    assert data.marks[torch.from_numpy((df["stage"] == "0").to_numpy().copy())].abs().sum() == 0
    assert float(data.marks.amax()) == 1.0
